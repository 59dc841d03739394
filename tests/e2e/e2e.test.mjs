// End-to-end test of the browser demo, in Debian's Chromium driven by playwright-core.
// Expects `trunk build` output in ../../dist (scripts/e2e.sh builds it) and the native CLI
// at $DISA_BIN. Serves dist on 127.0.0.1, then: WebGPU run (SwiftShader), slider changes the
// steps used, image equals the native CLI's, how long a cancel takes, the one-click switch to
// the CPU on a software adapter; CPU fallback with WebGPU unavailable: Stop mid-run, an A/B
// interrupted by Generate, A/B rounds with a median; bad files, a loaded file's settings, a
// worker that dies mid-run; the 1280×800 and 390 px layouts. Saves screenshots (look at
// them); prints timings. Run a part: `node --test --test-name-pattern=layout e2e.test.mjs`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import { formatMs } from '../../www/format.js';
import {
  SHOTS, DISA_BIN, MODEL, serveDist, launchBrowser, setControl, waitState as waitStateFor, decodePng,
  gotoBlank, workerRuns,
} from './harness.mjs';

const TIMEOUT = 240_000;
// Settings shared by the page and the native CLI. WebGPU runs on SwiftShader (a software
// rasterizer) here, where every kernel launch is slow: keep its runs short.
const SETTINGS = { classLabel: 3, seed: 7, arSteps: 8, start: 50, end: 5, cfg: 2.0 };
const GPU_SETTINGS = { classLabel: 3, seed: 7, arSteps: 4, start: 20, end: 5, cfg: 2.0 };

let server, baseUrl;

before(async () => {
  assert.ok(DISA_BIN && fs.existsSync(DISA_BIN), 'DISA_BIN points at the native disa binary');
  ({ server, baseUrl } = await serveDist());
});

after(() => server && server.close());

const state = (page) => page.evaluate(() => document.body.dataset.state);
const waitState = (page, wanted, logs) => waitStateFor(page, wanted, logs, TIMEOUT);

async function applySettings(page, s) {
  await setControl(page, 'auto-run', false);
  await setControl(page, 'class', s.classLabel);
  await setControl(page, 'seed', s.seed);
  await setControl(page, 'ar-steps', s.arSteps);
  await setControl(page, 'cfg', s.cfg);
  await setControl(page, 'preset', 'linear');
  await setControl(page, 'start-steps', s.start);
  await setControl(page, 'end-steps', s.end);
}

/** Clicks Generate and waits for the run; returns its step events and the final pixels. */
async function generate(page, logs) {
  await page.evaluate(() => { window.disaEvents.length = 0; });
  const t0 = Date.now();
  await page.click('#generate');
  await waitState(page, ['done', 'error'], logs);
  const ms = Date.now() - t0;
  const events = await page.evaluate(() => window.disaEvents.filter((e) => e.type === 'step' || e.type === 'done' || e.type === 'error'));
  const errors = events.filter((e) => e.type === 'error');
  assert.equal(errors.length, 0, `generation errors: ${JSON.stringify(errors)}`);
  const pixels = await finalPixels(page);
  return { steps: events.filter((e) => e.type === 'step'), done: events.find((e) => e.type === 'done'), pixels, ms };
}

/** RGBA pixels of an image canvas (default: the final image), at the image's native size. */
function finalPixels(page, id = 'final-canvas') {
  return page.evaluate((id) => {
    const c = document.getElementById(id);
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
    return { width: c.width, height: c.height, data: Array.from(d.data) };
  }, id);
}

/** Opens the page in a fresh browser and waits until the model is ready. */
async function openPage({ webgpu, device = {}, query = '' }) {
  const { context, page, logs } = await launchBrowser({ webgpu, ...device });
  const t0 = Date.now();
  await page.goto(baseUrl + query);
  await waitState(page, ['ready'], logs);
  const loadMs = Date.now() - t0;
  const backend = (await page.textContent('#backend')).toLowerCase();
  return { context, page, logs, loadMs, backend };
}

/** The native CLI's image for the same settings, as RGB bytes (PPM). */
/** The CLI's image for the page's settings; `schedule` and `clip` default to linear START→end
 *  with the schedule's own clip. */
function nativeImage(s, end, { schedule = `linear:${s.start}:${end}`, clip = 'default' } = {}) {
  const out = path.join(os.tmpdir(), `disa-native-${process.pid}-${end}.ppm`);
  execFileSync(DISA_BIN, ['generate', '--weights', MODEL, '--class', String(s.classLabel), '--seed', String(s.seed),
    '--ar-steps', String(s.arSteps), '--schedule', schedule, '--clip', clip, '--cfg', String(s.cfg),
    '--out', out, '--quiet']);
  const buf = fs.readFileSync(out);
  const header = buf.toString('latin1', 0, 32).split('\n');
  const [w, h] = header[1].split(' ').map(Number);
  const offset = header[0].length + header[1].length + header[2].length + 3;
  return { width: w, height: h, rgb: buf.subarray(offset) };
}

