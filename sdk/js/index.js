// @oshu/vault-sdk: client of oshu-gateway's session API. No runtime dependencies.
// Field names are the API's (snake_case), as in the seed SDK: session.session_id, session.sealed_secrets.

export const CA_ENV_VARS = Object.freeze([
  "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
]);

export class SecretsProxyError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.name = "SecretsProxyError";
    this.status = status;
    this.code = code;
  }
}

export const DEFAULT_CREDENTIALS_DIR = "/tmp/oshu-vault";

// Secrets that are not a static header: the request shapes for createSession (docs/gateway.md).
export function awsSecret({ accessKeyId, secretAccessKey, sessionToken, hosts }) {
  const fields = { accessKeyId, secretAccessKey };
  if (sessionToken) fields.sessionToken = sessionToken;
  return { kind: "aws", fields, hosts };
}

export function oauth2Secret({ tokenUrl, clientId, clientSecret, refreshToken, scope, audience, clientAuth, hosts }) {
  const fields = { tokenUrl, clientId };
  for (const [k, v] of Object.entries({ clientSecret, refreshToken, scope, audience, clientAuth })) {
    if (v !== undefined) fields[k] = v;
  }
  return { kind: "oauth2", fields, hosts };
}

export function gcpServiceAccountSecret({ keyFile, hosts }) {
  // keyFile: the service-account JSON Google gives you, as an object or its text.
  return { kind: "gcpServiceAccount", fields: typeof keyFile === "string" ? JSON.parse(keyFile) : keyFile, hosts };
}

const agentFile = (dir, name) => `${dir.replace(/\/+$/, "")}/agent-${name}.json`;

function secretEnv(session, credentialsDir) {
  if (!session.secrets) return { ...session.sealed_secrets }; // a gateway that answers sealed_secrets only
  const env = {};
  for (const [name, cred] of Object.entries(session.secrets)) {
    Object.assign(env, cred.env ?? {});
    for (const v of cred.agent_json_env ?? []) env[v] = agentFile(credentialsDir, name);
  }
  return env;
}

// Path -> content of the files a sandbox must hold: Google agent key files (their private key is a throwaway).
export function sandboxFiles(session, { credentialsDir = DEFAULT_CREDENTIALS_DIR } = {}) {
  const files = {};
  for (const [name, cred] of Object.entries(session.secrets ?? {})) {
    if (cred.agent_json) files[agentFile(credentialsDir, name)] = JSON.stringify(cred.agent_json, null, 2) + "\n";
  }
  return files;
}

export function sandboxEnv(
  session,
  { caPath = "/tmp/oshu-vault-ca.pem", noProxy = "localhost,127.0.0.1,::1", credentialsDir = DEFAULT_CREDENTIALS_DIR } = {},
) {
  const env = secretEnv(session, credentialsDir);
  for (const name of ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"]) env[name] = session.proxy_url;
  env.NO_PROXY = env.no_proxy = noProxy;
  for (const name of CA_ENV_VARS) env[name] = caPath;
  if (session.proxy_url.startsWith("https://")) env.GIT_PROXY_SSL_CAINFO = caPath;
  return env;
}

const env = (name) => (typeof process !== "undefined" && process.env ? process.env[name] : undefined);

export class SecretsProxyClient {
  constructor({ baseUrl, apiKey, ca, timeoutMs = 30000 } = {}) {
    const base = baseUrl ?? env("PROXY_BASE_URL");
    const key = apiKey ?? env("SECRETS_PROXY_API_KEY");
    if (!base) throw new TypeError("baseUrl (or PROXY_BASE_URL) is required");
    if (!key) throw new TypeError("apiKey (or SECRETS_PROXY_API_KEY) is required");
    this.baseUrl = base.replace(/\/+$/, "");
    Object.defineProperty(this, "_apiKey", { value: key, enumerable: false });
    Object.defineProperty(this, "_ca", { value: ca, enumerable: false });
    this._timeoutMs = timeoutMs;
  }

  async _call(method, path, body, auth = true) {
    const headers = { accept: "application/json" };
    if (auth) headers.authorization = `Bearer ${this._apiKey}`;
    let data;
    if (body !== undefined) {
      data = JSON.stringify(body);
      headers["content-type"] = "application/json";
    }
    const { status, text } = this._ca
      ? await this._nodeRequest(method, path, headers, data)
      : await this._fetch(method, path, headers, data);
    if (status >= 400) {
      let code = "http_error";
      let message = text.slice(0, 200);
      try {
        const err = JSON.parse(text).error;
        code = String(err.code);
        message = String(err.message);
      } catch {}
      throw new SecretsProxyError(status, code, message);
    }
    return text;
  }

  async _fetch(method, path, headers, data) {
    const res = await fetch(this.baseUrl + path, {
      method, headers, body: data, signal: AbortSignal.timeout(this._timeoutMs),
    });
    return { status: res.status, text: await res.text() };
  }

  async _nodeRequest(method, path, headers, data) {
    // A private CA for the gateway: node:https takes it per request (global fetch cannot without undici).
    const url = new URL(this.baseUrl + path);
    const mod = await import(url.protocol === "https:" ? "node:https" : "node:http");
    return new Promise((resolve, reject) => {
      const req = mod.request(url, { method, headers, ca: this._ca, timeout: this._timeoutMs, agent: false }, (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString("utf8") }));
        res.on("error", reject);
      });
      req.on("timeout", () => req.destroy(new Error("request timed out")));
      req.on("error", reject);
      req.end(data);
    });
  }

  async createSession({ secrets, secret_hosts, allowed_egress, ttl_seconds, idle_ttl_seconds }) {
    const body = { secrets };
    if (secret_hosts !== undefined) body.secret_hosts = secret_hosts;
    if (allowed_egress !== undefined) body.allowed_egress = allowed_egress;
    if (ttl_seconds !== undefined) body.ttl_seconds = ttl_seconds;
    if (idle_ttl_seconds !== undefined) body.idle_ttl_seconds = idle_ttl_seconds;
    return JSON.parse(await this._call("POST", "/v1/sessions", body));
  }

  async getSession(sessionId) {
    return JSON.parse(await this._call("GET", `/v1/sessions/${encodeURIComponent(sessionId)}`));
  }

  async deleteSession(sessionId) {
    await this._call("DELETE", `/v1/sessions/${encodeURIComponent(sessionId)}`);
  }

  async caPem() {
    return this._call("GET", "/v1/ca.pem", undefined, false);
  }
}
