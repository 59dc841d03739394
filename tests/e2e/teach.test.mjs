// End-to-end test of the teaching view (www/teach.js): generate, open the analysis, check every
// plot has data and the numbers equal `disa analyze`'s for the same seed and settings, scrub the
// timeline, inspect a token, compare two schedules; on the CPU backend, on WebGPU (SwiftShader)
// and on a 390 px phone. Saves screenshots into screenshots/ (look at them).
// Expects `trunk build` output in ../../dist and the native CLI at $DISA_BIN (scripts/e2e.sh).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import { SHOTS, DISA_BIN, serveDist, launchBrowser, setControl, waitFor as waitForPage } from './harness.mjs';

const TIMEOUT = 300_000;
// One setting shared by the page and the CLI (the built-in model).
const CPU_SETTINGS = { classLabel: 3, seed: 7, arSteps: 8, start: 50, end: 5, cfg: 2.0, samples: 8 };
// SwiftShader runs every kernel on the CPU, slowly: keep the WebGPU run small.
const GPU_SETTINGS = { classLabel: 3, seed: 7, arSteps: 4, start: 20, end: 5, cfg: 2.0, samples: 4 };

let server, baseUrl;

before(async () => {
  assert.ok(DISA_BIN && fs.existsSync(DISA_BIN), 'DISA_BIN points at the native disa binary');
  ({ server, baseUrl } = await serveDist());
});

after(() => server && server.close());

async function open({ webgpu, viewport = { width: 1280, height: 800 }, query = '' }) {
  const { context, page, logs } = await launchBrowser({ webgpu, viewport });
  await page.goto(baseUrl + query);
  await waitFor(page, () => document.body.dataset.state === 'ready', logs, 'the model loads');
  return { context, page, logs };
}

const waitFor = (page, fn, logs, what) => waitForPage(page, fn, { logs, what, timeout: TIMEOUT, polling: 200 });

/** Generates with `s` (the generation the view analyses), then runs the analysis. */
async function generateAndAnalyse(page, logs, s) {
  await setControl(page, 'auto-run', false);
  await setControl(page, 'class', s.classLabel);
  await setControl(page, 'seed', s.seed);
  await setControl(page, 'ar-steps', s.arSteps);
  await setControl(page, 'cfg', s.cfg);
  await setControl(page, 'preset', 'linear');
  await setControl(page, 'start-steps', s.start);
  await setControl(page, 'end-steps', s.end);
  await page.click('#generate');
  await waitFor(page, () => ['done', 'error'].includes(document.body.dataset.state), logs, 'the generation ends');
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'done');
  await setControl(page, 'teach-m', s.samples);
  await setControl(page, 'teach-compare-schedule', 'auto');
  await page.locator('#teach-run').scrollIntoViewIfNeeded();
  const t0 = Date.now();
  await page.click('#teach-run');
  // Progress is shown while it runs.
  await waitFor(page, () => document.getElementById('teach').dataset.state !== 'idle', logs, 'the analysis starts');
  await waitFor(page, () => ['done', 'error'].includes(document.getElementById('teach').dataset.state), logs, 'the analysis ends');
  const status = await page.evaluate(() => document.getElementById('teach-status').textContent);
  assert.equal(await page.evaluate(() => document.getElementById('teach').dataset.state), 'done', status);
  console.log(`analysis (A and B) took ${Date.now() - t0} ms: ${status}`);
}

/** `disa analyze` for the same settings: the per-step CSV as objects. */
function cliAnalysis(s, tag) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'disa-analyze-'));
  const prefix = path.join(dir, tag);
  execFileSync(DISA_BIN, ['analyze', '--class', String(s.classLabel), '--seed', String(s.seed),
    '--ar-steps', String(s.arSteps), '--schedule', `linear:${s.start}:${s.end}`, '--cfg', String(s.cfg),
    '--samples', String(s.samples), '--quiet', '--out', prefix]);
  const [header, ...rows] = fs.readFileSync(`${prefix}.csv`, 'utf8').trim().split('\n');
  const keys = header.split(',');
  assert.ok(fs.readFileSync(`${prefix}.svg`, 'utf8').includes('<polyline'), 'the SVG has curves');
  return rows.map((r) => Object.fromEntries(r.split(',').map((v, i) => [keys[i], v === '' ? NaN : Number(v)])));
}