function compareImages(page, native, label) {
  assert.equal(page.width, native.width, `${label}: width`);
  assert.equal(page.height, native.height, `${label}: height`);
  let maxDiff = 0, sum = 0;
  for (let i = 0, j = 0; j < native.rgb.length; i += 4, j += 3) {
    for (let c = 0; c < 3; c++) {
      const d = Math.abs(page.data[i + c] - native.rgb[j + c]);
      maxDiff = Math.max(maxDiff, d);
      sum += d;
    }
  }
  const mean = sum / native.rgb.length;
  console.log(`${label}: page vs native CLI, max |diff| ${maxDiff} levels, mean ${mean.toFixed(4)}`);
  // f32 on different backends: allow a few 8-bit levels where values sit on rounding edges.
  assert.ok(maxDiff <= 3 && mean <= 0.05, `${label}: image differs from the native CLI (max ${maxDiff}, mean ${mean})`);
}

const setAutoRun = (page, on) => setControl(page, 'auto-run', on);

const text = (page, id) => page.evaluate((id) => document.getElementById(id).textContent, id);
const events = (page, type) => page.evaluate((type) => window.disaEvents.filter((e) => e.type === type), type);

/** Waits until the newest run (of `lane`, if given) has logged `n` step events. */
async function waitForSteps(page, n, lane = null) {
  await page.waitForFunction(([n, lane]) => {
    const steps = window.disaEvents.filter((e) => e.type === 'step' && (!lane || e.lane === lane));
    const last = steps.at(-1);
    return !!last && steps.filter((e) => e.runId === last.runId).length >= n;
  }, [n, lane], { timeout: TIMEOUT, polling: 20 });
}

/** Settings slow enough on the CPU to act mid-run: K = 64, plain MAR at 200 steps. */
async function slowSettings(page) {
  await applySettings(page, { ...SETTINGS, arSteps: 64 });
  await setControl(page, 'preset', 'constant');
  await setControl(page, 'start-steps', 200);
}

function checkProgressive(run, s, seqLen, label) {
  assert.ok(run.steps.length >= s.arSteps, `${label}: ${run.steps.length} step events for K=${s.arSteps}`);
  const ks = run.steps.map((e) => e.event.k);
  assert.deepEqual(ks, [...Array(s.arSteps).keys()], `${label}: one event per AR step, in order`);
  let revealed = 0;
  const seen = new Set();
  for (const e of run.steps) {
    assert.ok(e.event.positions.length >= 1, `${label}: step ${e.event.k} revealed tokens`);
    for (const p of e.event.positions) { assert.ok(!seen.has(p), 'no token revealed twice'); seen.add(p); }
    revealed += e.event.positions.length;
    assert.ok(e.preview && e.preview.width > 0, `${label}: step ${e.event.k} carried a preview`);
  }
  assert.equal(revealed, seqLen, `${label}: the grid filled completely`);
}

test('latency formatting: seconds from 10 s on, never cut off', () => {
  assert.equal(formatMs(850.4), '850 ms');
  assert.equal(formatMs(9999), '9999 ms');
  assert.equal(formatMs(12_345), '12.3 s');
  assert.equal(formatMs(99_999), '100 s');
  assert.equal(formatMs(145_806), '146 s', 'the 145806 ms the issue saw cut off');
  assert.equal(formatMs(1_234_567), '21 min');
  assert.equal(formatMs(3 * 3_600_000), '3.0 h');
  assert.equal(formatMs(NaN), '–');
  for (const ms of [0, 1, 9_999, 10_000, 99_949, 99_951, 145_806, 999_499, 999_501, 5_939_999, 1e9]) {
    assert.ok(formatMs(ms).length <= 7, `${ms} ms → "${formatMs(ms)}" fits the counter`);
  }
});

