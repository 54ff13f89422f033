// The seed's flow against a self-hosted oshu-gateway: create a session, start the sandbox with the
// sealed key, the proxy URL and the CA variable only, run Claude Code, delete the session.
import { Sandbox } from "@e2b/code-interpreter";
import { SecretsProxyClient, sandboxEnv } from "@oshu/vault-sdk";

const PROXY_BASE_URL = process.env.PROXY_BASE_URL ?? "https://gateway.example.com:8443";
const CA_IN_SANDBOX = "/usr/local/share/ca-certificates/oshu-gateway.crt"; // installed by e2b-template.ts

const client = new SecretsProxyClient({ baseUrl: PROXY_BASE_URL, apiKey: process.env.SECRETS_PROXY_API_KEY! });
const session = await client.createSession({
  secrets: { ANTHROPIC_API_KEY: process.env.ANTHROPIC_API_KEY! }, // hosts from the catalog: api.anthropic.com
  ttl_seconds: 900,
});

// ANTHROPIC_API_KEY=SEALED_..., HTTP(S)_PROXY=https://sess_...:tok_...@gateway, NO_PROXY, and the CA
// variables (NODE_EXTRA_CA_CERTS, SSL_CERT_FILE, ...) pointing at the CA the template installed.
const envs = sandboxEnv(session, { caPath: CA_IN_SANDBOX });
// The system bundle already holds the gateway CA plus the public roots; point the bundle
// variables there so tools that replace their roots with SSL_CERT_FILE keep the public ones.
for (const name of ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE"]) {
  envs[name] = "/etc/ssl/certs/ca-certificates.crt";
}

const sandbox = await Sandbox.create("oshu-vault-claude", { envs });
try {
  const result = await sandbox.commands.run(`claude -p "Write a hello world program in Python"`, { timeoutMs: 120_000 });
  console.log(result.stdout);
} finally {
  await client.deleteSession(session.session_id);
  await sandbox.kill();
}
