// Node's test runner against a real oshu-gateway (started by tests/gateway/test_sdk_js.py, which
// passes GATEWAY_URL, SECRETS_PROXY_API_KEY, GATEWAY_CA, and UNDICI (the path of the undici package the Node client tests use; a test-only dependency)).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import {
  SecretsProxyClient, SecretsProxyError, awsSecret, gcpServiceAccountSecret, oauth2Secret, sandboxEnv, sandboxFiles,
} from "../index.js";

const VALUE = "sk-js-sdk-0123456789abcdef";
const ca = readFileSync(process.env.GATEWAY_CA);
const client = new SecretsProxyClient({ baseUrl: process.env.GATEWAY_URL, apiKey: process.env.SECRETS_PROXY_API_KEY, ca });

test("createSession / getSession / deleteSession, seed-compatible fields", async () => {
  const session = await client.createSession({ secrets: { ANTHROPIC_API_KEY: VALUE }, allowed_egress: ["pypi.org"] });
  assert.match(session.session_id, /^sess_/);
  assert.match(session.token, /^tok_/);
  assert.match(session.sealed_secrets.ANTHROPIC_API_KEY, /^SEALED_/);
  assert.equal(session.proxy_url, `https://${session.session_id}:${session.token}@${new URL(process.env.GATEWAY_URL).host}`);
  const info = await client.getSession(session.session_id);
  assert.deepEqual(info.secrets.ANTHROPIC_API_KEY.hosts, ["api.anthropic.com"]);
  assert.ok(!JSON.stringify(info).includes(VALUE));
  await client.deleteSession(session.session_id);
  await assert.rejects(client.getSession(session.session_id), (e) => e instanceof SecretsProxyError && e.status === 404 && e.code === "not_found");
});

test("errors carry the server's code and message", async () => {
  const bad = new SecretsProxyClient({ baseUrl: process.env.GATEWAY_URL, apiKey: "wrong", ca });
  await assert.rejects(bad.createSession({ secrets: { OPENAI_API_KEY: VALUE } }), (e) => e.status === 401 && e.code === "unauthorized");
  await assert.rejects(client.createSession({ secrets: { NOT_KNOWN: VALUE } }),
    (e) => e.status === 400 && e.code === "invalid_request" && e.message.includes("NOT_KNOWN") && !e.message.includes(VALUE));
});

test("global fetch path (NODE_EXTRA_CA_CERTS) and env defaults", async () => {
  process.env.PROXY_BASE_URL = process.env.GATEWAY_URL;
  const viaFetch = new SecretsProxyClient();
  assert.equal((await viaFetch.caPem()).trim(), ca.toString().trim());
  const s = await viaFetch.createSession({ secrets: { OPENAI_API_KEY: VALUE } });
  await viaFetch.deleteSession(s.session_id);
});

test("a sandbox with sandboxEnv reaches the upstream with the real key (undici ProxyAgent)", async () => {
  const session = await client.createSession({ secrets: { K: { value: VALUE, hosts: ["api.oshu.test"] } } });
  const env = sandboxEnv(session, { caPath: process.env.GATEWAY_CA });
  assert.equal(env.K, session.sealed_secrets.K);
  for (const n of ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE"]) assert.ok(env[n], n);
  const { ProxyAgent, fetch: ufetch } = createRequire(import.meta.url)(process.env.UNDICI);
  const agent = new ProxyAgent({ uri: env.HTTPS_PROXY, proxyTls: { ca }, requestTls: { ca } });
  const res = await ufetch("https://api.oshu.test/reflect?header=x-api-key", { dispatcher: agent, headers: { "x-api-key": env.K } });
  const text = await res.text();
  assert.equal(res.status, 200);
  assert.ok(text.includes(env.K) && !text.includes(VALUE));
  await agent.close();
  await client.deleteSession(session.session_id);
});

test("secrets of kind aws, oauth2, gcpServiceAccount: env per secret, the agent key file, nothing real", async () => {
  const real = {
    accessKeyId: "AKIA" + randomBytes(8).toString("hex").toUpperCase(),
    secretAccessKey: randomBytes(30).toString("base64url"),
    sessionToken: "IQoJ" + randomBytes(40).toString("base64url"),
    clientSecret: "cs-" + randomBytes(20).toString("hex"),
    privateKeyId: randomBytes(20).toString("hex"),
  };
  const { privateKey } = generateKeyPairSync("rsa", {
    modulusLength: 2048, privateKeyEncoding: { type: "pkcs8", format: "pem" }, publicKeyEncoding: { type: "spki", format: "pem" },
  });
  const keyFile = JSON.stringify({
    type: "service_account", project_id: "oshu-js", private_key_id: real.privateKeyId, private_key: privateKey,
    client_email: "agent@oshu-js.iam.gserviceaccount.com", token_uri: "https://oauth2.googleapis.com/token",
  });
  const session = await client.createSession({
    secrets: {
      AWS: awsSecret({ ...real, hosts: ["bedrock-runtime.us-east-1.amazonaws.com"] }),
      IDP: oauth2Secret({ tokenUrl: "https://auth.oshu.test/token", clientId: "cid", clientSecret: real.clientSecret, hosts: ["api.oshu.test"] }),
      GOOGLE_SA: gcpServiceAccountSecret({ keyFile, hosts: ["us-east5-aiplatform.googleapis.com"] }),
    },
  });
  assert.deepEqual(Object.fromEntries(Object.entries(session.secrets).map(([n, c]) => [n, c.kind])),
    { AWS: "aws", IDP: "oauth2", GOOGLE_SA: "gcpServiceAccount" });
  const env = sandboxEnv(session, { caPath: "/sandbox/ca.pem", credentialsDir: "/sandbox/creds" });
  const files = sandboxFiles(session, { credentialsDir: "/sandbox/creds" });
  assert.equal(env.AWS_ACCESS_KEY_ID, session.sealed_secrets.AWS);
  assert.match(env.AWS_SECRET_ACCESS_KEY, /^SEALED_/);
  assert.match(env.AWS_SESSION_TOKEN, /^SEALED_/);
  assert.equal(env.IDP, session.sealed_secrets.IDP);
  assert.equal(env.GOOGLE_APPLICATION_CREDENTIALS, "/sandbox/creds/agent-GOOGLE_SA.json");
  assert.equal(env.GOOGLE_SA, env.GOOGLE_APPLICATION_CREDENTIALS);
  assert.equal(env.AWS, undefined);
  const agent = JSON.parse(files["/sandbox/creds/agent-GOOGLE_SA.json"]);
  assert.equal(agent.private_key_id, session.sealed_secrets.GOOGLE_SA);
  assert.match(agent.private_key, /^-----BEGIN PRIVATE KEY-----/);
  assert.notEqual(agent.private_key, privateKey);
  const seen = JSON.stringify([session, env, files, await client.getSession(session.session_id)]);
  const body = privateKey.split("\n").filter((l) => l && !l.startsWith("-----"));
  for (const v of [...Object.values(real), ...body]) assert.ok(!seen.includes(v), "a real value reached the SDK's caller");
  await client.deleteSession(session.session_id);
});