test('WebGPU: generates progressively, the end-steps slider changes the steps, the image equals the CLI', { timeout: 4 * TIMEOUT }, async () => {
  const { context, page, logs, loadMs, backend } = await openPage({ webgpu: true });
  try {
    assert.match(backend, /webgpu/, `backend in use: ${backend}\n${logs.join('\n')}`);
    const model = await page.evaluate(() => window.disaEvents.find((e) => e.type === 'backend'));
    console.log(`backend: ${backend} (software: ${model?.info?.software})`);
    await applySettings(page, GPU_SETTINGS);
    const seqLen = await page.evaluate(() => window.disaModelInfo.seqLen);
    const first = await generate(page, logs);
    console.log(`WebGPU cold: page load → ready ${loadMs} ms, first image ${first.ms} ms (incl. shader compilation)`);
    await page.screenshot({ path: path.join(SHOTS, 'webgpu-done.png') });
    checkProgressive(first, GPU_SETTINGS, seqLen, 'webgpu');
    assert.equal(first.steps.at(-1).event.nominalSteps, GPU_SETTINGS.end, 'last AR step uses the end steps');
    compareImages(first.pixels, nativeImage(GPU_SETTINGS, GPU_SETTINGS.end), 'webgpu linear:20:5');

    // Moving the end-steps slider changes the steps used.
    await setControl(page, 'end-steps', 10);
    const second = await generate(page, logs);
    assert.equal(second.steps.at(-1).event.nominalSteps, 10, 'last AR step follows the slider');
    assert.ok(second.steps.at(-1).event.effectiveSteps !== first.steps.at(-1).event.effectiveSteps, 'steps used changed');
    const usedText = await page.textContent('#steps-used');
    assert.match(usedText, /10/, `#steps-used shows the new count: ${usedText}`);
    compareImages(second.pixels, nativeImage(GPU_SETTINGS, 10), 'webgpu linear:20:10');
    console.log(`WebGPU warm: one image ${second.ms} ms`);

    // Warm cache: reload, the weights come from the Cache API.
    const inCache = await page.evaluate(async () => {
      const cache = await caches.open('disa-models-v1');
      return (await cache.keys()).map((r) => r.url).filter((u) => u.endsWith('model.safetensors')).length;
    });
    assert.equal(inCache, 1, 'the default model is kept in the Cache API');
    const t1 = Date.now();
    await page.reload();
    // The second load reads the weights from the Cache API, not the network.
    await waitState(page, ['ready'], logs);
    console.log(`WebGPU warm cache: page load → ready ${Date.now() - t1} ms`);
    await applySettings(page, GPU_SETTINGS);
    const third = await generate(page, logs);
    console.log(`WebGPU warm cache: first image ${third.ms} ms`);

    // How long a cancel takes on WebGPU: Stop right after the first AR step's event; the worker
    // confirms once the run has really stopped. Before (a cancel waited for the AR step in
    // flight, as the page used to) and after (the step stops between diffusion steps).
    const cancelMs = {};
    for (const [label, on] of [['before', false], ['after', true]]) {
      await page.evaluate((on) => window.disaTest.setInterruptible(on), on);
      await page.evaluate(() => { window.disaEvents.length = 0; });
      await page.click('#generate');
      await waitForSteps(page, 1);
      await page.click('#stop');
      await page.waitForFunction(() => window.disaEvents.some((e) => e.type === 'stopped'), null, { timeout: TIMEOUT });
      const [stopped] = await events(page, 'stopped');
      const steps = await events(page, 'step');
      const stepMs = steps[0].event.transformerMs + steps[0].event.headMs;
      assert.match(await text(page, 'lane-label'), /stopped/i, 'the grid says the run stopped');
      assert.equal(await text(page, 'latency-note'), 'stopped');
      cancelMs[label] = stopped.cancelMs;
      console.log(`WebGPU cancel ${label}: the run stopped ${Math.round(stopped.cancelMs)} ms after Stop (AR step 1 took ${Math.round(stepMs)} ms)`);
    }
    assert.ok(cancelMs.after <= cancelMs.before * 1.2 + 250, `a cancel is not slower than before: ${JSON.stringify(cancelMs)}`);
    const restart = await measureRestart(page, GPU_SETTINGS);
    console.log(`WebGPU restart after a mid-run setting change: ${restart.restartMs} ms to the new run's first step ` +
      `(auto-run delay 350 ms; an undisturbed first step ${restart.firstStepMs} ms; so ≈${restart.waitMs} ms waiting for the cancelled step)`);

    // A software adapter: one click moves the page to the CPU backend, keeping the model and
    // the settings, and the notice then quotes both backends' measured speed.
    const software = await page.evaluate(() => window.disaEvents.findLast((e) => e.type === 'backend')?.info?.software);
    if (software) {
      assert.ok(await page.isVisible('#use-cpu'), 'a software adapter comes with a one-click CPU switch');
      await page.click('#use-cpu');
      await page.waitForFunction(() => /cpu/i.test(document.getElementById('backend').textContent), null, { timeout: TIMEOUT });
      await waitState(page, ['ready', 'done'], logs);
      assert.equal(await page.inputValue('#ar-steps'), String(GPU_SETTINGS.arSteps), 'the settings survive the switch');
      const onCpu = await generate(page, logs);
      compareImages(onCpu.pixels, nativeImage(GPU_SETTINGS, GPU_SETTINGS.end), 'after switching to the CPU');
      const notice = await text(page, 'notice');
      assert.match(notice, /Measured here: .*faster/, `the notice compares both backends: ${notice}`);
      console.log(`software adapter → CPU: ${notice}`);
      await page.screenshot({ path: path.join(SHOTS, 'webgpu-software-to-cpu.png') });
    }
  } finally {
    await context.close();
  }
});

/**
 * Restart latency, observable on any version of the page: with auto-run on, a setting changed
 * right after a run's first AR step → the new run's first step event. Compared with an
 * undisturbed first step, the difference is the wait for the cancelled run's step in flight.
 */
async function measureRestart(page, s) {
  await applySettings(page, s);
  await page.evaluate(() => { window.disaEvents.length = 0; });
  let t0 = Date.now();
  await page.click('#generate');
  await waitForSteps(page, 1);
  const firstStepMs = Date.now() - t0;
  await waitState(page, ['done'], []);
  await setAutoRun(page, true);
  await page.evaluate(() => { window.disaEvents.length = 0; });
  await page.click('#generate');
  await waitForSteps(page, 1);
  const oldRun = (await events(page, 'step'))[0].runId;
  t0 = Date.now();
  await setControl(page, 'seed', s.seed + 100);
  await page.waitForFunction((old) => window.disaEvents.some((e) => e.type === 'step' && e.runId !== old), oldRun, { timeout: TIMEOUT, polling: 20 });
  const restartMs = Date.now() - t0;
  await waitState(page, ['done'], []);
  await setAutoRun(page, false);
  await setControl(page, 'seed', s.seed);
  return { restartMs, firstStepMs, waitMs: Math.max(0, restartMs - 350 - firstStepMs) };
}

