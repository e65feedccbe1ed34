// Builds the talk page into voicecore/web/static/ (served by `voicecore serve` at GET /):
// src/main.ts and what it imports (livekit-client included) -> app.js, src/style.css -> app.css,
// src/index.html copied. bin/setup runs it when the output is missing or older than the sources.
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const src = fileURLToPath(new URL('./src/', import.meta.url));
const out = fileURLToPath(new URL('../voicecore/web/static/', import.meta.url));

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
const common = { bundle: true, minify: true, sourcemap: true, logLevel: 'warning', legalComments: 'linked' };
await esbuild.build({
  ...common,
  entryPoints: [src + 'main.ts'],
  outfile: out + 'app.js',
  format: 'esm',
  target: ['chrome100', 'firefox100', 'safari15'],
});
await esbuild.build({ ...common, entryPoints: [src + 'style.css'], outfile: out + 'app.css' });
// index.html last: the server treats the page as built once index.html and app.js are there
await copyFile(src + 'index.html', out + 'index.html');
console.log(`built the talk page into ${out}`);
