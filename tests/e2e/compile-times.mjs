// How long the browser takes to compile each fused-kernel pipeline (Chromium's WebGPU; on a
// machine without a GPU, SwiftShader): the cold part of the page's first image.
//   node tests/e2e/compile-times.mjs            # the pipelines the built-in model compiles
// The last row creates the fused path's five pipelines at once.
// Each pipeline is created with createComputePipelineAsync from shaders/weights.wgsl + its
// module, with the override constants src/gpu/ passes on a software adapter for the built-in
// model (int8 weights: WFMT 2; shared arrays sized to the model and the adapter: TLW, TLC, CH,
// KV_VECS), and for comparison `linear` and `attention` with a GPU's shared-array sizes: the
// browser zero-initializes workgroup arrays, which SwiftShader compiles into code as long as
// the arrays.
import fs from 'node:fs';
import path from 'node:path';
import { ROOT, serveDist, launchBrowser, gotoBlank } from './harness.mjs';

const INT8 = 2;
const MODULES = {
  'shaders/transformer.wgsl': [['linear', { WFMT: INT8, CH: 64 }], ['attention', { KV_VECS: 64 }], ['layer_norm', {}], ['gather', {}],
    ['linear', { WFMT: INT8, CH: 256 }], ['attention', { KV_VECS: 256 }]],
  'shaders/head.wgsl': [['token_loop', { TL: 64, TFMT: INT8, ROWS: 2, PAIR_ADA: 1, PAIR_W: 1, TLW: 128, TLC: 16 }], ['gemm', { WFMT: INT8, MODE: 0 }], ['gemm', { WFMT: INT8, MODE: 1 }],
    ['gemm', { WFMT: INT8, MODE: 2 }], ['gemm', { WFMT: INT8, MODE: 3 }], ['input_init', { WFMT: INT8, MODE: 0 }],
    ['final_step', { WFMT: INT8, MODE: 0 }]],
};
const read = (file) => fs.readFileSync(path.join(ROOT, file), 'utf8');
const jobs = Object.entries(MODULES).map(([file, pipelines]) => ({ file, code: `${read('shaders/weights.wgsl')}\n${read(file)}`, pipelines }));

const { server, baseUrl } = await serveDist();
const { context, page } = await launchBrowser({ webgpu: true });
try {
  await gotoBlank(page, baseUrl);
  const lines = await page.evaluate(async (jobs) => {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) throw new Error('no WebGPU adapter');
    const device = await adapter.requestDevice();
    const out = [];
    for (const { file, code, pipelines } of jobs) {
      const module = device.createShaderModule({ code });
      const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
      if (errors.length) throw new Error(`${file}: ${errors.map((m) => m.message).join('; ')}`);
      for (const [entryPoint, constants] of pipelines) {
        const t0 = performance.now();
        await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint, constants } });
        out.push(`| ${file} | ${entryPoint} | ${JSON.stringify(constants)} | ${(performance.now() - t0).toFixed(0)} |`);
      }
    }
    // The fused path's pipelines (transformer + token_loop) created at once, from fresh modules
    // (a changed source, so no cache serves them): does the browser compile them in parallel?
    const fused = ['linear', 'attention', 'layer_norm', 'gather', 'token_loop'];
    const t0 = performance.now();
    await Promise.all(jobs.flatMap(({ code, pipelines }) => {
      const module = device.createShaderModule({ code: `${code}\n// created again` });
      // The first row of each entry point: the sizes a software adapter compiles.
      return pipelines.filter(([entryPoint], i) => fused.includes(entryPoint) && pipelines.findIndex(([e]) => e === entryPoint) === i)
        .map(([entryPoint, constants]) => device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint, constants } }));
    }));
    out.push(`| (both) | the fused path's ${fused.length}, created at once | | ${(performance.now() - t0).toFixed(0)} |`);
    return out;
  }, jobs);
  console.log('| module | entry point | constants | compile ms |\n|---|---|---|---|');
  console.log(lines.join('\n'));
} finally {
  await context.close();
  server.close();
}
