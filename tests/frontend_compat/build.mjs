// Builds the compatibility page into dist/ (app.js and index.html); bin/setup runs it.
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const src = fileURLToPath(new URL('./src/', import.meta.url));
const out = fileURLToPath(new URL('./dist/', import.meta.url));

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await esbuild.build({
  entryPoints: [src + 'main.jsx'],
  outfile: out + 'app.js',
  bundle: true,
  format: 'esm',
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': '"production"' },
  target: ['chrome100'],
  logLevel: 'warning',
});
// index.html last: the test treats the page as built once both are there
await copyFile(src + 'index.html', out + 'index.html');
console.log(`built the compatibility page into ${out}`);
