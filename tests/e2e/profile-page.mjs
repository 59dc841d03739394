// Where the page spends its time: a Chromium CPU profile of generations run by the wasm library
// in a blank page of a built dist (no worker, so the profiler sees the wasm):
//   node tests/e2e/profile-page.mjs [DIST] [--runs N] [--schedule linear:50:5] [--ar-steps 16]
//        [--backend cpu|webgpu] [--kernels auto|fused|tensor] [--cfg 3] [--wasm simd128|relaxed]
// (`--wasm`: the library build, disa.js or disa-relaxed.js; www/worker.js)
// On WebGPU the GPU's own work runs in Chromium's GPU process: what the page thread does not
// account for (wall minus profiled busy time) is waiting for it.
// Prints the wall and sampling time of each profiled run and the functions with the most self
// time (names appear when the build keeps wasm's name section, e.g. a dev build). Used to find
// the per-export constructor runs (README, *CPU speed*).

import { serveDist, launchBrowser, gotoBlank, DIST } from './harness.mjs';

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : fallback;
};
const runs = Number(option('--runs', '5'));
const schedule = option('--schedule', 'linear:50:5');
const arSteps = Number(option('--ar-steps', '16'));
const backend = option('--backend', 'cpu');
const kernels = option('--kernels', 'auto');
const cfg = Number(option('--cfg', '3'));
const wasm = option('--wasm', 'simd128');
const dist = args[0] || DIST;
if (!(Number.isInteger(runs) && runs >= 1) || !(Number.isInteger(arSteps) && arSteps >= 1)
    || !['cpu', 'webgpu'].includes(backend) || !['auto', 'fused', 'tensor'].includes(kernels) || !(cfg >= 1)
    || !['simd128', 'relaxed'].includes(wasm)) {
  console.error('usage: node tests/e2e/profile-page.mjs [DIST] [--runs N] [--schedule S] [--ar-steps K] [--backend cpu|webgpu] [--kernels auto|fused|tensor] [--cfg C] [--wasm simd128|relaxed]');
  process.exit(2);
}

const { server, baseUrl } = await serveDist(dist);
const { context, page } = await launchBrowser({ webgpu: backend === 'webgpu' });
try {
  await gotoBlank(page, baseUrl);
  const info = await page.evaluate(async ({ schedule, arSteps, backend, kernels, cfg, library }) => {
    const wasm = await import(library);
    await wasm.default();
    const session = new wasm.Session();
    const info = await session.initBackend(backend === 'cpu');
    if (backend === 'webgpu' && info.backend !== 'webgpu') throw new Error(`no WebGPU: ${JSON.stringify(info)}`);
    const bytes = new Uint8Array(await (await fetch('assets/model.safetensors')).arrayBuffer());
    session.loadModel('model.safetensors', bytes);
    window.generateOnce = async () => {
      session.startGeneration({ classLabel: 0, seed: 0, arSteps, schedule, cfg, cfgSchedule: 'linear', temperature: 1, previews: false, kernels });
      const t0 = performance.now();
      let samplingMs = 0, transformerMs = 0, headMs = 0;
      for (let r; (r = await session.step()) !== null;) {
        samplingMs = r.event.samplingMs;
        transformerMs += r.event.transformerMs;
        headMs += r.event.headMs;
      }
      return [performance.now() - t0, samplingMs, transformerMs, headMs];
    };
    for (let i = 0; i < 3; i++) await window.generateOnce(); // warm-up: wasm tiers up
    return info;
  }, { schedule, arSteps, backend, kernels, cfg, library: wasm === 'relaxed' ? './disa-relaxed.js' : './disa.js' });
  console.log(`backend: ${info.backend} (${info.adapter}), kernels: ${kernels}`);
  const cdp = await context.newCDPSession(page);
  await cdp.send('Profiler.enable');
  await cdp.send('Profiler.setSamplingInterval', { interval: 200 });
  await cdp.send('Profiler.start');
  const times = await page.evaluate(async (runs) => {
    const t = [];
    for (let i = 0; i < runs; i++) t.push(await window.generateOnce());
    return t;
  }, runs);
  const { profile } = await cdp.send('Profiler.stop');
  console.log(`${schedule}, K=${arSteps}: wall / sampling (transformer + head) ms per image: ${times.map(([w, s, tr, h]) => `${w.toFixed(0)} / ${s.toFixed(0)} (${tr.toFixed(0)} + ${h.toFixed(0)})`).join(', ')}`);
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const frame = nodes.get(id).callFrame;
    const name = frame.functionName || `(${frame.url.split('/').pop()}:${frame.lineNumber})`;
    const dt = profile.timeDeltas[i] || 0;
    self.set(name, (self.get(name) || 0) + dt);
    total += dt;
  });
  for (const [name, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) {
    console.log(`${((100 * t) / total).toFixed(1).padStart(5)}%  ${name.slice(0, 140)}`);
  }
} finally {
  await context.close();
  server.close();
}