test('CPU fallback when WebGPU is unavailable; a corrupt weights file gives a message', { timeout: 4 * TIMEOUT }, async () => {
  const { context, page, logs, loadMs, backend } = await openPage({ webgpu: false });
  try {
    assert.match(backend, /cpu/, `backend: ${backend}`);
    const notice = await page.evaluate(() => { const n = document.getElementById('notice'); return n.hidden ? '' : n.textContent; });
    assert.ok(notice.length > 0, 'a visible notice explains the CPU fallback');
    assert.match(notice, /WebGPU is not available in this browser/, 'the notice says what happened in words');
    assert.match(notice, /How to enable WebGPU/, 'and what the reader can do');
    assert.doesNotMatch(notice.split('Technical detail')[0], /WgpuDevice|\{ kind|not requested/, 'no Rust debug text outside the detail');
    console.log(`CPU fallback notice: ${notice}`);
    await applySettings(page, SETTINGS);
    const run = await generate(page, logs);
    console.log(`CPU: page load → ready ${loadMs} ms, first image ${run.ms} ms`);
    checkProgressive(run, SETTINGS, await page.evaluate(() => window.disaModelInfo.seqLen), 'cpu');
    compareImages(run.pixels, nativeImage(SETTINGS, SETTINGS.end), 'cpu linear:50:5');
    await page.screenshot({ path: path.join(SHOTS, 'cpu-done.png') });

    // "save PNG" downloads the image shown, as a PNG file.
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: TIMEOUT }), page.click('#save-png')]);
    const saved = decodePng(fs.readFileSync(await download.path()));
    assert.match(download.suggestedFilename(), /^disa-class3-seed7\.png$/, download.suggestedFilename());
    assert.deepEqual([saved.width, saved.height], [run.pixels.width, run.pixels.height], 'the PNG has the image\'s size');
    assert.deepEqual([...saved.data], run.pixels.data, 'the PNG holds the pixels shown');
    assert.ok(new Set(run.pixels.data.filter((_, i) => i % 4 === 0)).size > 8, 'and they are not blank');
    console.log(`save PNG: ${download.suggestedFilename()}, ${saved.width}×${saved.height}, equal to the canvas`);

    // The plan under the plot is the library's: the run's head calls and token·steps equal it.
    const totals = await text(page, 'plan-totals');
    assert.match(totals, new RegExp(`^Plan: ${run.done.headCalls} head calls · ${run.done.tokenSteps} token·steps\\. Plain MAR at ${SETTINGS.start} steps, no clip: ${SETTINGS.arSteps * SETTINGS.start} · `), totals);
    assert.equal(await text(page, 'head-calls-plan'), `of ${run.done.headCalls}`);

    // The plot shows the library's plan for every AR step (the cosine schedule the page once
    // computed itself): its hover readout equals `disa schedule` row by row.
    await setControl(page, 'preset', 'cosine');
    const cli = execFileSync(DISA_BIN, ['schedule', '--tokens', String(await page.evaluate(() => window.disaModelInfo.seqLen)),
      '--ar-steps', String(SETTINGS.arSteps), '--schedule', `cosine:${SETTINGS.start}:${SETTINGS.end}`, '--cfg', String(SETTINGS.cfg)], { encoding: 'utf8' });
    const rows = cli.split('\n').map((l) => l.trim().split(/\s+/)).filter((c) => c.length === 6 && /^\d+$/.test(c[0]));
    assert.equal(rows.length, SETTINGS.arSteps, cli);
    const box = await page.locator('#schedule-plot').boundingBox();
    for (const [k, tokens, , nominal, effective, cfg] of rows) {
      // The plot's AR step k sits at the middle of its column (padding 30 px left, 26 px right).
      await page.mouse.move(box.x + 30 + ((+k + 0.5) * (box.width - 56)) / SETTINGS.arSteps, box.y + box.height / 2);
      const head = `AR step ${+k + 1}/${SETTINGS.arSteps}: `;
      await page.waitForFunction((h) => { const t = document.getElementById('plot-readout').textContent; return t.startsWith(h) && t.includes(' run)'); },
        head, { timeout: 10_000 }).catch(async () => assert.fail(`plot readout "${await text(page, 'plot-readout')}" for AR step ${k}`));
      const shown = await text(page, 'plot-readout');
      const m = shown.slice(head.length).match(/^(\d+) tokens? · (\d+) steps \((\d+) run\) · cfg ([\d.]+)$/);
      assert.ok(m, shown);
      assert.deepEqual(m.slice(1, 4), [tokens, nominal, effective], `AR step ${k}: page "${shown}", disa schedule ${tokens} ${nominal} ${effective}`);
      assert.ok(Math.abs(+m[4] - +cfg) <= 0.006, `AR step ${k}: cfg ${m[4]} vs ${cfg}`);
    }
    console.log(`the plot's cosine:${SETTINGS.start}:${SETTINGS.end} equals disa schedule on all ${rows.length} AR steps`);
    await page.mouse.move(0, 0);

    // Warm cache: the model now comes from the Cache API.
    const t1 = Date.now();
    await page.reload();
    await waitState(page, ['ready'], logs);
    const warmLoadMs = Date.now() - t1;
    await applySettings(page, SETTINGS);
    const warm = await generate(page, logs);
    console.log(`CPU warm cache: page load → ready ${warmLoadMs} ms, first image ${warm.ms} ms`);

    // Changing a setting mid-run cancels the stale run: with auto-run on, a new seed while
    // the old run is going must end in exactly the new seed's image.
    await page.evaluate(() => { const a = document.getElementById('auto-run'); a.checked = true; a.dispatchEvent(new Event('change', { bubbles: true })); window.disaEvents.length = 0; });
    await page.click('#generate');
    await page.waitForFunction(() => window.disaEvents.some((e) => e.type === 'step'), null, { timeout: TIMEOUT });
    await setControl(page, 'seed', SETTINGS.seed + 1);
    await page.waitForFunction(() => {
      const runs = new Set(window.disaEvents.filter((e) => e.type === 'step').map((e) => e.runId));
      return runs.size >= 2 && document.body.dataset.state === 'done';
    }, null, { timeout: TIMEOUT });
    const restarted = await finalPixels(page);
    compareImages(restarted, nativeImage({ ...SETTINGS, seed: SETTINGS.seed + 1 }, SETTINGS.end), 'cpu after a mid-run seed change');
    const errors = await page.evaluate(() => window.disaEvents.filter((e) => e.type === 'error'));
    assert.deepEqual(errors, [], 'no errors from the cancelled run');
    await page.evaluate(() => { const a = document.getElementById('auto-run'); a.checked = false; a.dispatchEvent(new Event('change', { bubbles: true })); });
    const restart = await measureRestart(page, SETTINGS);
    console.log(`CPU restart after a mid-run setting change: ${restart.restartMs} ms to the new run's first step (undisturbed first step ${restart.firstStepMs} ms)`);

    // Stop mid-run: the grid says it stopped, the latency freezes and says so, no cell stays
    // highlighted, and the worker confirms.
    await slowSettings(page);
    await page.evaluate(() => { window.disaEvents.length = 0; });
    await page.click('#generate');
    await waitForSteps(page, 2);
    await page.click('#stop');
    assert.match(await text(page, 'lane-label'), /^Stopped at AR step \d+\/64/, 'the grid caption says the run stopped');
    await page.waitForFunction(() => document.getElementById('latency-note').textContent === 'stopped', null, { timeout: TIMEOUT });
    const frozen = await text(page, 'latency');
    await page.waitForTimeout(700);
    assert.equal(await text(page, 'latency'), frozen, 'the latency stops counting');
    const vis = await page.evaluate(() => window.disaTest.vis());
    assert.equal(vis.highlighted, 0, 'no token stays highlighted');
    assert.equal(vis.stopped, 'stop');
    assert.equal(await state(page), 'ready');
    assert.ok(await page.isHidden('#stop'), 'Stop is gone');
    const [stopEvent] = await events(page, 'stopped');
    console.log(`CPU stop: "${await text(page, 'lane-label')}", latency ${frozen}, the worker stopped ${Math.round(stopEvent.cancelMs)} ms after Stop`);
    await page.screenshot({ path: path.join(SHOTS, 'cpu-stopped.png') });

    // An A/B pair interrupted by Generate: the card clears instead of staying "running…".
    await page.selectOption('#ab-rounds', '1');
    await page.click('#ab-run');
    await waitForSteps(page, 1, 'baseline');
    await page.click('#generate');
    await waitState(page, ['done'], logs);
    const abText = `${await text(page, 'ab-baseline-meta')} ${await text(page, 'ab-disa-meta')}`;
    assert.doesNotMatch(abText, /running|waiting/, `the A/B card cleared: ${abText}`);
    assert.match(await text(page, 'ab-status'), /interrupted/);
    assert.equal(await text(page, 'speedup'), '–');
    assert.ok(!(await page.evaluate(() => document.getElementById('ab-card').classList.contains('running'))));

    // A/B: baseline and DiSA from the same seed, with the measured speed-up (median of the
    // rounds). Both baselines (DiSA's clip, the default; and no clip, as the official code)
    // match the CLI; the official one says on the card how it differs (t = 999).
    const AB = { ...SETTINGS, seed: SETTINGS.seed + 1 };
    await applySettings(page, AB);
    for (const [baseline, clip, rounds] of [['clip', '950', '3'], ['official', 'none', '1']]) {
      await page.selectOption('#ab-baseline', baseline);
      await page.selectOption('#ab-rounds', rounds);
      await page.click('#ab-run');
      await waitState(page, ['done'], logs);
      assert.match(await text(page, 'speedup'), /\d/);
      const spread = await text(page, 'speedup-spread');
      if (rounds === '3') assert.match(spread, /median of 3 · \d/, `the spread of 3 rounds: ${spread}`);
      if (baseline === 'official') {
        assert.match(await text(page, 'ab-official-note'), /t = 999.*built-in model was trained for t = 999/, 'the card says how the official baseline differs');
        assert.ok(await page.isVisible('#ab-official-note'));
      }
      const explained = await text(page, 'explain-measured');
      assert.match(explained, /Measured here just now: \d/);
      assert.match(await text(page, 'head-speedup'), /\d/, 'the head alone has its own speed-up');
      // Where the total gains less than the head calls fall, the card says why, in figures.
      if (/gains less/.test(explained)) assert.match(explained, /head alone ran \d.*transformer took \d.*and \d/);
      console.log(`CPU A/B (baseline constant:${SETTINGS.start}, clip ${clip}, ${rounds} round(s)): speed-up ${await text(page, 'speedup')} ${spread}, head calls ${await text(page, 'head-call-ratio')}, head alone ${await text(page, 'head-speedup')}`);
      await page.screenshot({ path: path.join(SHOTS, `cpu-ab-${baseline}.png`) });
      compareImages(await finalPixels(page, 'ab-baseline-canvas'),
        nativeImage(AB, AB.end, { schedule: `constant:${AB.start}`, clip }), `A/B baseline (${baseline})`);
      compareImages(await finalPixels(page, 'ab-disa-canvas'), nativeImage(AB, AB.end), `A/B DiSA (${baseline})`);
    }

    // A corrupt weights file: a clear message, and the old model keeps working.
    const good = fs.readFileSync(MODEL);
    const corrupt = Buffer.from(good.subarray(0, Math.floor(good.length / 3)));
    await page.setInputFiles('#file-input', { name: 'corrupt.safetensors', mimeType: 'application/octet-stream', buffer: corrupt });
    await page.waitForFunction(() => !document.getElementById('error-wrap').hidden, null, { timeout: TIMEOUT });
    const message = await page.textContent('#error');
    assert.match(message, /weights/i, `error message: ${message}`);
    assert.match(message, /Still using/, 'the message says the old model stays');
    console.log(`corrupt file message: ${message}`);
    await page.screenshot({ path: path.join(SHOTS, 'corrupt-file.png') });
    await waitState(page, ['ready', 'done'], logs);
    const again = await generate(page, logs);
    assert.equal(again.steps.length, SETTINGS.arSteps, 'the page still generates with its old model');
  } finally {
    await context.close();
  }
});