function assertClose(page, cli, what, rel) {
  for (let k = 0; k < cli.length; k++) {
    for (const [pageKey, cliKey] of [['variance', 'variance'], ['straightness', 'straightness'],
      ['path_length', 'path_length'], ['one_shot_error', 'one_shot_error']]) {
      const a = page.steps[k][pageKey];
      const b = cli[k][cliKey];
      assert.ok(Number.isFinite(a) && Number.isFinite(b), `${what} step ${k} ${pageKey}: ${a} vs ${b}`);
      assert.ok(Math.abs(a - b) <= rel * Math.abs(b) + 1e-6, `${what} step ${k} ${pageKey}: page ${a} vs CLI ${b}`);
    }
    const a = page.completedError[k];
    const b = cli[k].completed_error;
    assert.ok(Math.abs(a - b) <= rel * Math.abs(b) + 1e-6, `${what} step ${k} completed error: page ${a} vs CLI ${b}`);
    assert.equal(page.steps[k].tokens, cli[k].tokens);
    assert.equal(page.steps[k].effective_steps, cli[k].effective_steps);
  }
}

/** Every plot, image and map of the view has been drawn with data. */
async function assertPlotsHaveData(page) {
  const data = await page.evaluate(() => Object.fromEntries(
    ['teach-plot-variance', 'teach-plot-straightness', 'teach-plot-predict', 'teach-plot-pca', 'teach-token-path']
      .map((id) => [id, Number(document.getElementById(id)?.dataset.points || 0)])
      .concat(['teach-partial', 'teach-completed', 'teach-tokens', 'teach-cmp-a', 'teach-cmp-b', 'teach-cmp-diff']
        .map((id) => [id, document.getElementById(id)?.dataset.drawn === '1' ? 1 : 0]))));
  for (const [id, n] of Object.entries(data)) assert.ok(n > 0, `${id} has no data: ${JSON.stringify(data)}`);
}

/** Scrubs to step j, then clicks the first token revealed by then; returns what the page shows. */
async function scrubAndInspect(page, j) {
  await setControl(page, 'teach-scrubber', j);
  const label = await page.evaluate(() => document.getElementById('teach-scrub-label').textContent);
  const target = await page.evaluate((j) => {
    const r = window.disaTeach.a.result;
    const t = r.tokens.filter((t) => t.k < j).sort((a, b) => a.order - b.order)[0];
    return { position: t.position, k: t.k, grid: r.grid, variance: t.variance };
  }, j);
  await page.locator('#teach-tokens').scrollIntoViewIfNeeded();
  const box = await page.locator('#teach-tokens').boundingBox();
  const cell = box.width / target.grid;
  await page.mouse.click(box.x + (target.position % target.grid + 0.5) * cell,
    box.y + (Math.floor(target.position / target.grid) + 0.5) * cell);
  const facts = await page.evaluate(() => document.getElementById('teach-token-facts')?.textContent || '');
  return { label, target, facts };
}

