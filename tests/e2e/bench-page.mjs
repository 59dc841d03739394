// The page's generation speed, in one run beside the native CLI's:
//   node tests/e2e/bench-page.mjs [--backend cpu|webgpu] [--kernels tensor,fused] [--wasm simd128,auto]
//     [--schedules 'constant:100;linear:50:5'] [--ar-steps 16] [--cfg 3] [--repeats 3] [--warmup 3]
//     [--dist DIR] [--json FILE]
// (scripts/bench-page.sh builds the release page and the CLI, then runs this.)
//
// It drives the page's own worker (worker.js, www/worker-protocol.md) from a blank page of the
// served build, with previews off (`previews: false`: one decode, after the last AR step), so
// only generation is timed: `samplingMs` (transformer + head, what `disa bench` times) and the
// wall time from `generate` to `done`. Each row runs in a fresh worker: its first generation
// (cold: wasm compilation, shaders, first allocations) is the page's first image; then
// `--warmup` unreported runs let the browser's optimizing compiler in, and the row reports the
// median of `--repeats` more. `--wasm`: the library builds (www/worker.js): `auto` as the page
// picks (relaxed SIMD in Chromium), `simd128` the build for browsers without relaxed SIMD; on
// the CPU both by default. With
// DISA_BIN set, `disa bench --backend cpu` runs single-threaded (RAYON_NUM_THREADS=1; the page
// has one thread) on the same settings, and the table gives page ÷ native per image.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { serveDist, launchBrowser, median, gotoBlank, workerRuns, DISA_BIN, DIST } from './harness.mjs';

function parseArgs(argv) {
  const o = { backend: 'cpu', kernels: null, wasm: null, schedules: 'constant:100;linear:50:5', arSteps: 16, cfg: 3, repeats: 3, warmup: 3, dist: DIST, json: null };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    switch (flag) {
      case '--backend': o.backend = value; break;
      case '--kernels': o.kernels = value; break;
      case '--wasm': o.wasm = value; break;
      case '--schedules': o.schedules = value; break;
      case '--ar-steps': o.arSteps = Number(value); break;
      case '--cfg': o.cfg = Number(value); break;
      case '--repeats': o.repeats = Number(value); break;
      case '--warmup': o.warmup = Number(value); break;
      case '--dist': o.dist = value; break;
      case '--json': o.json = value; break;
      default: throw new Error(`unknown option ${flag}`);
    }
  }
  if (!['cpu', 'webgpu'].includes(o.backend)) throw new Error('--backend: cpu or webgpu');
  if (!(Number.isInteger(o.arSteps) && o.arSteps >= 1)) throw new Error('--ar-steps: a positive integer');
  if (!(Number.isInteger(o.repeats) && o.repeats >= 1)) throw new Error('--repeats: a positive integer');
  if (!(Number.isInteger(o.warmup) && o.warmup >= 0)) throw new Error('--warmup: an integer ≥ 0');
  if (!(o.cfg >= 1)) throw new Error('--cfg: a number ≥ 1');
  o.kernels = (o.kernels || (o.backend === 'webgpu' ? 'tensor,fused' : 'tensor')).split(',');
  o.wasm = (o.wasm || (o.backend === 'cpu' ? 'simd128,auto' : 'auto')).split(',');
  if (!o.wasm.every((w) => ['auto', 'simd128'].includes(w))) throw new Error('--wasm: auto and/or simd128');
  o.schedules = o.schedules.split(';').filter(Boolean);
  return o;
}

