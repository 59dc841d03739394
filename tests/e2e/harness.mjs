// What the browser tests share: where things are, serving dist/, launching Debian's Chromium
// through playwright-core (never a downloaded browser), setting controls as a user would,
// waiting with a useful message, and reading a PNG file.
//   e2e.test.mjs, teach.test.mjs (node --test, run by scripts/e2e.sh); cancel-latency.mjs and
//   screens-before.mjs (measurements on any build of the page).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';
import { serve } from '../../scripts/serve.mjs';

export const ROOT = path.resolve(import.meta.dirname, '../..');
/** The built page; E2E_DIST: another build of it. */
export const DIST = process.env.E2E_DIST || path.join(ROOT, 'dist');
export const SHOTS = path.join(import.meta.dirname, 'screenshots');
export const DISA_BIN = process.env.DISA_BIN;
export const MODEL = path.join(ROOT, 'www/assets/model.safetensors');

/** Serves `dist` on 127.0.0.1 (a free port): `{server, baseUrl}`. */
export async function serveDist(dist = DIST) {
  if (!fs.existsSync(path.join(dist, 'index.html'))) throw new Error(`${dist}/index.html not found: build the page first (scripts/e2e.sh)`);
  fs.mkdirSync(SHOTS, { recursive: true });
  const server = await serve(dist, 0);
  return { server, baseUrl: `http://127.0.0.1:${server.address().port}/` };
}

/**
 * A fresh headless Chromium with its own profile: `{context, page, logs}` (`logs` collects the
 * page's console and errors). `webgpu`: WebGPU on (SwiftShader here); `options` go to
 * playwright's launchPersistentContext (viewport, deviceScaleFactor, isMobile…).
 */
export async function launchBrowser({ webgpu = false, ...options } = {}) {
  const args = ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--disable-dev-shm-usage'];
  if (webgpu) args.push('--enable-unsafe-webgpu');
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'disa-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium', headless: true, args, viewport: { width: 1280, height: 800 },
    acceptDownloads: true, ...options,
  });
  const page = context.pages()[0] || (await context.newPage());
  const logs = [];
  page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
  return { context, page, logs };
}

/** Sets a control's value (a checkbox's `checked`) the way a user would, firing input and change. */
export function setControl(page, id, value) {
  return page.evaluate(([id, value]) => {
    const el = document.getElementById(id);
    if (el.type === 'checkbox') el.checked = !!value;
    else el.value = String(value);
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  }, [id, value]);
}

/**
 * Waits until `fn(arg)` is true in the page; on a timeout the error says `what` was awaited,
 * the page's state and `#error`, and the last logs.
 */
export async function waitFor(page, fn, { arg = null, what = 'the page', logs = [], timeout = 240_000, polling = 100 } = {}) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling });
  } catch (e) {
    const seen = await page.evaluate(() => {
      const text = (id) => document.getElementById(id)?.textContent;
      return `state ${document.body.dataset.state}, error "${text('error')}", teaching view "${text('teach-status')}"`;
    }).catch(() => '');
    throw new Error(`timed out waiting for ${what} (${seen})\n${logs.slice(-20).join('\n')}`);
  }
}

/** Waits until body[data-state] is one of `wanted`. */
export function waitState(page, wanted, logs, timeout) {
  return waitFor(page, (w) => w.includes(document.body.dataset.state), { arg: wanted, what: `state ${wanted.join('|')}`, logs, timeout });
}

/** Opens a blank page of the served build's origin (its workers load as the page's do). */
export async function gotoBlank(page, baseUrl) {
  await page.route(`${baseUrl}__blank.html`, (r) => r.fulfill({ contentType: 'text/html', body: '<!doctype html><title>disa</title>' }));
  await page.goto(`${baseUrl}__blank.html`);
}

/**
 * Runs generations in fresh page workers (worker.js, as www/worker-protocol.md describes), from
 * a page of the build's origin (`gotoBlank`), with previews off: `o` = {backend: 'cpu'|'webgpu',
 * schedules, kernels, arSteps, cfg, repeats, warmup = 0, classLabel = 0, keepImages = false,
 * wasm = ['auto']} (`wasm`: the library builds to load, 'auto' as the page does, 'simd128' the
 * one without relaxed SIMD; www/worker.js).
 * Each row (wasm build × schedule × kernels) gets its own worker, so its first run is cold (wasm
 * compilation, shaders, first allocations: the page's first image); then `warmup` unreported
 * runs, then `repeats` runs. Seeds: 0 for the first run, then 1, 2, … for the repeats. Resolves
 * to {backend, model, rows: [{wasm, adapter, schedule, kernels, first, runs: [...]}]}, each run {wallMs,
 * samplingMs, headCalls, steps, previews, image?: {width, height, data}} (`image` with
 * `keepImages`; else the first 64 bytes as `head`).
 */