/** A copy of a disa model file whose `config` metadata is edited by `edit` (tensors unchanged). */
const withConfig = (file, edit) => withMetadata(file, 'config', edit);

/** A copy of a disa model file whose JSON metadata entry `key` is edited by `edit`. */
function withMetadata(file, key, edit) {
  const n = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.toString('utf8', 8, 8 + n));
  const value = JSON.parse(header.__metadata__[key]);
  edit(value);
  header.__metadata__[key] = JSON.stringify(value);
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, file.subarray(8 + n)]);
}

test('bench mode (previews off, as bench-page.mjs runs it): one decode at the end, the same image as the CLI', { timeout: 2 * TIMEOUT }, async () => {
  const { context, page, logs } = await launchBrowser({ webgpu: false });
  try {
    await gotoBlank(page, baseUrl);
    const s = { ...SETTINGS, arSteps: 4 };
    // Both library builds (www/worker.js): Chromium has relaxed SIMD, so `auto` loads
    // disa-relaxed.js; `simd128` the build for browsers without it.
    const result = await workerRuns(page, { backend: 'cpu', schedules: [`linear:${s.start}:${s.end}`], kernels: ['tensor'],
      arSteps: s.arSteps, cfg: s.cfg, repeats: 1, classLabel: s.classLabel, keepImages: true, wasm: ['auto', 'simd128'] });
    assert.deepEqual(result.rows.map((r) => r.adapter),
      ['CPU (Burn flex, WebAssembly relaxed SIMD)', 'CPU (Burn flex, WebAssembly SIMD)'], 'each build ran, named by its adapter');
    const runs = result.rows.flatMap((row) => [row.first, ...row.runs]);
    for (const run of runs) {
      assert.equal(run.steps, s.arSteps, 'a step event per AR step');
      assert.equal(run.previews, 1, 'one preview, the last step\'s: none is decoded during the run');
      assert.ok(run.image && run.samplingMs > 0 && run.wallMs >= run.samplingMs, `done carries the image and the timings: ${JSON.stringify({ ...run, image: !!run.image })}`);
    }
    // Seeds 0 (the first run) and 1 (the repeat): each equals the CLI's image for that seed.
    for (const row of result.rows) {
      for (const [seed, run] of [row.first, ...row.runs].entries()) {
        compareImages(run.image, nativeImage({ ...s, seed }, s.end), `bench mode (${row.adapter}) seed ${seed}`);
      }
    }
    console.log(`bench mode: ${runs.map((r) => `${r.samplingMs.toFixed(0)} ms sampling, ${r.wallMs.toFixed(0)} ms wall`).join('; ')}`);
    // Where disa-relaxed.js cannot be fetched, the worker falls back to the SIMD build.
    await context.route('**/disa-relaxed.js', (route) => route.abort());
    const fallback = await workerRuns(page, { backend: 'cpu', schedules: [`linear:${s.start}:${s.end}`], kernels: ['tensor'],
      arSteps: s.arSteps, cfg: s.cfg, repeats: 0, classLabel: s.classLabel, keepImages: true });
    assert.equal(fallback.rows[0].adapter, 'CPU (Burn flex, WebAssembly SIMD)', 'no relaxed build: the SIMD build serves');
    compareImages(fallback.rows[0].first.image, nativeImage({ ...s, seed: 0 }, s.end), 'bench mode, relaxed build blocked, seed 0');
  } catch (e) {
    console.log(logs.slice(-20).join('\n'));
    throw e;
  } finally {
    await context.close();
  }
});