test('CPU backend: analysis equals disa analyze; scrub, inspect, compare', { timeout: 900_000 }, async () => {
  const s = CPU_SETTINGS;
  const { context, page, logs } = await open({ webgpu: false, query: '?cpu=1' });
  try {
    await generateAndAnalyse(page, logs, s);
    const result = await page.evaluate(() => window.disaTeach.a.result);
    assert.equal(result.steps.length, s.arSteps);
    assert.ok(result.replayError <= 1e-5, `replay error ${result.replayError}`);
    // The analysis ran the last generation again: its final image is the page's.
    const same = await page.evaluate(() => {
      const c = document.getElementById('final-canvas');
      const shown = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const T = window.disaTeach.a;
      const mine = T.images[2 * T.result.steps.length];
      if (mine.width !== c.width || mine.height !== c.height) return `size ${mine.width}×${mine.height} vs ${c.width}×${c.height}`;
      let worst = 0;
      for (let i = 0; i < shown.length; i++) worst = Math.max(worst, Math.abs(shown[i] - mine.pixels[i]));
      return worst;
    });
    assert.ok(typeof same === 'number' && same <= 1, `the analysed generation is the page's: ${same}`);
    const cli = cliAnalysis(s, 'cpu');
    assertClose(result, cli, 'CPU backend', 1e-3);

    // Scrub to step 3: the image so far differs from the final one, the label says 3/K.
    const final = await page.evaluate(() => document.getElementById('teach-partial').toDataURL());
    const { label, target, facts } = await scrubAndInspect(page, 3);
    assert.match(label, new RegExp(`^3/${s.arSteps} steps`));
    const at3 = await page.evaluate(() => document.getElementById('teach-partial').toDataURL());
    assert.notEqual(at3, final, 'scrubbing changes the image so far');
    assert.match(facts, new RegExp(`AR step${target.k + 1} of ${s.arSteps}`));
    assert.ok(facts.includes('generation order1 of'), `the first token generated: ${facts}`);
    await assertPlotsHaveData(page);
    // The comparison ran the other schedule from the same seed.
    const cmp = await page.evaluate(() => ({ hidden: document.getElementById('teach-compare').hidden, b: window.disaTeach.b.result.schedule }));
    assert.equal(cmp.hidden, false);
    assert.match(cmp.b, /^constant:50/);
    const notes = await page.evaluate(() => ['variance', 'straightness', 'predict', 'compare']
      .map((n) => document.getElementById(`teach-note-${n}`).textContent));
    for (const n of notes) assert.ok(n.length > 40 && /\d/.test(n), `explanation quotes numbers: ${n}`);
    console.log(notes.join('\n'));
    await page.locator('#teach').screenshot({ path: path.join(SHOTS, 'teach-cpu.png') });
  } finally {
    await context.close();
  }
});

test('WebGPU backend: the analysis runs and matches disa analyze', { timeout: 900_000 }, async () => {
  const s = GPU_SETTINGS;
  const { context, page, logs } = await open({ webgpu: true });
  try {
    const backend = await page.evaluate(() => document.getElementById('backend').textContent);
    console.log(`backend: ${backend}`);
    await generateAndAnalyse(page, logs, s);
    const result = await page.evaluate(() => window.disaTeach.a.result);
    console.log(`WebGPU replay error ${result.replayError}`);
    // Other kernels (GPU reductions, fused head) round differently from the CPU: looser.
    assertClose(result, cliAnalysis(s, 'gpu'), 'WebGPU backend', 2e-2);
    await scrubAndInspect(page, 2);
    await assertPlotsHaveData(page);
    await page.locator('#teach').screenshot({ path: path.join(SHOTS, 'teach-webgpu.png') });
  } finally {
    await context.close();
  }
});

test('390 px phone: the view fits and works', { timeout: 900_000 }, async () => {
  const s = { ...CPU_SETTINGS, arSteps: 4, samples: 4 };
  const { context, page, logs } = await open({ webgpu: false, query: '?cpu=1', viewport: { width: 390, height: 844 } });
  try {
    await generateAndAnalyse(page, logs, s);
    await scrubAndInspect(page, 2);
    await assertPlotsHaveData(page);
    const overflow = await page.evaluate(() => {
      const card = document.getElementById('teach');
      const wide = [...card.querySelectorAll('*')].filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1);
      return { scroll: document.documentElement.scrollWidth, wide: wide.slice(0, 5).map((e) => e.id || e.className || e.tagName) };
    });
    assert.ok(overflow.scroll <= 391, `the page scrolls sideways: ${JSON.stringify(overflow)}`);
    assert.deepEqual(overflow.wide, [], 'nothing in the view is wider than the screen');
    await page.locator('#teach').screenshot({ path: path.join(SHOTS, 'teach-phone.png') });
  } finally {
    await context.close();
  }
});
