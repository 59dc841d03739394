// How long a changed setting waits for the run it cancels, on WebGPU (SwiftShader here):
//   node tests/e2e/cancel-latency.mjs DIST_DIR [ROUNDS]
// Works on any version of the page (it only reads `window.disaEvents` step events), so the same
// measurement runs on a build from before a change and after it. With auto-run on, the seed
// changes right after a run's first AR step event; the time to the new run's first step, less
// the auto-run delay (350 ms) and an undisturbed first step, is the wait for the cancelled step.

import { serveDist, launchBrowser, setControl as set, median } from './harness.mjs';

const [dist, roundsArg = '3'] = process.argv.slice(2);
if (!dist) {
  console.error('usage: node tests/e2e/cancel-latency.mjs DIST_DIR [ROUNDS]');
  process.exit(2);
}
const TIMEOUT = 600_000;
const S = { classLabel: 3, seed: 7, arSteps: 4, start: 20, end: 5, cfg: 2.0 };

const stepOf = (page, pred) => page.waitForFunction(pred, null, { timeout: TIMEOUT, polling: 20 });

const { server, baseUrl } = await serveDist(dist);
const { context, page } = await launchBrowser({ webgpu: true });
try {
  await page.goto(baseUrl);
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: TIMEOUT });
  console.log(`backend: ${await page.textContent('#backend')}`);
  await set(page, 'auto-run', false);
  for (const [id, v] of [['class', S.classLabel], ['seed', S.seed], ['ar-steps', S.arSteps], ['cfg', S.cfg],
    ['preset', 'linear'], ['start-steps', S.start], ['end-steps', S.end]]) await set(page, id, v);
  // Warm up (shader compilation), then time undisturbed first steps and restarts.
  await page.click('#generate');
  await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: TIMEOUT });
  const first = [], restart = [];
  for (let r = 0; r < +roundsArg; r++) {
    await set(page, 'auto-run', false);
    await page.evaluate(() => { window.disaEvents.length = 0; });
    let t0 = Date.now();
    await page.click('#generate');
    await stepOf(page, () => window.disaEvents.some((e) => e.type === 'step'));
    first.push(Date.now() - t0);
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: TIMEOUT });
    await set(page, 'auto-run', true);
    await page.evaluate(() => { window.disaEvents.length = 0; });
    await page.click('#generate');
    await stepOf(page, () => window.disaEvents.some((e) => e.type === 'step'));
    const old = await page.evaluate(() => window.disaEvents.find((e) => e.type === 'step').runId);
    t0 = Date.now();
    await set(page, 'seed', S.seed + 1 + r);
    await page.waitForFunction((old) => window.disaEvents.some((e) => e.type === 'step' && e.runId !== old), old, { timeout: TIMEOUT, polling: 20 });
    restart.push(Date.now() - t0);
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: TIMEOUT });
  }
  const wait = restart.map((r, i) => Math.max(0, r - 350 - first[i]));
  console.log(`undisturbed first step (ms): ${first.join(', ')}`);
  console.log(`setting change → new run's first step (ms): ${restart.join(', ')}`);
  console.log(`wait for the cancelled step: median ${median(wait)} ms (${wait.join(', ')})`);
} finally {
  await context.close();
  server.close();
}
