// Development server for the console (plain node:http, no dependencies).
//
//   PXB_API=http://127.0.0.1:18080 PXB_TOKEN=<TOKEN of `pxb demo`> node dev-server.mjs [dist] [--port 5173]
//
// - serves the built console (default ./dist) at `/` and `/assets/*` with the CSP pxb-server sends;
// - answers `GET /console/config.json` (issuer and client id from PXB_OIDC_ISSUER and
//   PXB_OIDC_CLIENT_ID when set, else null: one-time codes only);
// - answers `POST /console/session` for the one-time codes `dev`, `dev2`, `dev3` … (any code
//   starting with `dev`, reusable, unlike the server's) with PXB_TOKEN as the session token;
// - `POST /console/code` with PXB_TOKEN as bearer answers a fresh `dev-…` code (as pxb-server
//   does for its development token);
// - `DELETE /console/session` answers 204 and, because every dev session shares one
//   token (one server-side session), resets that session's time bracket to 24h through the API,
//   which is what a new sign-in session on the real server starts with;
// - proxies every other `/v1/*` request to PXB_API unchanged.
import http from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
let port = Number(process.env.PORT ?? 5173);
let root = path.join(here, 'dist');
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--port') port = Number(args[++i]);
  else root = path.resolve(args[i]);
}
const api = process.env.PXB_API;
const token = process.env.PXB_TOKEN;
if (!api || !token) {
  console.error('set PXB_API (the API line of `pxb demo`) and PXB_TOKEN (its TOKEN line)');
  process.exit(2);
}
const issuer = process.env.PXB_OIDC_ISSUER || null;
const clientId = process.env.PXB_OIDC_CLIENT_ID || null;
const scopes = issuer ? (process.env.PXB_OIDC_SCOPES || 'openid profile offline_access').split(/\s+/).filter(Boolean) : [];

const csp = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  `connect-src 'self'${issuer ? ' ' + new URL(issuer).origin : ''}`,
  "font-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join('; ');

const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json' };

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

async function body(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks);
}

async function serveFile(res, file, cache) {
  try {
    const s = await stat(file);
    if (!s.isFile()) throw new Error('not a file');
    const data = await readFile(file);
    res.writeHead(200, {
      'content-type': types[path.extname(file)] ?? 'application/octet-stream',
      'content-security-policy': csp,
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
      'cache-control': cache,
    });
    res.end(data);
  } catch {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  }
}

async function proxy(req, res, url) {
  const target = new URL(url.pathname + url.search, api);
  const headers = { ...req.headers };
  delete headers.host;
  delete headers.connection;
  const data = ['GET', 'HEAD'].includes(req.method) ? undefined : await body(req);
  try {
    const r = await fetch(target, { method: req.method, headers, body: data, redirect: 'manual' });
    const out = {};
    r.headers.forEach((v, k) => {
      if (!['content-encoding', 'content-length', 'transfer-encoding', 'connection'].includes(k)) out[k] = v;
    });
    const buf = Buffer.from(await r.arrayBuffer());
    res.writeHead(r.status, out);
    res.end(buf);
  } catch (e) {
    json(res, 502, { error: { code: 'unavailable', message: `dev-server: ${api} unreachable: ${e.message}` } });
  }
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const p = url.pathname;
  if (p === '/console/config.json' && req.method === 'GET') {
    return json(res, 200, { issuer, clientId, scopes });
  }
  if (p === '/console/session' && req.method === 'POST') {
    let code;
    try {
      code = JSON.parse((await body(req)).toString()).code;
    } catch {
      return json(res, 400, { error: { code: 'bad_request', message: 'the body is not JSON' } });
    }
    if (typeof code !== 'string' || !code.startsWith('dev')) {
      return json(res, 401, { error: { code: 'unauthenticated', message: 'the one-time code is unknown, used or expired' } });
    }
    const expiresAt = new Date(Date.now() + 8 * 3600_000).toISOString().replace(/\.\d+Z$/, 'Z');
    return json(res, 200, { token, expiresAt, subject: 'dev' });
  }
  if (p === '/console/code' && req.method === 'POST') {
    if (req.headers.authorization !== `Bearer ${token}`) {
      return json(res, 403, { error: { code: 'forbidden', message: 'only the development token gets sign-in codes' } });
    }
    const code = `dev-${Date.now().toString(36)}`;
    return json(res, 201, { code, urlPath: `/#/signin?code=${code}` });
  }
  if (p === '/console/session' && req.method === 'DELETE') {
    try {
      await fetch(new URL('/v1/me/preferences', api), {
        method: 'PUT',
        headers: { authorization: req.headers.authorization ?? '', 'content-type': 'application/json' },
        body: JSON.stringify({ timeBracket: { kind: '24h' } }),
      });
    } catch {}
    res.writeHead(204);
    return res.end();
  }
  if (p.startsWith('/v1/')) return proxy(req, res, url);
  if (p === '/' || p === '/index.html') return serveFile(res, path.join(root, 'index.html'), 'no-cache');
  if (p.startsWith('/assets/') && !p.includes('..')) {
    return serveFile(res, path.join(root, p), 'public, max-age=31536000, immutable');
  }
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found');
});

server.listen(port, '127.0.0.1', () => {
  console.log(`CONSOLE http://127.0.0.1:${port}/#/signin?code=dev`);
});
