// Node client through an HTTP CONNECT proxy using only Node's own TLS stack, trusting what
// NODE_EXTRA_CA_CERTS adds (Node 20 has no NODE_USE_ENV_PROXY; undici does the same tls.connect).
// usage: node connect_fetch.js https://host[:port]/path HEADER_NAME HEADER_VALUE
const http = require('http');
const tls = require('tls');
const [url, hName, hValue] = process.argv.slice(2);
const u = new URL(url);
const proxy = new URL(process.env.HTTPS_PROXY || process.env.https_proxy);
const port = u.port || '443';
const timer = setTimeout(() => { console.log('ERR timeout'); process.exit(3); }, 15000);
const req = http.request({ host: proxy.hostname, port: proxy.port, method: 'CONNECT', path: `${u.hostname}:${port}` });
req.on('error', (e) => { console.log('ERR proxy ' + e.message); process.exit(2); });
req.on('connect', (res, socket) => {
  if (res.statusCode !== 200) { console.log('ERR connect ' + res.statusCode); process.exit(2); }
  const s = tls.connect({ socket, servername: u.hostname }, () => {
    s.write(`GET ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\n${hName}: ${hValue}\r\nConnection: close\r\n\r\n`);
  });
  let out = '';
  s.on('data', (d) => { out += d; });
  s.on('end', () => { clearTimeout(timer); console.log(out.split('\r\n')[0]); process.exit(0); });
  s.on('error', (e) => { clearTimeout(timer); console.log('ERR tls ' + (e.code || e.message)); process.exit(1); });
});
req.end();