/** `disa bench --json` single-threaded on the same settings: seconds per image by schedule. */
function benchNative(o) {
  const args = ['bench', '--backend', 'cpu', '--ar-steps', String(o.arSteps), '--cfg', String(o.cfg), '--cfg-schedule', 'linear',
    '--temperature', '1', '--batch', '1', '--repeats', String(o.repeats), '--schedules', o.schedules.join(';'), '--json'];
  const r = spawnSync(DISA_BIN, args, { env: { ...process.env, RAYON_NUM_THREADS: '1' }, encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`${DISA_BIN} ${args.join(' ')} failed:\n${r.stderr}`);
  const report = JSON.parse(r.stdout);
  return Object.fromEntries(report.rows.map((row) => [row.schedule, row.secondsPerImage]));
}

const o = parseArgs(process.argv.slice(2));
const { server, baseUrl } = await serveDist(o.dist);
const { context, page, logs } = await launchBrowser({ webgpu: o.backend === 'webgpu' });
let result;
try {
  // A blank page of the build's origin: the page's own worker would compete for the CPU.
  await gotoBlank(page, baseUrl);
  result = await workerRuns(page, o);
} catch (e) {
  console.error(logs.slice(-20).join('\n'));
  throw e;
} finally {
  await context.close();
  server.close();
}
// Native after the browser has closed: the two never share the CPU.
const native = DISA_BIN ? benchNative(o) : null;

const b = result.backend;
const adapters = [...new Set(result.rows.map((r) => r.adapter).filter(Boolean))].join(' / ');
console.log(`page: ${b.backend}${adapters ? ` · ${adapters}` : ''}${b.software ? ' (software)' : ''} · ${result.model.name}`);
console.log(`K=${o.arSteps} · cfg ${o.cfg} (linear) · batch 1 · previews off · first (cold) image, then the median of ${o.repeats} after ${o.warmup} warm-up runs${native ? ' · native: disa bench --backend cpu, RAYON_NUM_THREADS=1' : ''}`);
console.log('');
// The build a row ran: the adapter names it (src/web.rs).
const build = (row) => (/relaxed SIMD/.test(row.adapter) ? 'relaxed SIMD' : 'SIMD');
console.log(`| wasm | schedule | kernels | head calls | first image (s) | page s / image | page wall s / image | ${native ? 'native s / image | page ÷ native |' : ''}`);
console.log(`|---|---|---|---|---|---|---|${native ? '---|---|' : ''}`);
const summary = [];
for (const row of result.rows) {
  const warm = row.runs;
  const sampling = median(warm.map((r) => r.samplingMs)) / 1e3;
  const wall = median(warm.map((r) => r.wallMs)) / 1e3;
  const first = row.first.wallMs / 1e3;
  const n = native ? native[row.schedule] : null;
  summary.push({ wasm: build(row), schedule: row.schedule, kernels: row.kernels, headCalls: row.first.headCalls, firstImageSeconds: first, secondsPerImage: sampling, wallSecondsPerImage: wall, nativeSecondsPerImage: n });
  console.log(`| ${build(row)} | ${row.schedule} | ${row.kernels} | ${row.first.headCalls} | ${first.toFixed(3)} | ${sampling.toFixed(3)} | ${wall.toFixed(3)} | ${n ? `${n.toFixed(3)} | ${(sampling / n).toFixed(2)}× |` : ''}`);
}
// Where the time goes, first (cold) image and warm median: the step events' transformer and
// head times (in wasm they include waiting for the GPU, which runs ahead asynchronously) and
// the rest of the wall time (the request, the final decode, messages).
console.log('');
console.log('| wasm | schedule | kernels | first: transformer / head / rest (s) | warm: transformer / head / rest (s) |');
console.log('|---|---|---|---|---|');
for (const row of result.rows) {
  const split = (r) => [r.transformerMs, r.headMs, r.wallMs - r.transformerMs - r.headMs].map((v) => (v / 1e3).toFixed(3)).join(' / ');
  const warm = [...row.runs].sort((a, b) => a.wallMs - b.wallMs)[row.runs.length >> 1];
  console.log(`| ${build(row)} | ${row.schedule} | ${row.kernels} | ${split(row.first)} | ${split(warm)} |`);
}
// Same request, same seed: every build and kernel choice must draw the same image (the first
// pixels).
const label = (r) => `${r.kernels} (${build(r)})`;
for (const schedule of o.schedules) {
  const rows = result.rows.filter((r) => r.schedule === schedule);
  for (const r of rows.slice(1)) {
    const diff = (r.first.head || []).reduce((m, v, i) => Math.max(m, Math.abs(v - rows[0].first.head[i])), 0);
    if (diff > 1) console.log(`note: ${schedule}: ${label(r)} differs from ${label(rows[0])} by up to ${diff} levels`);
  }
}
if (summary.length > o.schedules.length) {
  for (const schedule of o.schedules) {
    const rows = summary.filter((r) => r.schedule === schedule);
    const base = rows[0];
    for (const r of rows.slice(1)) {
      console.log(`${schedule}: ${r.kernels} (${r.wasm}) vs ${base.kernels} (${base.wasm}): first image ${(base.firstImageSeconds / r.firstImageSeconds).toFixed(2)}× faster, warm ${(base.secondsPerImage / r.secondsPerImage).toFixed(2)}× faster`);
    }
  }
}
if (o.json) fs.writeFileSync(o.json, JSON.stringify({ settings: o, backend: b, rows: summary }, null, 2));