test('the library refuses a misspelt or missing request field and a sample count a JS number would wrap', { timeout: TIMEOUT }, async () => {
  const { context, page } = await launchBrowser({ webgpu: false });
  try {
    await gotoBlank(page, baseUrl);
    const answers = await page.evaluate(async () => {
      const lib = await import('./disa.js');
      await lib.default();
      const session = new lib.Session();
      await session.initBackend(true);
      const bytes = new Uint8Array(await (await fetch('assets/model.safetensors')).arrayBuffer());
      session.loadModel('model.safetensors', bytes);
      const base = { classLabel: 0, seed: 0, arSteps: 4, schedule: 'linear:8:2', cfg: 2, cfgSchedule: 'linear', temperature: 1 };
      const attempt = (f) => { try { f(); return 'accepted'; } catch (e) { return String(e && e.message || e); } };
      const unlabelled = { ...base };
      delete unlabelled.classLabel;
      return {
        valid: attempt(() => session.plan(base)),
        unconditional: attempt(() => session.plan({ ...base, classLabel: null })),
        misspelt: attempt(() => session.plan({ ...base, kernel: 'tensor' })),
        missing: attempt(() => session.startGeneration(unlabelled)),
        wrapped: attempt(() => session.teachStart(base, 2 ** 32 + 3)),
        fractional: attempt(() => session.teachStart(base, 2.5)),
      };
    });
    assert.equal(answers.valid, 'accepted');
    assert.equal(answers.unconditional, 'accepted', 'null asks for an unconditional image');
    assert.match(answers.misspelt, /unknown field `kernel`/);
    assert.match(answers.missing, /missing field `classLabel`/);
    assert.match(answers.wrapped, /too many|at most/);
    assert.match(answers.fractional, /whole number/);
  } finally {
    await context.close();
  }
});