export async function workerRuns(page, o) {
  return page.evaluate(async (o) => {
    let backend = null, model = null;
    const rows = [];
    for (const wasm of o.wasm || ['auto']) for (const schedule of o.schedules) {
      for (const kernels of o.kernels) {
        const worker = new Worker(wasm === 'auto' ? './worker.js' : `./worker.js?wasm=${wasm}`, { type: 'module' });
        const inbox = [];
        let wake = () => {};
        worker.onmessage = ({ data }) => { inbox.push(data); wake(); };
        worker.onerror = (e) => { inbox.push({ type: 'error', where: 'worker', message: e.message }); wake(); };
        // The next message of one of `types`, counting the `step`s passed; an `error` throws.
        let steps = 0, previews = 0, transformerMs = 0, headMs = 0;
        const next = async (...types) => {
          for (;;) {
            while (inbox.length) {
              const m = inbox.shift();
              if (m.type === 'error') throw new Error(`worker error (${m.where}): ${m.message}`);
              if (m.type === 'step') {
                steps++;
                if (m.preview) previews++;
                transformerMs += m.event.transformerMs;
                headMs += m.event.headMs;
              }
              if (types.includes(m.type)) return m;
            }
            await new Promise((r) => { wake = r; });
          }
        };
        worker.postMessage({ type: 'init', weightsUrl: 'assets/model.safetensors', forceCpu: o.backend === 'cpu' });
        backend = (await next('backend')).info;
        model = (await next('model')).info;
        let runId = 0;
        const generate = async (seed) => {
          const request = { classLabel: o.classLabel ?? 0, seed, arSteps: o.arSteps, schedule, cfg: o.cfg,
            cfgSchedule: 'linear', temperature: 1, kernels, previews: false };
          steps = 0; previews = 0; transformerMs = 0; headMs = 0;
          const t0 = performance.now();
          worker.postMessage({ type: 'generate', runId: ++runId, request, lane: 'main' });
          const done = await next('done');
          const run = { wallMs: performance.now() - t0, samplingMs: done.samplingMs, headCalls: done.headCalls, steps, previews, transformerMs, headMs };
          if (done.image) {
            const { width, height, pixels } = done.image;
            if (o.keepImages) run.image = { width, height, data: Array.from(pixels) };
            else run.head = Array.from(pixels.slice(0, 64));
          }
          return run;
        };
        const first = await generate(0);
        for (let i = 0; i < (o.warmup ?? 0); i++) await generate(0);
        const runs = [];
        for (let rep = 1; rep <= o.repeats; rep++) runs.push(await generate(rep));
        worker.terminate();
        rows.push({ wasm, adapter: backend.adapter, schedule, kernels, first, runs });
      }
    }
    return { backend, model, rows };
  }, o);
}

export const median = (v) => [...v].sort((a, b) => a - b)[v.length >> 1];

/**
 * Decodes a PNG file (8-bit RGB or RGBA, not interlaced, as a canvas writes them) to
 * `{width, height, data}` with RGBA `data`; throws on anything else.
 */
export function decodePng(buf) {
  const SIGNATURE = '89504e470d0a1a0a';
  if (buf.subarray(0, 8).toString('hex') !== SIGNATURE) throw new Error('not a PNG file');
  let width = 0, height = 0, colorType = -1;
  const idat = [];
  for (let at = 8; at < buf.length;) {
    const len = buf.readUInt32BE(at);
    const type = buf.toString('latin1', at + 4, at + 8);
    const body = buf.subarray(at + 8, at + 8 + len);
    if (type === 'IHDR') {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      const [depth, ct, , , interlace] = body.subarray(8, 13);
      if (depth !== 8 || (ct !== 2 && ct !== 6) || interlace !== 0) throw new Error(`unsupported PNG: depth ${depth}, colour type ${ct}, interlace ${interlace}`);
      colorType = ct;
    } else if (type === 'IDAT') {
      idat.push(body);
    } else if (type === 'IEND') {
      break;
    }
    at += 12 + len;
  }
  const bpp = colorType === 6 ? 4 : 3;
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * bpp;
  const out = Buffer.alloc(width * height * 4);
  let prev = Buffer.alloc(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = Buffer.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? line[i - bpp] : 0;
      const b = prev[i];
      const c = i >= bpp ? prev[i - bpp] : 0;
      const p = a + b - c;
      const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
      const pred = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][filter];
      if (pred === undefined) throw new Error(`bad PNG filter ${filter}`);
      line[i] = (line[i] + pred) & 0xff;
    }
    for (let x = 0; x < width; x++) {
      for (let ch = 0; ch < 4; ch++) out[(y * width + x) * 4 + ch] = ch < bpp ? line[x * bpp + ch] : 255;
    }
    prev = line;
  }
  return { width, height, data: out };
}
