// Bundles the console: `node build.mjs <outdir>` writes <outdir>/index.html and
// <outdir>/assets/app-<hash>.{js,css}, the hashes taken from the content (cache busting).
// No inline script or style anywhere: the server sends a strict Content-Security-Policy.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const outdir = path.resolve(process.argv[2] ?? path.join(here, 'dist'));

const result = await build({
  entryPoints: [path.join(here, 'src/main.tsx')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  outdir: path.join(outdir, 'assets'),
  entryNames: 'app',
  write: false,
  legalComments: 'none',
  sourcemap: false,
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning',
});

const hash = (buf) => createHash('sha256').update(buf).digest('hex').slice(0, 16);
let js, css;
for (const f of result.outputFiles) {
  if (f.path.endsWith('.js')) js = f.contents;
  else if (f.path.endsWith('.css')) css = f.contents;
}
if (!js || !css) throw new Error('esbuild produced no js or no css');

const jsName = `app-${hash(js)}.js`;
const cssName = `app-${hash(css)}.css`;
const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<title>pxb console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/${cssName}">
<script type="module" src="/assets/${jsName}"></script>
</head>
<body>
<div id="app"><noscript>The pxb console needs JavaScript.</noscript></div>
</body>
</html>
`;

await rm(path.join(outdir, 'assets'), { recursive: true, force: true });
await mkdir(path.join(outdir, 'assets'), { recursive: true });
await writeFile(path.join(outdir, 'assets', jsName), js);
await writeFile(path.join(outdir, 'assets', cssName), css);
await writeFile(path.join(outdir, 'index.html'), html);
// Precompressed copies for servers that send them to clients accepting gzip.
await writeFile(path.join(outdir, 'assets', `${jsName}.gz`), gzipSync(js, { level: 9 }));
await writeFile(path.join(outdir, 'assets', `${cssName}.gz`), gzipSync(css, { level: 9 }));

const gz = (b) => gzipSync(b, { level: 9 }).length;
const row = (name, b) => `  ${name.padEnd(32)} ${String(b.length).padStart(8)} B  ${String(gz(b)).padStart(7)} B gzip`;
console.log(`console built into ${outdir}`);
console.log(row('index.html', Buffer.from(html)));
console.log(row(`assets/${jsName}`, Buffer.from(js)));
console.log(row(`assets/${cssName}`, Buffer.from(css)));
const total = gz(Buffer.from(html)) + gz(Buffer.from(js)) + gz(Buffer.from(css));
console.log(`  first load: ${total} B gzip`);