test('a file picked while the built-in model still downloads is the model the page ends with', { timeout: TIMEOUT }, async () => {
  const { context, page, logs } = await launchBrowser({ webgpu: false });
  try {
    // The built-in model's download takes 4 s; the user's file arrives during it.
    await page.route('**/assets/model.safetensors', async (route) => {
      await new Promise((resolve) => setTimeout(resolve, 4000));
      await route.continue();
    });
    const mine = withMetadata(fs.readFileSync(MODEL), 'info', (info) => { info.name = 'My own model'; });
    await page.goto(baseUrl);
    await page.waitForSelector('#file-input', { state: 'attached' });
    await page.setInputFiles('#file-input', { name: 'mine.safetensors', mimeType: 'application/octet-stream', buffer: mine });
    await waitState(page, ['ready'], logs);
    // Past the download's end: the built-in model must not replace the user's.
    await page.waitForTimeout(5000);
    assert.match(await text(page, 'model-info'), /^My own model/);
  } finally {
    await context.close();
  }
});

test('files and crashes: foreign, truncated, empty files; a loaded file\'s settings; a worker that dies mid-run', { timeout: 4 * TIMEOUT }, async () => {
  const { context, page, logs } = await openPage({ webgpu: false });
  try {
    const good = fs.readFileSync(MODEL);
    const png = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(4000, 7)]);
    // A config that would need far more memory than a page gets (64 Ki wide layers).
    const huge = withConfig(good, (c) => Object.assign(c, { encoder_embed_dim: 65536, decoder_embed_dim: 65536, diffloss_w: 65536, mlp_ratio: 64 }));
    for (const [name, bytes] of [['photo.png', png], ['cut.safetensors', good.subarray(0, 1000)], ['empty.safetensors', Buffer.alloc(0)],
      ['huge-config.safetensors', huge]]) {
      await page.evaluate(() => { document.getElementById('error-wrap').hidden = true; });
      await page.setInputFiles('#file-input', { name, mimeType: 'application/octet-stream', buffer: Buffer.from(bytes) });
      await page.waitForFunction(() => !document.getElementById('error-wrap').hidden, null, { timeout: TIMEOUT });
      await waitState(page, ['ready', 'done'], logs);
      const shown = await page.evaluate(() => document.getElementById('error').firstChild.textContent);
      assert.match(shown, new RegExp(`Could not load the weights in “${name.replace('.', '\\.')}”: .+ Still using “`), `${name}: ${shown}`);
      assert.doesNotMatch(shown, /panicked|RuntimeError|unreachable|\{ /, `${name}: a message for people: ${shown}`);
      console.log(`${name}: ${shown}`);
    }

    // Loading a file applies its defaults: the page says so and offers the user's settings back.
    await applySettings(page, SETTINGS);
    await setControl(page, 'temperature', 0.9);
    await page.setInputFiles('#file-input', { name: 'mine.safetensors', mimeType: 'application/octet-stream', buffer: good });
    await page.waitForFunction(() => !document.getElementById('info').hidden, null, { timeout: TIMEOUT });
    const info = await text(page, 'info-text');
    assert.match(info, /Loaded “.*”: the settings are now its own defaults/, info);
    console.log(`after loading a file: ${info}`);
    await page.click('#info-action');
    assert.equal(await page.inputValue('#ar-steps'), String(SETTINGS.arSteps), 'K is back');
    assert.equal(await page.inputValue('#temperature'), '0.9', 'the temperature is back');

    // The worker dies mid-run: a message, a fresh worker with the same model, the settings kept.
    await slowSettings(page);
    await page.evaluate(() => { window.disaEvents.length = 0; });
    await page.click('#generate');
    await waitForSteps(page, 1);
    await page.evaluate(() => window.disaTest.crashWorker());
    await page.waitForFunction(() => /restarted/.test(document.getElementById('error').textContent), null, { timeout: TIMEOUT });
    await waitState(page, ['ready'], logs);
    const crash = await page.evaluate(() => document.getElementById('error').firstChild.textContent);
    console.log(`worker crash: ${crash}`);
    assert.match(crash, /The model worker stopped during a run\. It was restarted with “.+”; your settings are kept\./);
    assert.equal(await page.inputValue('#ar-steps'), '64', 'the settings survive the restart');
    await page.screenshot({ path: path.join(SHOTS, 'cpu-worker-restarted.png') });
    await applySettings(page, SETTINGS);
    await setControl(page, 'temperature', 1); // the value restored above was 0.9
    const after = await generate(page, logs);
    compareImages(after.pixels, nativeImage(SETTINGS, SETTINGS.end), 'after a worker restart');
  } finally {
    await context.close();
  }
});

