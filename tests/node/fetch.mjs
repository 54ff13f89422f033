// A Node client for tests/sidecar: plain fetch, configured only by the standard environment.
// HTTPS_PROXY/HTTP_PROXY/NO_PROXY are honoured through undici's EnvHttpProxyAgent (Node's
// built-in fetch ignores them), NODE_EXTRA_CA_CERTS supplies the session CA.
// Usage: node fetch.mjs URL [METHOD] [HEADERS_JSON] [BODY]; prints {status, headers, body} as JSON.
import { EnvHttpProxyAgent, fetch, setGlobalDispatcher } from 'undici';

setGlobalDispatcher(new EnvHttpProxyAgent());
const [url, method = 'GET', headersJson = '{}', body] = process.argv.slice(2);
try {
  const res = await fetch(url, { method, headers: JSON.parse(headersJson), body, redirect: 'manual' });
  const text = await res.text();
  console.log(JSON.stringify({ status: res.status, headers: Object.fromEntries(res.headers), body: text }));
} catch (err) {
  console.log(JSON.stringify({ error: String(err && err.cause ? err.cause : err) }));
  process.exitCode = 1;
}
