// End-to-end test of the browser demo, in Debian's Chromium driven by playwright-core.
// Expects `trunk build` output in ../../dist (scripts/e2e.sh builds it) and the native CLI
// at $DISA_BIN. Serves dist on 127.0.0.1, then: WebGPU run (SwiftShader), slider changes the
// steps used, image equals the native CLI's; CPU fallback with WebGPU unavailable; a corrupt
// weights file gives a message and the page keeps working. Saves screenshots; prints timings.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import { chromium } from 'playwright-core';
import { serve } from '../../scripts/serve.mjs';

const ROOT = path.resolve(import.meta.dirname, '../..');
const DIST = path.join(ROOT, 'dist');
const SHOTS = path.join(import.meta.dirname, 'screenshots');
const DISA_BIN = process.env.DISA_BIN;
const MODEL = path.join(ROOT, 'www/assets/model.safetensors');
const TIMEOUT = 240_000;
// Settings shared by the page and the native CLI. WebGPU runs on SwiftShader (a software
// rasterizer) here, where every kernel launch is slow: keep its runs short.
const SETTINGS = { classLabel: 3, seed: 7, arSteps: 8, start: 50, end: 5, cfg: 2.0 };
const GPU_SETTINGS = { classLabel: 3, seed: 7, arSteps: 4, start: 20, end: 5, cfg: 2.0 };

let server, baseUrl;

before(async () => {
  assert.ok(fs.existsSync(path.join(DIST, 'index.html')), 'dist/ is built (run scripts/e2e.sh)');
  assert.ok(DISA_BIN && fs.existsSync(DISA_BIN), 'DISA_BIN points at the native disa binary');
  fs.mkdirSync(SHOTS, { recursive: true });
  server = await serve(DIST, 0);
  baseUrl = `http://127.0.0.1:${server.address().port}/`;
});

after(() => server && server.close());

async function launch({ webgpu }) {
  const args = ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--disable-dev-shm-usage'];
  if (webgpu) args.push('--enable-unsafe-webgpu');
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'disa-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium', headless: true, args, viewport: { width: 1280, height: 800 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const logs = [];
  page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
  return { context, page, logs };
}

const state = (page) => page.evaluate(() => document.body.dataset.state);

async function waitState(page, wanted, logs) {
  try {
    await page.waitForFunction((w) => w.includes(document.body.dataset.state), wanted, { timeout: TIMEOUT, polling: 100 });
  } catch (e) {
    const err = await page.evaluate(() => document.getElementById('error')?.textContent);
    throw new Error(`page never reached ${wanted} (state ${await state(page)}, error "${err}")\n${logs.slice(-20).join('\n')}`);
  }
}

/** Sets a control's value the way a user would, firing input and change. */
async function setControl(page, id, value) {
  await page.evaluate(([id, value]) => {
    const el = document.getElementById(id);
    el.value = String(value);
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  }, [id, value]);
}

async function applySettings(page, s) {
  await setControl(page, 'auto-run', ''); // value is irrelevant for a checkbox; uncheck below
  await page.evaluate(() => { const a = document.getElementById('auto-run'); a.checked = false; a.dispatchEvent(new Event('change', { bubbles: true })); });
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
async function openPage({ webgpu }) {
  const { context, page, logs } = await launch({ webgpu });
  const t0 = Date.now();
  await page.goto(baseUrl);
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
  } finally {
    await context.close();
  }
});

test('CPU fallback when WebGPU is unavailable; a corrupt weights file gives a message', { timeout: 4 * TIMEOUT }, async () => {
  const { context, page, logs, loadMs, backend } = await openPage({ webgpu: false });
  try {
    assert.match(backend, /cpu/, `backend: ${backend}`);
    const notice = await page.evaluate(() => { const n = document.getElementById('notice'); return n.hidden ? '' : n.textContent; });
    assert.ok(notice.length > 0, 'a visible notice explains the CPU fallback');
    console.log(`CPU fallback notice: ${notice}`);
    await applySettings(page, SETTINGS);
    const run = await generate(page, logs);
    console.log(`CPU: page load → ready ${loadMs} ms, first image ${run.ms} ms`);
    checkProgressive(run, SETTINGS, await page.evaluate(() => window.disaModelInfo.seqLen), 'cpu');
    compareImages(run.pixels, nativeImage(SETTINGS, SETTINGS.end), 'cpu linear:50:5');
    await page.screenshot({ path: path.join(SHOTS, 'cpu-done.png') });

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

    // A/B: baseline and DiSA from the same seed, with the measured speed-up. Both baselines
    // (DiSA's clip, the default; and no clip, as the official code) match the CLI.
    const AB = { ...SETTINGS, seed: SETTINGS.seed + 1 }; // the seed set above
    for (const [baseline, clip] of [['clip', '950'], ['official', 'none']]) {
      await page.selectOption('#ab-baseline', baseline);
      await page.evaluate(() => { document.getElementById('speedup').textContent = '…'; });
      await page.click('#ab-run');
      await page.waitForFunction(() => /\d/.test(document.getElementById('speedup')?.textContent || ''), null, { timeout: TIMEOUT });
      console.log(`CPU A/B speed-up (baseline constant:${SETTINGS.start}, clip ${clip}, vs DiSA): ${await page.textContent('#speedup')}`);
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
    console.log(`corrupt file message: ${message}`);
    await page.screenshot({ path: path.join(SHOTS, 'corrupt-file.png') });
    await waitState(page, ['ready', 'done'], logs);
    const again = await generate(page, logs);
    assert.equal(again.steps.length, SETTINGS.arSteps, 'the page still generates with its old model');
  } finally {
    await context.close();
  }
});