/** Elements wider than the viewport, or reaching past its right edge. */
function overflowing(page) {
  return page.evaluate(() => {
    const w = document.documentElement.clientWidth;
    const out = [];
    for (const el of document.querySelectorAll('body *')) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && r.right > w + 1 && getComputedStyle(el).position !== 'fixed') out.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} right ${Math.round(r.right)}`);
    }
    return { scrollWidth: document.documentElement.scrollWidth, width: w, out: out.slice(0, 10) };
  });
}

/** Hovers the middle of the schedule plot; returns the readout and whether it is cut off. */
async function hoverPlot(page) {
  const box = await page.locator('#schedule-plot').boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  return page.evaluate(() => {
    const el = document.getElementById('plot-readout');
    return { text: el.textContent, cut: el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1 };
  });
}

test('layout: nothing hidden at 1280×800; a 390 px phone has no horizontal overflow and shows the grid with Generate', { timeout: 4 * TIMEOUT }, async () => {
  {
    const { context, page, logs } = await openPage({ webgpu: false });
    try {
      await applySettings(page, SETTINGS);
      await generate(page, logs);
      const scrolled = await page.evaluate(() => [...document.querySelectorAll('body *')]
        .filter((el) => /auto|scroll/.test(getComputedStyle(el).overflowY) && el.scrollHeight > el.clientHeight + 1)
        .map((el) => `${el.tagName}#${el.id}.${el.className}`));
      assert.deepEqual(scrolled, [], 'no card scrolls inside (nothing hidden below a card\'s fold)');
      for (const sel of ['label[for=file-input]', '#generate', '#ab-run', '#schedule-plot', '#explain .claim']) {
        const box = await page.locator(sel).boundingBox();
        assert.ok(box && box.y >= 0 && box.y + Math.min(box.height, 40) <= 800, `${sel} is in the first screen (${JSON.stringify(box)})`);
      }
      const readout = await hoverPlot(page);
      assert.match(readout.text, /^AR step \d+\/8: .* cfg \d\.\d\d$/, readout.text);
      assert.ok(!readout.cut, `the plot's hover text is whole: ${readout.text}`);
      // A long run's latency in seconds, whole in its counter.
      const latency = await page.evaluate(() => {
        const el = document.getElementById('latency');
        el.textContent = window.disaTest.formatMs(145_806);
        return { text: el.textContent, cut: el.scrollWidth > el.clientWidth + 1 };
      });
      assert.deepEqual(latency, { text: '146 s', cut: false });
      const o = await overflowing(page);
      assert.ok(o.scrollWidth <= o.width, `desktop overflow: ${JSON.stringify(o)}`);
      await page.mouse.move(0, 0);
      await page.screenshot({ path: path.join(SHOTS, 'desktop-1280x800.png') });
      await page.screenshot({ path: path.join(SHOTS, 'desktop-full.png'), fullPage: true });
    } finally {
      await context.close();
    }
  }
  const phone = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };
  const { context, page, logs } = await openPage({ webgpu: false, device: phone });
  try {
    await applySettings(page, SETTINGS);
    await setControl(page, 'preset', 'custom'); // the custom schedule once widened the page to 665 px
    const readout = await hoverPlot(page);
    assert.ok(!readout.cut, `phone: the plot's hover text is whole: ${readout.text}`);
    await page.evaluate(() => window.scrollTo(0, 0));
    // The grid and Generate together on the first screen.
    const seen = await page.evaluate(() => {
      const g = document.getElementById('generate').getBoundingClientRect();
      const s = document.getElementById('stage-overlay').getBoundingClientRect();
      const bar = document.getElementById('generate').parentElement.getBoundingClientRect();
      const visible = Math.max(0, Math.min(s.bottom, bar.top) - Math.max(s.top, 0)) / s.height;
      return { generate: [g.top, g.bottom], grid: [s.top, s.bottom], barTop: bar.top, visible, h: innerHeight };
    });
    assert.ok(seen.generate[0] >= 0 && seen.generate[1] <= seen.h, `Generate on screen: ${JSON.stringify(seen)}`);
    assert.ok(seen.visible >= 0.8, `phone: the grid is on screen with Generate: ${JSON.stringify(seen)}`);
    await page.click('#generate');
    await waitState(page, ['done'], logs);
    const o = await overflowing(page);
    assert.ok(o.scrollWidth <= o.width && o.out.length === 0, `phone overflow: ${JSON.stringify(o)}`);
    await page.screenshot({ path: path.join(SHOTS, 'phone-390.png') });
    await page.screenshot({ path: path.join(SHOTS, 'phone-390-full.png'), fullPage: true });
    console.log(`phone 390 px: page width ${o.scrollWidth} px; grid ${Math.round(seen.grid[0])}–${Math.round(seen.grid[1])} px, Generate ${Math.round(seen.generate[0])} px, ${Math.round(seen.visible * 100)}% of the grid on screen`);
  } finally {
    await context.close();
  }
});
