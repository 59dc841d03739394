// DiSA demo page: controls, the live schedule plot, the token-grid visualization and A/B runs.
// All model work happens in worker.js; the messages are documented in worker-protocol.md.

import { formatMs, formatRatio, median } from './format.js';

const $ = (id) => document.getElementById(id);
const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
const MIN_STEPS = 2;
const MAX_STEPS = 1000;
const AUTO_RUN_DELAY_MS = 350; // wait for sliders to settle before restarting a run
const PLAN_DELAY_MS = 30; // coalesce plan requests while a slider moves

// The end-to-end test reads every accepted step/done/error/backend message from here.
window.disaEvents = [];
const MAX_EVENTS = 5000;

const params = new URLSearchParams(location.search);
const forceCpu = params.has('cpu') || params.get('backend') === 'cpu';
const DEFAULT_WEIGHTS = 'assets/model.safetensors';
const MAX_RESTARTS_PER_MINUTE = 3; // a worker that keeps crashing is not restarted again

const ui = {
  state: 'loading',
  model: null, // the worker's model info
  loading: true, // weights being fetched or loaded
  recovering: false, // after a device loss, until a backend/model message
  hasRun: false, // auto-run only restarts once the user has generated something
  lastMode: 'single', // 'single' | 'ab': what auto-run restarts
  nextRunId: 1,
  run: null, // { runId, lane, request, t0 } of the run that is current
  ab: null, // { request, base, results } while an A/B comparison runs
  vis: null, // what the token-grid views show (see resetVis)
  preset: 'linear',
  custom: null, // per-AR-step counts when the preset is custom
  plan: null, // { key, plan } last plan from the worker
  planSeq: 0,
  planKeys: new Map(), // plan id -> key of the request it answers
  pendingPlans: 0,
  plot: { yMax: 60, drag: false, lastK: -1, hover: -1, focus: 0 },
  autoTimer: 0,
  planTimer: 0,
  ticker: 0,
  replayTimer: 0,
  cancelled: new Map(), // runId -> performance.now() of its cancel, until the worker confirms
  backendInfo: null, // the last `backend` message's info
  speed: {}, // backend label -> ms per head call of its last finished run (the CPU offer)
  modelFile: null, // the File of the user's model in use (reloaded if the worker restarts)
  pendingFile: null, // the File being loaded
  crashes: [], // times of worker crashes in the last minute
  settingsBeforeFile: null, // the user's settings before a loaded file applied its defaults
};
const MAX_REPLAY_BYTES = 96e6; // keep previews for the replay only while they stay this small

// ───────────────────────── schedule arithmetic (mirrors src/schedule.rs) ─────────────────────────

/** Nominal diffusion steps at AR step k of K for a {kind,start,end,custom} schedule. */
function stepsAt(s, k, K) {
  const upper = K - 1;
  const index = (len, f) => Math.trunc(f * (len - 1));
  switch (s.kind) {
    case 'constant':
      return s.start;
    case 'linear': {
      const f = K === 1 ? 1 : (upper - k) / upper;
      return s.end + index(s.start - s.end + 1, f);
    }
    case 'cosine': {
      const f = K === 1 ? 1 : (Math.cos((Math.PI * k) / upper) + 1) / 2;
      return s.end + index(s.start - s.end + 1, f);
    }
    case 'two-stage':
      return k < upper / 2 || K === 1 ? s.start : s.end;
    default:
      return s.custom[k];
  }
}

/** Tokens revealed at each AR step: MAR's cosine mask schedule with its clamps. */
function tokensPerStep(K, N) {
  const out = [];
  let masked = N;
  for (let k = 0; k < K; k++) {
    const ratio = Math.cos(((Math.PI / 2) * (k + 1)) / K);
    const target = Math.max(0, Math.floor(N * ratio));
    const maskLen = Math.max(1, Math.min(target, Math.max(0, masked - 1)));
    const last = k + 1 === K;
    out.push(last ? masked : masked - Math.min(maskLen, masked));
    masked = last ? 0 : maskLen;
  }
  return out;
}

function currentSchedule() {
  return {
    kind: ui.preset,
    start: +$('start-steps').value,
    end: +$('end-steps').value,
    custom: ui.custom,
  };
}

function scheduleString(s = currentSchedule()) {
  switch (s.kind) {
    case 'constant':
      return `constant:${s.start}`;
    case 'custom':
      return `custom:${s.custom.join(',')}`;
    default:
      return `${s.kind}:${s.start}:${s.end}`;
  }
}

/** A schedule's name for captions: custom lists are too long to show. */
const shortSchedule = (s) => (s.startsWith('custom:') ? 'custom' : s);
/** A request's schedule with its clip, when the request sets one (the A/B baseline may). */
const scheduleLabel = (r) => shortSchedule(r.schedule) + (r.clip != null ? ` · clip ${r.clip}` : '');

/** DiSA's timestep clip: reverse diffusion starts at t = 950, not 999. */
const DISA_CLIP = 950;

function nominalSteps(K, s = currentSchedule()) {
  return Array.from({ length: K }, (_, k) => stepsAt(s, k, K));
}

/** Resamples a custom curve to a new number of AR steps (linear interpolation). */
function resample(values, K) {
  if (values.length === K) return values.slice();
  if (values.length === 1 || K === 1) return Array(K).fill(values[0]);
  return Array.from({ length: K }, (_, i) => {
    const x = (i * (values.length - 1)) / (K - 1);
    const a = Math.floor(x);
    const b = Math.min(values.length - 1, a + 1);
    return Math.round(values[a] + (values[b] - values[a]) * (x - a));
  });
}

/** The step count of the A/B baseline: plain MAR at the schedule's largest value. */
function baselineSteps() {
  const s = currentSchedule();
  return s.kind === 'custom' ? Math.max(...s.custom) : s.start;
}

// ───────────────────────── the request ─────────────────────────

function readRequest() {
  return {
    classLabel: +$('class').value || 0,
    seed: clamp(Math.floor(+$('seed').value || 0), 0, 2 ** 32 - 1),
    arSteps: +$('ar-steps').value,
    schedule: scheduleString(),
    cfg: +$('cfg').value,
    cfgSchedule: $('cfg-schedule').value,
    temperature: +$('temperature').value,
  };
}

// ───────────────────────── worker wiring ─────────────────────────

let worker = null;

/** Starts the model worker (again, after a crash) and sends it `init`. */
function startWorker(init) {
  worker = new Worker('./worker.js', { type: 'module' });
  worker.onmessage = (e) => {
    const msg = e.data || {};
    const handler = handlers[msg.type];
    if (handler) handler(msg);
  };
  // An uncaught error inside the worker (a wasm trap, or a worker.js that fails to load).
  worker.onerror = (e) => {
    e.preventDefault();
    const message = e.message || 'the worker script failed to load (worker.js)';
    if (!ui.model) {
      handlers.error({ type: 'error', where: 'init', message });
    } else {
      workerCrashed(message);
    }
  };
  post({ type: 'init', weightsUrl: DEFAULT_WEIGHTS, forceCpu, ...init });
}

function post(msg, transfer) {
  worker.postMessage(msg, transfer || []);
}

function record(msg) {
  // Keep the event log light: the test needs sizes, not megabytes of pixels.
  const copy = { ...msg, at: performance.now() };
  if (msg.preview) copy.preview = { width: msg.preview.width, height: msg.preview.height };
  if (msg.image) copy.image = { width: msg.image.width, height: msg.image.height };
  window.disaEvents.push(copy);
  if (window.disaEvents.length > MAX_EVENTS) window.disaEvents.shift();
}

const isCurrent = (runId) => ui.run !== null && runId === ui.run.runId;

/**
 * The worker died (a wasm trap such as running out of memory, or an uncaught error): its module
 * is gone. Start a fresh one with the last model that loaded, keep the user's settings, say so.
 */
async function workerCrashed(detail) {
  const now = performance.now();
  ui.crashes = ui.crashes.filter((t) => now - t < 60_000);
  ui.crashes.push(now);
  worker.onmessage = null;
  worker.onerror = null;
  worker.terminate();
  const during = ui.pendingFile ? ` while loading “${ui.pendingFile.name}”` : ui.run ? ' during a run' : '';
  const hint = ui.pendingFile ? ' The file may need more memory than this browser gives a page.' : '';
  if (ui.run) cancelRun('crash');
  ui.cancelled.clear();
  ui.pendingFile = null;
  ui.loadingFile = false;
  if (!ui.model || ui.crashes.length > MAX_RESTARTS_PER_MINUTE) {
    ui.loading = false;
    $('progress-wrap').hidden = true;
    showError(`The model worker stopped${during} and was not restarted again.${hint} Reload the page to start again.`, detail);
    setState('error');
    return;
  }
  const name = ui.model.name;
  showError(`The model worker stopped${during}.${hint} It was restarted with “${name}”; your settings are kept.`, detail);
  ui.loading = true;
  ui.recovering = true;
  setState('loading');
  showProgress(0, null, 'restarting');
  const cpu = forceCpu || (ui.backendInfo && ui.backendInfo.backend === 'cpu');
  let file;
  if (ui.modelFile) {
    try {
      file = { name: ui.modelFile.name, bytes: await ui.modelFile.arrayBuffer() };
    } catch {
      file = undefined; // the file is gone: the built-in model it is
    }
  }
  startWorker({ forceCpu: cpu, file });
}

const handlers = {
  backend(msg) {
    record(msg);
    ui.backendInfo = msg.info || {};
    showBackend(ui.backendInfo);
  },
  progress(msg) {
    showProgress(msg.loaded, msg.total, msg.phase);
  },
  model(msg) {
    window.disaModelInfo = msg.info; // read by the end-to-end test
    if (ui.pendingFile && ui.loadingFile) ui.modelFile = ui.pendingFile;
    ui.pendingFile = null;
    applyModel(msg.info);
    endLoading();
  },
  plan(msg) {
    acceptPlan(msg);
  },
  step(msg) {
    if (!isCurrent(msg.runId)) return; // late message of a cancelled run
    record(msg);
    onStep(msg.event, msg.preview);
  },
  done(msg) {
    if (!isCurrent(msg.runId)) return cancelConfirmed(msg.runId); // finished before the cancel
    record(msg);
    onDone(msg);
  },
  stopped(msg) {
    cancelConfirmed(msg.runId);
  },
  error(msg) {
    if (msg.where === 'panic') return workerCrashed(msg.message);
    if (msg.runId != null && !isCurrent(msg.runId)) return cancelConfirmed(msg.runId);
    if (msg.where === 'plan') {
      if (!acceptPlanError(msg)) return;
    }
    record(msg);
    onError(msg);
  },
};

// ───────────────────────── page state ─────────────────────────

function setState(s) {
  ui.state = s;
  document.body.dataset.state = s;
  const usable = ui.model !== null && !ui.loading;
  $('generate').disabled = !usable;
  $('ab-run').disabled = !usable;
  $('stop').hidden = s !== 'running';
  $('class').disabled = ui.model === null;
}

/** State to return to when nothing is running. */
function idleState() {
  if (!ui.model) return ui.loading ? 'loading' : 'error';
  return ui.vis && ui.vis.done ? 'done' : 'ready';
}

function endLoading() {
  ui.loading = false;
  const recovered = ui.recovering;
  ui.recovering = false;
  $('progress-wrap').hidden = true;
  if (recovered) requestPlan(); // plans were held back while the worker had no model
  setState(idleState());
  if (ui.resumeMode) {
    const mode = ui.resumeMode;
    ui.resumeMode = null;
    startRun(mode);
  }
}

/** Shows a message for people in `#error`; `detail` (the technical text) sits one click away. */
function showError(text, detail) {
  const el = $('error');
  el.replaceChildren(document.createTextNode(text));
  if (detail && detail !== text) el.append(' ', details('Technical detail', detail));
  $('error-wrap').hidden = false;
}

function clearError() {
  $('error-wrap').hidden = true;
  $('error').textContent = '';
}

/** A collapsed `<details>` with a summary line and preformatted text (or nodes). */
function details(summary, body) {
  const d = document.createElement('details');
  const s = document.createElement('summary');
  s.textContent = summary;
  d.append(s);
  if (typeof body === 'string') {
    const pre = document.createElement('pre');
    pre.textContent = body;
    d.append(pre);
  } else {
    d.append(...body);
  }
  return d;
}

/** A loader error without its file-name prefix (the page names the file), as a sentence. */
function weightsReason(text) {
  const reason = text.replace(/^cannot read weight file\s+[^:]*:\s*/i, '').trim();
  return /[.!?]$/.test(reason) ? reason : `${reason}.`;
}

function onError(msg) {
  const text = msg.message || 'unknown error';
  switch (msg.where) {
    case 'plan':
      showPlanError(text);
      return;
    case 'weights': {
      // The worker keeps the previous model: report and carry on.
      const name = (ui.pendingFile && ui.pendingFile.name) || msg.name || 'that file';
      ui.loading = false;
      ui.loadingFile = false;
      ui.pendingFile = null;
      $('progress-wrap').hidden = true;
      showError(
        `Could not load the weights in “${name}”: ${weightsReason(text)}` +
          (ui.model ? ` Still using “${ui.model.name}”.` : ''),
        text,
      );
      setState(idleState());
      return;
    }
    case 'device':
      ui.resumeMode = ui.run ? ui.lastMode : null;
      dropRun();
      ui.loading = true;
      ui.recovering = true;
      showError('The GPU device was lost. Switching to the CPU backend…', text);
      setState('loading');
      return;
    case 'generate':
      dropRun();
      showError('Generation failed. Change a setting or press Generate to try again.', text);
      setState('error');
      return;
    default: // init, or 'worker' (an uncaught worker error between runs)
      ui.loading = false;
      $('progress-wrap').hidden = true;
      showError(
        msg.where === 'init' ? 'Could not start the demo. Reload the page to try again.' : 'The model worker reported an error.',
        text,
      );
      setState(ui.model ? idleState() : 'error');
  }
}

// ───────────────────────── backend, progress, model ─────────────────────────

/** What the reader can do to get WebGPU: browsers and settings, as of 2025. */
function webgpuHelp() {
  const list = document.createElement('ul');
  for (const line of [
    'Chrome or Edge 113 or newer on Windows, macOS or ChromeOS; Chrome 121 or newer on Android.',
    'Safari 26 or newer on macOS, iOS and iPadOS.',
    'Firefox 141 or newer on Windows (elsewhere, Firefox Nightly).',
    'On Linux, Chrome needs chrome://flags/#enable-unsafe-webgpu (and a Vulkan driver).',
    'Hardware acceleration must be on in the browser’s settings, and the page must come from https:// or localhost.',
  ]) {
    const li = document.createElement('li');
    li.textContent = line;
    list.append(li);
  }
  return [list];
}

function showBackend(info) {
  const backend = String(info.backend || 'unknown').toLowerCase();
  const el = $('backend');
  el.textContent = info.adapter ? `${backend} · ${info.adapter}` : backend;
  el.title = `Backend: ${backend}${info.adapter ? `, adapter: ${info.adapter}` : ''}`;
  el.className = `badge ${backend === 'webgpu' && !info.software ? 'gpu' : 'cpu'}`;

  const notice = $('notice');
  notice.replaceChildren();
  const text = document.createElement('span');
  notice.append(text);
  const parts = [];
  if (backend === 'cpu') {
    parts.push(info.notice || 'WebGPU is not available here, so the demo runs on the CPU (slower).');
    if (info.reason === 'unavailable' || info.reason === 'failed') {
      notice.append(details('How to enable WebGPU', webgpuHelp()));
    }
    if (info.reason === 'software') {
      const back = document.createElement('a');
      back.href = location.pathname;
      back.textContent = 'Use WebGPU again';
      notice.append(back);
    }
  } else if (info.notice) {
    parts.push(info.notice);
  }
  if (backend === 'webgpu' && info.software) {
    parts.push(
      `WebGPU here runs on “${info.adapter || 'unknown'}”, a software renderer that emulates a GPU on the CPU: ` +
        'it is usually far slower than this page’s own CPU backend.',
    );
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'small';
    button.id = 'use-cpu';
    button.textContent = 'Switch to the CPU backend';
    button.addEventListener('click', switchToCpu);
    notice.append(button);
  }
  const measured = speedNote();
  if (measured) parts.push(measured);
  text.textContent = parts.join(' ');
  if (info.detail) notice.append(details('Technical detail', info.detail));
  notice.hidden = parts.length === 0;
  $('cpu-link').hidden = backend === 'cpu' && !forceCpu;
}

/** Switches the running worker to the CPU backend, keeping the model and the settings. */
function switchToCpu() {
  if (!ui.model) return;
  const wasSoftware = ui.backendInfo && ui.backendInfo.software;
  ui.resumeMode = ui.run ? ui.lastMode : null;
  cancelRun('backend');
  ui.loading = true;
  ui.recovering = true;
  setState('loading');
  showProgress(0, null, 'switching to the CPU');
  post({
    type: 'useCpu',
    reason: wasSoftware ? 'software' : 'chosen',
    notice: wasSoftware
      ? `The demo now runs on the CPU backend: the WebGPU adapter “${ui.backendInfo.adapter}” is a software renderer.`
      : 'The demo now runs on the CPU backend.',
  });
}

/** Measured ms per head call on each backend used in this session, when there are two. */
function speedNote() {
  const entries = Object.entries(ui.speed);
  if (entries.length < 2) return '';
  const [[a, ma], [b, mb]] = entries.slice(-2);
  const [fast, slow, ratio] = ma <= mb ? [a, b, mb / ma] : [b, a, ma / mb];
  return `Measured here: ${entries.map(([k, v]) => `${k} ${v.toFixed(2)} ms`).join(', ')} per head call, so ${fast} is ${ratio.toFixed(1)}× faster than ${slow}.`;
}

function showProgress(loaded, total, phase) {
  $('progress-wrap').hidden = false;
  const bar = $('progress');
  const mb = (n) => (n / 1048576).toFixed(1);
  if (total) {
    bar.max = total;
    bar.value = Math.min(loaded, total);
    $('progress-label').textContent = `${phase || 'loading'} ${mb(loaded)} / ${mb(total)} MB`;
  } else {
    bar.removeAttribute('value'); // indeterminate
    $('progress-label').textContent = `${phase || 'loading'}${loaded ? ` ${mb(loaded)} MB` : '…'}`;
  }
}

function applyModel(info) {
  // Fresh defaults for a new model; a re-announce after a device fallback keeps the settings.
  const fresh = ui.model === null || ui.loadingFile;
  const prevClass = +$('class').value || 0;
  // A loaded file brings its own defaults: keep the user's settings to offer them back.
  const before = ui.model !== null && ui.loadingFile ? snapshotSettings() : null;
  ui.model = info;
  ui.loadingFile = false;
  ui.plan = null; // plans of the previous model do not apply
  $('model-info').textContent = `${info.name} · ${info.grid}×${info.grid} tokens · ${info.imageSize}px`;

  fillClasses(info, fresh ? 0 : prevClass);
  $('ar-steps').max = String(info.seqLen);
  if (fresh) applyDefaults(info.defaults || {});
  if (+$('ar-steps').value > info.seqLen) $('ar-steps').value = String(info.seqLen);
  if (ui.preset === 'custom') ui.custom = resample(ui.custom, +$('ar-steps').value);
  syncOutputs();
  if (!ui.run) resetVis(readRequest(), 'main', false);
  drawAll();
  requestPlan();
  showBaselineNote(); // its wording depends on whether the model is the built-in one
  if (before) offerSettingsBack(info, before);
}

/** Everything the controls hold, to put back later. */
function snapshotSettings() {
  return {
    classLabel: +$('class').value || 0,
    seed: $('seed').value,
    arSteps: +$('ar-steps').value,
    cfg: $('cfg').value,
    cfgSchedule: $('cfg-schedule').value,
    temperature: $('temperature').value,
    preset: ui.preset,
    start: $('start-steps').value,
    end: $('end-steps').value,
    custom: ui.custom ? ui.custom.slice() : null,
    schedule: scheduleString(),
  };
}

/** Says that a loaded file changed the settings, and offers the user's own back. */
function offerSettingsBack(info, before) {
  const now = snapshotSettings();
  const changed = ['arSteps', 'cfg', 'cfgSchedule', 'temperature', 'schedule'].filter((k) => String(now[k]) !== String(before[k]));
  if (changed.length === 0 && now.classLabel === before.classLabel) {
    showInfo(`Loaded “${info.name}”. Your settings are unchanged.`);
    return;
  }
  const what = `K ${now.arSteps}, ${shortSchedule(now.schedule)}, cfg ${(+now.cfg).toFixed(1)} ${now.cfgSchedule}, temperature ${(+now.temperature).toFixed(2)}`;
  showInfo(`Loaded “${info.name}”: the settings are now its own defaults (${what}).`, 'Keep my previous settings', () => {
    restoreSettings(before);
    showInfo('Your previous settings are back.');
  });
}

function restoreSettings(s) {
  const m = ui.model;
  $('seed').value = s.seed;
  $('ar-steps').value = String(clamp(s.arSteps, 1, m.seqLen));
  $('cfg').value = s.cfg;
  $('cfg-schedule').value = s.cfgSchedule;
  $('temperature').value = s.temperature;
  $('start-steps').value = s.start;
  $('end-steps').value = s.end;
  if (s.classLabel < m.numClasses) $('class').value = String(s.classLabel);
  if (s.preset === 'custom' && s.custom) ui.custom = resample(s.custom, +$('ar-steps').value);
  setPreset(s.preset);
  settingsChanged();
}

/** A dismissable line under the top bar, with an optional action button. */
function showInfo(text, actionLabel, action) {
  $('info-text').textContent = text;
  const button = $('info-action');
  button.hidden = !actionLabel;
  button.textContent = actionLabel || '';
  button.onclick = action
    ? () => {
        button.hidden = true;
        action();
      }
    : null;
  $('info').hidden = false;
}

function fillClasses(info, keep) {
  const sel = $('class');
  sel.replaceChildren();
  const names = info.classNames || [];
  for (let c = 0; c < info.numClasses; c++) {
    const name = names[c] ? `${c} · ${names[c]}` : `class ${c}`;
    sel.add(new Option(name, String(c)));
  }
  sel.value = String(keep < info.numClasses ? keep : 0);
}

function applyDefaults(d) {
  if (d.arSteps) $('ar-steps').value = String(clamp(d.arSteps, 1, ui.model.seqLen));
  if (d.cfg != null) $('cfg').value = String(d.cfg);
  if (d.cfgSchedule) $('cfg-schedule').value = d.cfgSchedule;
  if (d.temperature != null) $('temperature').value = String(d.temperature);
  if (d.schedule) applyScheduleString(d.schedule);
}

function applyScheduleString(text) {
  const [kind, rest = ''] = text.split(/:(.*)/s);
  const nums = rest.split(/[:,]/).map(Number);
  if (kind === 'custom') {
    ui.custom = resample(nums, +$('ar-steps').value);
  } else {
    $('start-steps').value = String(nums[0]);
    $('end-steps').value = String(kind === 'constant' ? Math.min(nums[0], +$('end-steps').value) : nums[1]);
  }
  setPreset(kind === 'twostage' || kind === 'two_stage' ? 'two-stage' : kind);
}

// ───────────────────────── controls ─────────────────────────

function setPreset(kind) {
  if (kind === 'custom' && ui.preset !== 'custom') {
    // Start the custom curve from whatever was shown, so a drag edits rather than resets.
    ui.custom = ui.custom && ui.custom.length === +$('ar-steps').value ? ui.custom : nominalSteps(+$('ar-steps').value);
  }
  ui.preset = kind;
  $('preset').value = kind;
  const custom = kind === 'custom';
  $('start-steps').disabled = custom;
  $('end-steps').disabled = custom || kind === 'constant';
  $('start-label').textContent = kind === 'constant' ? 'steps' : 'start';
}

function syncOutputs() {
  $('ar-steps-out').value = $('ar-steps').value;
  $('cfg-out').value = (+$('cfg').value).toFixed(1);
  $('temperature-out').value = (+$('temperature').value).toFixed(2);
  $('start-steps-out').value = $('start-steps').value;
  $('end-steps-out').value = ui.preset === 'constant' ? '—' : $('end-steps').value;
}

/** Any setting changed: re-plan, cancel the stale run, maybe start a fresh one. */
function settingsChanged({ restart = true } = {}) {
  syncOutputs();
  requestPlan();
  if (ui.run) {
    cancelRun('settings');
    setState(idleState());
  }
  if (ui.model && ui.vis && !ui.vis.active) {
    resetVis(readRequest(), 'main', false); // nothing shown yet: follow the new K and plan
    drawAll();
  } else {
    drawPlot();
  }
  if (ui.model) showPlanTotals(); // local estimate until the worker's plan arrives
  if (restart) scheduleAutoRun();
}

function scheduleAutoRun() {
  clearTimeout(ui.autoTimer);
  if (!$('auto-run').checked || !ui.hasRun) return;
  ui.autoTimer = setTimeout(() => startRun(ui.lastMode), AUTO_RUN_DELAY_MS);
}

/** Listens to both events: browsers fire `input` while dragging, scripts often fire only `change`. */
function onEdit(id, fn) {
  $(id).addEventListener('input', fn);
  $(id).addEventListener('change', fn);
}

function wireControls() {
  for (const id of ['class', 'cfg', 'cfg-schedule', 'temperature']) onEdit(id, () => settingsChanged());
  onEdit('seed', () => {
    if ($('seed').value !== '') settingsChanged();
  });
  $('seed-random').addEventListener('click', () => {
    $('seed').value = String(Math.floor(Math.random() * 2 ** 31));
    settingsChanged();
  });
  onEdit('ar-steps', () => {
    if (ui.preset === 'custom') ui.custom = resample(ui.custom, +$('ar-steps').value);
    settingsChanged();
  });
  onEdit('start-steps', () => {
    // DiSA anneals downwards: keep end ≤ start by pushing the other slider.
    if (+$('end-steps').value > +$('start-steps').value) $('end-steps').value = $('start-steps').value;
    settingsChanged();
  });
  onEdit('end-steps', () => {
    if (+$('end-steps').value > +$('start-steps').value) $('start-steps').value = $('end-steps').value;
    settingsChanged();
  });
  onEdit('preset', () => {
    setPreset($('preset').value);
    settingsChanged();
  });
  $('show-order').addEventListener('change', drawStage);
  $('replay').addEventListener('click', replay);

  $('generate').addEventListener('click', () => startRun('single'));
  $('ab-run').addEventListener('click', () => startRun('ab'));
  // A new baseline re-runs the comparison when the last run was one (and auto-run is on).
  $('ab-baseline').addEventListener('change', () => {
    showBaselineNote();
    if (ui.lastMode === 'ab') scheduleAutoRun();
  });
  $('stop').addEventListener('click', () => {
    clearTimeout(ui.autoTimer);
    cancelRun('stop');
    setState(idleState());
  });
  $('error-dismiss').addEventListener('click', clearError);
  $('info-dismiss').addEventListener('click', () => {
    $('info').hidden = true;
  });
  $('file-input').addEventListener('change', () => {
    loadWeightsFile($('file-input').files[0]);
    $('file-input').value = ''; // so picking the same file again still fires
  });

  const cpuLink = $('cpu-link');
  if (forceCpu) {
    cpuLink.textContent = 'Use WebGPU when available';
    cpuLink.href = location.pathname;
  }
}

// ───────────────────────── plans ─────────────────────────

const planKey = (req) => `${req.arSteps}|${req.schedule}|${req.cfg}|${req.cfgSchedule}`;

function requestPlan() {
  if (!ui.model || ui.planTimer || ui.recovering) return;
  ui.planTimer = setTimeout(() => {
    ui.planTimer = 0;
    const request = readRequest();
    const id = ++ui.planSeq;
    ui.planKeys.set(id, planKey(request));
    ui.pendingPlans++;
    post({ type: 'plan', id, request });
  }, PLAN_DELAY_MS);
}

/** Works out which request a plan reply answers; workers that echo no id answer in order. */
function planReplyKey(msg) {
  ui.pendingPlans = Math.max(0, ui.pendingPlans - 1);
  let id = msg.id;
  if (id == null) id = ui.planSeq - ui.pendingPlans;
  const key = ui.planKeys.get(id);
  for (const old of ui.planKeys.keys()) if (old <= id) ui.planKeys.delete(old);
  return key;
}

function acceptPlan(msg) {
  const key = planReplyKey(msg);
  if (key !== planKey(readRequest())) return; // a newer request is on its way
  ui.plan = { key, plan: msg.plan };
  const v = ui.vis;
  if (v && v.lane !== 'baseline' && planKey(v.request) === key) {
    v.plan = plotData(); // exact totals for the counters
    showCounters();
  }
  drawPlot();
  showPlanTotals();
}

function acceptPlanError(msg) {
  const key = planReplyKey(msg);
  return key === planKey(readRequest());
}

/** The data the plot shows: the worker's plan when it is current, else the local arithmetic. */
function plotData() {
  const req = readRequest();
  const K = req.arSteps;
  const N = ui.model ? ui.model.seqLen : 64;
  const nominal = nominalSteps(K);
  const fresh = ui.plan && ui.plan.key === planKey(req) && ui.plan.plan.steps.length === K;
  if (fresh) {
    const steps = ui.plan.plan.steps;
    return {
      K,
      nominal,
      effective: steps.map((s) => s.effectiveSteps),
      tokens: steps.map((s) => s.tokens),
      cfg: steps.map((s) => s.cfg),
      headCalls: ui.plan.plan.headCalls,
      tokenSteps: ui.plan.plan.tokenSteps,
      exact: true,
    };
  }
  const tokens = tokensPerStep(K, N);
  return {
    K,
    nominal,
    effective: null,
    tokens,
    cfg: null,
    headCalls: nominal.reduce((a, b) => a + b, 0),
    tokenSteps: nominal.reduce((a, n, k) => a + n * tokens[k], 0),
    exact: false,
  };
}

function showPlanTotals() {
  const d = plotData();
  const N = ui.model ? ui.model.seqLen : 0;
  const B = baselineSteps();
  const baseCalls = d.K * B;
  const approx = d.exact ? '' : '≈';
  const ratio = baseCalls / Math.max(1, d.headCalls);
  const el = $('plan-totals');
  el.classList.remove('err');
  el.innerHTML =
    `Plan: <b>${approx}${d.headCalls}</b> head calls · <b>${approx}${d.tokenSteps}</b> token·steps. ` +
    (ui.preset === 'constant'
      ? 'This is plain MAR.'
      : `Plain MAR at ${B} steps, no clip: ${baseCalls} · ${N * B} → <span class="good">${ratio.toFixed(1)}× fewer calls</span>`);
  $('explain-plan').textContent =
    ui.preset === 'constant'
      ? 'at the current settings both are plain MAR'
      : `at the current settings (K = ${d.K}, ${shortSchedule(scheduleString())}) the plan makes ${approx}${ratio.toFixed(1)}× fewer head calls than plain MAR at ${B} steps`;
}

function showPlanError(text) {
  const el = $('plan-totals');
  el.textContent = `Plan error: ${text}`;
  el.classList.add('err');
}

// ───────────────────────── runs ─────────────────────────

function startRun(mode) {
  clearTimeout(ui.autoTimer);
  if (!ui.model || ui.loading) return;
  cancelRun();
  clearError();
  ui.lastMode = mode;
  ui.hasRun = true;
  const request = readRequest();
  if (mode === 'ab') {
    // Plain MAR: constant steps, either as the official code runs it (no clip) or with DiSA's
    // clip, so that only the step schedule differs between the two images. The pair alternates
    // for `rounds` rounds: single timings swing, the median of the ratios does not.
    const base = { ...request, schedule: `constant:${baselineSteps()}` };
    if ($('ab-baseline').value === 'clip') base.clip = DISA_CLIP;
    const rounds = clamp(+$('ab-rounds').value || 1, 1, 9);
    ui.ab = { request, base, rounds, round: 0, baseline: [], disa: [] };
    showAbRunning();
    launch('baseline', base);
  } else {
    launch('main', request);
  }
}

function launch(lane, request) {
  stopReplay();
  $('replay').hidden = true;
  const runId = ui.nextRunId++;
  ui.run = { runId, lane, request, t0: performance.now() };
  resetVis(request, lane, true);
  ui.vis.runId = runId;
  record({ type: 'launch', runId, lane });
  post({ type: 'generate', runId, request, lane });
  setState('running');
  clearInterval(ui.ticker);
  ui.ticker = setInterval(tickLatency, 100);
  drawAll();
}

/**
 * Tells the worker to stop the current run; its late messages are then ignored. With a
 * `reason`, the page shows that the run was stopped ('stop', 'settings', 'file', 'backend',
 * 'crash'); without one a new run is about to replace it.
 */
function cancelRun(reason = null) {
  stopReplay();
  const run = ui.run;
  const ab = ui.ab;
  if (run) {
    post({ type: 'cancel', runId: run.runId });
    ui.cancelled.set(run.runId, performance.now());
  }
  dropRun();
  if (run && reason) showStopped(run, reason);
  if (ab) showAbInterrupted(ab, reason);
}

function dropRun() {
  ui.run = null;
  if (ui.ab) $('ab-card').classList.remove('running');
  ui.ab = null;
  clearInterval(ui.ticker);
}

/** The worker has really stopped a cancelled run: how long that took goes to the event log. */
function cancelConfirmed(runId) {
  const t = ui.cancelled.get(runId);
  if (t == null) return;
  ui.cancelled.delete(runId);
  record({ type: 'stopped', runId, cancelMs: performance.now() - t });
  const v = ui.vis;
  if (v && v.runId === runId && v.stopped && $('latency-note').textContent.startsWith('stopping')) {
    $('latency-note').textContent = 'stopped';
  }
}

const STOP_WHY = {
  stop: '',
  settings: ' · settings changed',
  file: ' · loading a model',
  backend: ' · switching backend',
  crash: ' · the worker crashed',
};

/** A stopped run keeps its partial grid, says it stopped, freezes the latency, drops the highlight. */
function showStopped(run, reason) {
  const v = ui.vis;
  if (!v || v.runId !== run.runId || v.done) return;
  const restarting = reason === 'settings' && $('auto-run').checked && ui.hasRun;
  v.stopped = reason;
  v.current = [];
  v.flashAt = 0;
  $('latency').textContent = formatMs(performance.now() - run.t0);
  // The worker finishes the AR step in flight first; `cancelConfirmed` then says "stopped".
  const confirming = reason !== 'crash' && ui.cancelled.has(run.runId);
  $('latency-note').textContent = restarting ? 'restarting…' : confirming ? 'stopping…' : 'stopped';
  const el = $('lane-label');
  const at = `at AR step ${v.k + 1}/${v.K}`;
  el.textContent = restarting ? `Settings changed · restarting (stopped ${at}) · ` : `Stopped ${at}${STOP_WHY[reason] || ''} · `;
  el.append(Object.assign(document.createElement('span'), { className: 'plain', textContent: scheduleLabel(run.request) }));
  showCounters();
  drawAll();
}

function tickLatency() {
  if (ui.run) $('latency').textContent = formatMs(performance.now() - ui.run.t0);
}

/** Caption of the token grid: which lane runs, with which schedule. */
function showLaneTitle(lane, request, done) {
  const s = scheduleLabel(request);
  const ab = ui.ab;
  const round = ab && ab.rounds > 1 ? ` ${ab.round + 1}/${ab.rounds}` : '';
  const what =
    lane === 'baseline'
      ? `A/B${round} · plain MAR`
      : lane === 'disa'
        ? `A/B${round} · DiSA`
        : done
          ? 'Done'
          : 'Generating';
  const el = $('lane-label');
  el.textContent = `${what} · `;
  const span = document.createElement('span');
  span.className = 'plain';
  span.textContent = s;
  el.append(span);
}

// ───────────────────────── run visualization state ─────────────────────────

function resetVis(request, lane, active) {
  const grid = ui.model ? ui.model.grid : 8;
  const K = request.arSteps;
  ui.vis = {
    active,
    done: false,
    lane,
    grid,
    K,
    k: -1,
    revealK: new Int16Array(grid * grid).fill(-1), // AR step that revealed each token
    cellSteps: new Int16Array(grid * grid), // diffusion steps spent on each token
    current: [],
    flashAt: 0,
    timings: [],
    headCalls: 0,
    tokenSteps: 0,
    request,
    history: [], // { ev, preview } of every step, for the replay
    heatMax: Math.max(...nominalSteps(K, parseSchedule(request.schedule))),
    plan: lane === 'baseline' ? constantTotals(K, parseSchedule(request.schedule).start, request.clip) : plotData(),
  };
  if (active) showLaneTitle(lane, request, false);
  else $('lane-label').textContent = 'Token grid';
  clearCanvas($('stage-preview'));
  showCounters();
  $('latency').textContent = active ? '0 ms' : '–';
  $('latency-note').textContent = active ? 'running…' : '\u00a0';
  $('heat-min').textContent = '0';
  $('heat-max').textContent = String(ui.vis.heatMax);
}

/** Plain MAR's cost without asking the worker: exact with no clip (every step runs); an upper
 *  bound with one (the clip can merge the top timesteps). */
function constantTotals(K, steps, clip) {
  const N = ui.model ? ui.model.seqLen : 0;
  return { headCalls: K * steps, tokenSteps: N * steps, exact: clip == null };
}

function parseSchedule(text) {
  const [kind, rest = ''] = text.split(/:(.*)/s);
  const nums = rest.split(/[:,]/).map(Number);
  return { kind, start: nums[0], end: nums[1], custom: nums };
}

function onStep(ev, preview) {
  const v = ui.vis;
  v.k = ev.k;
  v.K = ev.arSteps || v.K;
  for (const p of ev.positions || []) {
    v.revealK[p] = ev.k;
    v.cellSteps[p] = ev.effectiveSteps;
  }
  v.current = ev.positions || [];
  v.flashAt = performance.now();
  v.timings[ev.k] = { tf: ev.transformerMs || 0, head: ev.headMs || 0 };
  v.headCalls += ev.effectiveSteps;
  v.tokenSteps += v.current.length * ev.effectiveSteps;
  v.last = ev;
  const keep = preview && preview.width * preview.height * 4 * v.K <= MAX_REPLAY_BYTES;
  v.history.push({ ev, preview: keep ? preview : null });
  if (preview) drawPixels($('stage-preview'), preview);
  showCounters();
  drawAll();
  animateFlash();
}

function onDone(msg) {
  const v = ui.vis;
  const lane = ui.run.lane;
  v.done = true;
  v.current = [];
  v.headCalls = msg.headCalls ?? v.headCalls;
  v.tokenSteps = msg.tokenSteps ?? v.tokenSteps;
  v.totalMs = msg.totalMs;
  v.image = msg.image;
  clearInterval(ui.ticker);
  drawPixels($('stage-preview'), msg.image);
  showCounters();
  $('latency').textContent = formatMs(msg.totalMs);
  $('latency-note').textContent = 'total';
  showLaneTitle(lane, ui.run.request, true);
  noteSpeed(msg);

  const ab = ui.ab;
  if (lane === 'baseline' && ab) {
    ab.baseline.push(msg);
    if (ab.round === 0) {
      drawPixels($('ab-baseline-canvas'), msg.image);
      $('ab-baseline-meta').textContent = abMeta(ab.base, ab.baseline);
    }
    launch('disa', ab.request); // same seed, now with the DiSA schedule
    return;
  }
  if (lane === 'disa' && ab) {
    ab.disa.push(msg);
    showAbResult(ab);
    if (ab.round + 1 < ab.rounds) {
      ab.round++;
      launch('baseline', ab.base); // the next round: alternate again
      return;
    }
  }
  drawPixels($('final-canvas'), msg.image);
  $('final-meta').textContent = `${msg.image.width}×${msg.image.height} · ${formatMs(msg.totalMs)}`;
  $('save-png').hidden = false;
  if (lane === 'disa' && ab) showAbDone(ab);
  $('replay').hidden = false;
  ui.run = null;
  ui.ab = null;
  drawAll();
  setState('done');
}

/** Keeps the backend's ms per head call, to compare backends (the software-GPU CPU offer). */
function noteSpeed(msg) {
  const info = ui.backendInfo;
  if (!info || !msg.headCalls || !(msg.samplingMs > 0)) return;
  const label = info.backend === 'webgpu' ? `WebGPU (${String(info.adapter || 'GPU').replace(/ \(.*\)$/, '')})` : 'the CPU backend';
  const had = Object.keys(ui.speed).length;
  delete ui.speed[label];
  ui.speed[label] = msg.samplingMs / msg.headCalls;
  if (Object.keys(ui.speed).length >= 2 && (had < 2 || info.software || info.backend === 'cpu')) showBackend(info);
}

function showCounters() {
  const v = ui.vis;
  const plan = v.plan;
  $('step-counter').textContent = `${v.k + 1}/${v.K}`;
  $('steps-used').textContent = v.last && v.active ? String(v.last.effectiveSteps) : '–';
  $('steps-nominal').textContent =
    v.last && v.active ? `requested ${v.last.nominalSteps}` : '\u00a0';
  $('step-tokens').textContent = v.last && v.active ? `+${v.current.length || v.last.positions.length} tokens` : '\u00a0';
  $('head-calls').textContent = String(v.headCalls);
  $('token-steps').textContent = String(v.tokenSteps);
  $('head-calls-plan').textContent = plan ? `of ${plan.exact ? '' : '≈'}${plan.headCalls}` : '\u00a0';
  $('token-steps-plan').textContent = plan ? `of ${plan.exact ? '' : '≈'}${plan.tokenSteps}` : '\u00a0';
}

// ───────────────────────── replay: the last run again, slowly enough to follow ─────────────────────────

function replay() {
  const old = ui.vis;
  if (!old || !old.done || ui.run) return;
  stopReplay();
  resetVis(old.request, old.lane, true);
  const v = ui.vis;
  $('lane-label').textContent = 'Replay · ';
  $('lane-label').append(Object.assign(document.createElement('span'), { className: 'plain', textContent: shortSchedule(old.request.schedule) }));
  $('latency').textContent = formatMs(old.totalMs);
  $('latency-note').textContent = 'replay';
  const delay = clamp(2400 / old.history.length, 60, 250);
  let i = 0;
  ui.replayTimer = setInterval(() => {
    if (i < old.history.length) {
      const h = old.history[i++];
      onStep(h.ev, h.preview);
      return;
    }
    stopReplay();
    Object.assign(v, { done: true, current: [], totalMs: old.totalMs, image: old.image });
    Object.assign(v, { headCalls: old.headCalls, tokenSteps: old.tokenSteps });
    drawPixels($('stage-preview'), old.image);
    $('latency-note').textContent = 'total';
    showCounters();
    drawAll();
  }, delay);
}

function stopReplay() {
  clearInterval(ui.replayTimer);
  ui.replayTimer = 0;
}


// ───────────────────────── A/B ─────────────────────────

function showAbRunning() {
  $('ab-card').classList.add('running');
  $('speedup').classList.remove('has');
  $('speedup').textContent = '…';
  $('speedup-spread').textContent = '\u00a0';
  $('head-call-ratio').textContent = '…';
  $('ab-baseline-meta').textContent = 'running…';
  $('ab-disa-meta').textContent = 'waiting…';
  $('ab-status').textContent = ui.ab && ui.ab.rounds > 1 ? `${ui.ab.rounds} rounds, alternating plain MAR and DiSA…` : 'running…';
  clearCanvas($('ab-baseline-canvas'));
  clearCanvas($('ab-disa-canvas'));
}

/** Caption of one side: schedule, median sampling time over the rounds so far, head calls. */
function abMeta(request, runs) {
  const ms = median(runs.map(samplingMs));
  const of = runs.length > 1 ? ` (median of ${runs.length})` : '';
  return `${scheduleLabel(request)}\n${formatMs(ms)} sampling${of}\n${runs[0].headCalls} calls`;
}

/** Transformer + head time of a run: the work DiSA changes (previews are decoded apart). */
const samplingMs = (msg) => (msg.samplingMs != null ? msg.samplingMs : msg.totalMs);

/** The per-round speed-ups so far: baseline ÷ DiSA sampling time of the same round. */
function abRatios(ab) {
  return ab.disa.map((d, i) => samplingMs(ab.baseline[i]) / Math.max(1e-6, samplingMs(d)));
}

/** After each round: the images (first round), the median speed-up and its spread. */
function showAbResult(ab) {
  const last = ab.disa[ab.disa.length - 1];
  if (ab.disa.length === 1) drawPixels($('ab-disa-canvas'), last.image);
  $('ab-baseline-meta').textContent = abMeta(ab.base, ab.baseline);
  $('ab-disa-meta').textContent = abMeta(ab.request, ab.disa);
  const ratios = abRatios(ab);
  $('speedup').textContent = formatRatio(median(ratios));
  $('speedup').classList.add('has');
  $('speedup-spread').textContent =
    ratios.length > 1
      ? `median of ${ratios.length} · ${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}`
      : 'one round: timings swing';
  $('head-call-ratio').textContent = formatRatio(ab.baseline[0].headCalls / Math.max(1, last.headCalls));
  $('ab-status').textContent = ab.disa.length < ab.rounds ? `round ${ab.disa.length}/${ab.rounds} done…` : '\u00a0';
}

/** The comparison is complete: the card stops running and the explanation quotes the result. */
function showAbDone(ab) {
  $('ab-card').classList.remove('running');
  const ratios = abRatios(ab);
  const heads = ab.baseline[0].headCalls / Math.max(1, ab.disa[0].headCalls);
  const spread = ratios.length > 1 ? ` (median of ${ratios.length} rounds, ${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})` : ' (one round)';
  $('ab-status').textContent = `${ab.rounds} round${ab.rounds > 1 ? 's' : ''} · ${ui.backendInfo ? ui.backendInfo.backend : ''}`;
  $('explain-measured').textContent =
    `Measured here just now: ${formatRatio(median(ratios))} faster sampling${spread} and ${formatRatio(heads)} fewer head calls, ` +
    `plain MAR at ${parseSchedule(ab.base.schedule).start} steps${ab.base.clip != null ? ` (clip ${ab.base.clip})` : ' (no clip)'} vs ` +
    `${shortSchedule(ab.request.schedule)}, K = ${ab.request.arSteps}.` +
    (median(ratios) < heads ? ' The transformer’s time does not shrink with T, so the speed-up stays below the head-call ratio.' : '');
}

/** An A/B pair that was interrupted (Stop, Generate, a setting) clears its "running" state. */
function showAbInterrupted(ab, reason) {
  $('ab-card').classList.remove('running');
  if (ab.disa.length > 0) {
    // Some rounds finished: keep their figures, say the rest did not run.
    $('ab-status').textContent = `stopped after ${ab.disa.length} of ${ab.rounds} rounds`;
    return;
  }
  const why = reason === 'stop' ? 'stopped' : reason === 'settings' ? 'stopped: settings changed' : 'interrupted';
  $('ab-baseline-meta').textContent = ab.baseline.length ? abMeta(ab.base, ab.baseline) : why;
  $('ab-disa-meta').textContent = 'not run';
  $('speedup').textContent = '–';
  $('speedup-spread').textContent = '\u00a0';
  $('head-call-ratio').textContent = '–';
  $('ab-status').textContent = `The comparison was ${why === 'interrupted' ? 'interrupted by another run' : why}: press A/B to run it again.`;
}

/** What each baseline means, said on the card, not only in a tooltip. */
function showBaselineNote() {
  const official = $('ab-baseline').value === 'official';
  $('ab-clip-note').hidden = official;
  const note = $('ab-official-note');
  note.hidden = !official;
  if (!official) return;
  const builtIn = !ui.modelFile;
  note.textContent = builtIn
    ? 'With the built-in model this baseline fails and draws noise: it starts denoising at t = 999, which this small model cannot handle (DiSA skips t > 950). Its time is real; its image is not comparable.'
    : 'The official code starts denoising at t = 999, where small models (like the built-in one) can fail and draw noise; DiSA skips t > 950. If the baseline image is noise, compare times only.';
}

// ───────────────────────── drawing helpers ─────────────────────────

const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const MAGMA = [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]];

function ramp(stops, t) {
  const x = clamp(t, 0, 1) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const c = stops[i].map((a, j) => Math.round(a + (stops[i + 1][j] - a) * f));
  return { css: `rgb(${c[0]},${c[1]},${c[2]})`, light: 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2] > 140 };
}

/** Sizes a canvas's backing store to its CSS box and returns a context in CSS pixels. */
function fitCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth);
  const h = Math.max(1, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function toClamped(pixels, n) {
  if (pixels instanceof Uint8ClampedArray) return pixels.length === n ? pixels : pixels.subarray(0, n);
  if (pixels instanceof ArrayBuffer) return new Uint8ClampedArray(pixels, 0, n);
  if (ArrayBuffer.isView(pixels)) return new Uint8ClampedArray(pixels.buffer, pixels.byteOffset, n);
  return Uint8ClampedArray.from(pixels.slice(0, n));
}

/** Puts an RGBA image on a canvas at its native size (CSS scales it, pixelated). */
function drawPixels(canvas, img) {
  if (!img || !img.pixels) return;
  const n = img.width * img.height * 4;
  if ((img.pixels.length ?? img.pixels.byteLength) < n) return;
  canvas.width = img.width;
  canvas.height = img.height;
  canvas.getContext('2d').putImageData(new ImageData(toClamped(img.pixels, n), img.width, img.height), 0, 0);
}

function clearCanvas(canvas) {
  canvas.width = 1;
  canvas.height = 1;
}

function drawAll() {
  drawStage();
  drawMap($('order-map'), 'order');
  drawMap($('heat-map'), 'heat');
  drawTiming();
  drawPlot();
}

// ───────────────────────── stage: preview + token grid ─────────────────────────

function drawStage() {
  const { ctx, w, h } = fitCanvas($('stage-overlay'));
  const v = ui.vis;
  if (!v || (!v.active && !v.done)) {
    drawStageHint(ctx, w, h);
    return;
  }
  const g = v.grid;
  const cell = w / g;
  const now = performance.now();
  const flash = Math.max(0, 1 - (now - v.flashAt) / 600);
  const current = new Set(v.current);
  const showOrder = $('show-order').checked && cell >= 16;

  for (let p = 0; p < g * g; p++) {
    const x = (p % g) * cell;
    const y = Math.floor(p / g) * cell;
    if (v.revealK[p] < 0) {
      // Masked: not known yet, so cover whatever the decoder guessed there.
      ctx.fillStyle = 'rgba(13,16,23,0.82)';
      ctx.fillRect(x, y, cell, cell);
      ctx.fillStyle = 'rgba(255,255,255,0.08)';
      ctx.beginPath();
      ctx.arc(x + cell / 2, y + cell / 2, Math.max(1.5, cell * 0.05), 0, Math.PI * 2);
      ctx.fill();
    } else if (current.has(p) && flash > 0) {
      ctx.fillStyle = `rgba(56,214,196,${0.5 * flash})`;
      ctx.fillRect(x, y, cell, cell);
    }
  }
  drawGridLines(ctx, g, cell, w, h);
  if (showOrder) drawOrderNumbers(ctx, v, cell);
  ctx.lineWidth = 2.5;
  ctx.strokeStyle = '#38d6c4';
  for (const p of current) ctx.strokeRect((p % g) * cell + 1.5, Math.floor(p / g) * cell + 1.5, cell - 3, cell - 3);
}

function drawGridLines(ctx, g, cell, w, h) {
  ctx.strokeStyle = 'rgba(255,255,255,0.14)';
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let i = 1; i < g; i++) {
    const o = Math.round(i * cell) + 0.5;
    ctx.moveTo(o, 0);
    ctx.lineTo(o, h);
    ctx.moveTo(0, o);
    ctx.lineTo(w, o);
  }
  ctx.stroke();
}

function drawOrderNumbers(ctx, v, cell) {
  const g = v.grid;
  const size = Math.max(9, Math.min(14, cell * 0.26));
  ctx.font = `600 ${size}px system-ui, sans-serif`;
  ctx.textBaseline = 'top';
  for (let p = 0; p < g * g; p++) {
    const k = v.revealK[p];
    if (k < 0) continue;
    const label = String(k + 1);
    const x = (p % g) * cell + 3;
    const y = Math.floor(p / g) * cell + 3;
    const tw = ctx.measureText(label).width;
    const c = ramp(VIRIDIS, v.K > 1 ? k / (v.K - 1) : 1); // same colours as the order map
    ctx.fillStyle = c.css;
    ctx.fillRect(x - 1, y - 1, tw + 5, size + 3);
    ctx.fillStyle = c.light ? '#111' : '#fff';
    ctx.fillText(label, x + 1.5, y + 0.5);
  }
}

function drawStageHint(ctx, w, h) {
  ctx.fillStyle = 'rgba(13,16,23,0.55)';
  ctx.fillRect(0, 0, w, h);
  ctx.fillStyle = '#8d96aa';
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.font = '600 18px system-ui, sans-serif';
  ctx.fillText(ui.model ? 'Press Generate' : 'Loading the model…', w / 2, h / 2 - 11);
  ctx.font = '13px system-ui, sans-serif';
  ctx.fillText(ui.model ? 'and watch the tokens appear, step by step' : 'this can take a moment the first time', w / 2, h / 2 + 13);
  ctx.textAlign = 'start';
}

/** Fades the highlight of the newest tokens. */
function animateFlash() {
  if (ui.flashing) return;
  ui.flashing = true;
  const frame = () => {
    drawStage();
    if (ui.vis && performance.now() - ui.vis.flashAt < 650) requestAnimationFrame(frame);
    else ui.flashing = false;
  };
  requestAnimationFrame(frame);
}

// ───────────────────────── order map and heat map ─────────────────────────

function drawMap(canvas, kind) {
  const { ctx, w } = fitCanvas(canvas);
  const v = ui.vis;
  if (!v) return;
  const g = v.grid;
  const cell = w / g;
  const labels = cell >= 15;
  ctx.font = `600 ${Math.min(12, cell * 0.42)}px system-ui, sans-serif`;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  for (let p = 0; p < g * g; p++) {
    const x = (p % g) * cell;
    const y = Math.floor(p / g) * cell;
    const k = v.revealK[p];
    if (k < 0) {
      ctx.fillStyle = '#161b26';
      ctx.fillRect(x + 0.5, y + 0.5, cell - 1, cell - 1);
      continue;
    }
    const value = kind === 'order' ? k + 1 : v.cellSteps[p];
    const t = kind === 'order' ? (v.K > 1 ? k / (v.K - 1) : 1) : v.cellSteps[p] / Math.max(1, v.heatMax);
    const c = ramp(kind === 'order' ? VIRIDIS : MAGMA, t);
    ctx.fillStyle = c.css;
    ctx.fillRect(x + 0.5, y + 0.5, cell - 1, cell - 1);
    if (labels) {
      ctx.fillStyle = c.light ? '#111' : '#f4f4f8';
      ctx.fillText(String(value), x + cell / 2, y + cell / 2 + 0.5);
    }
  }
  if (v.current.length) {
    ctx.strokeStyle = '#ffffff';
    ctx.lineWidth = 1.5;
    for (const p of v.current) ctx.strokeRect((p % g) * cell + 1, Math.floor(p / g) * cell + 1, cell - 2, cell - 2);
  }
}

// ───────────────────────── timing chart ─────────────────────────

function drawTiming() {
  const { ctx, w, h } = fitCanvas($('timing-chart'));
  const v = ui.vis;
  const K = v ? v.K : +$('ar-steps').value;
  const padL = 34;
  const padB = 14;
  const plotW = w - padL;
  const plotH = h - padB - 7;
  const times = v ? v.timings : [];
  const maxMs = Math.max(1, ...times.filter(Boolean).map((t) => t.tf + t.head));
  const yMax = niceCeil(maxMs);
  const bw = plotW / K;

  axisLabels(ctx, padL, plotH, yMax, '', 7);
  for (let k = 0; k < K; k++) {
    const t = times[k];
    const x = padL + k * bw + Math.min(1, bw * 0.15);
    const bwInner = Math.max(1, bw - Math.min(2, bw * 0.3));
    if (!t) {
      ctx.fillStyle = '#161b26';
      ctx.fillRect(x, 7 + plotH - 2, bwInner, 2);
      continue;
    }
    const hTf = (t.tf / yMax) * plotH;
    const hHead = (t.head / yMax) * plotH;
    ctx.fillStyle = '#5b8cff';
    ctx.fillRect(x, 7 + plotH - hTf, bwInner, hTf);
    ctx.fillStyle = '#ffb545';
    ctx.fillRect(x, 7 + plotH - hTf - hHead, bwInner, hHead);
  }
  ctx.fillStyle = '#8d96aa';
  ctx.font = '10px system-ui, sans-serif';
  ctx.textBaseline = 'top';
  ctx.fillText('1', padL, h - padB + 2);
  ctx.textAlign = 'right';
  ctx.fillText(`${K}`, w, h - padB + 2);
  ctx.textAlign = 'center';
  ctx.fillText('AR step', padL + plotW / 2, h - padB + 2);
  ctx.textAlign = 'start';

  const sumTf = times.reduce((a, t) => a + (t ? t.tf : 0), 0);
  const sumHead = times.reduce((a, t) => a + (t ? t.head : 0), 0);
  $('timing-sum').textContent = times.length
    ? `Σ transformer ${formatMs(sumTf)} · Σ head ${formatMs(sumHead)} (${Math.round((100 * sumHead) / Math.max(1e-9, sumTf + sumHead))}%)`
    : 'Each bar: one AR step, split into transformer and head time.';
}

/** The smallest round number ≥ x, for axis tops that move in small steps. */
function niceCeil(x) {
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

/** Y-axis labels and light grid lines at 0, half and max. */
function axisLabels(ctx, padL, plotH, yMax, unit, top = 4) {
  ctx.font = '10px system-ui, sans-serif';
  ctx.textBaseline = 'middle';
  ctx.textAlign = 'right';
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH - f * plotH;
    ctx.fillStyle = '#8d96aa';
    const v = yMax * f;
    ctx.fillText(`${Number.isInteger(v) ? v : v.toFixed(1)}${f === 1 && unit ? ` ${unit}` : ''}`, padL - 4, y);
    ctx.strokeStyle = 'rgba(255,255,255,0.06)';
    ctx.beginPath();
    ctx.moveTo(padL, Math.round(y) + 0.5);
    ctx.lineTo(ctx.canvas.clientWidth, Math.round(y) + 0.5);
    ctx.stroke();
  }
  ctx.textAlign = 'start';
}

// ───────────────────────── schedule plot (live and editable) ─────────────────────────

const PLOT = { padL: 30, padR: 26, padT: 10, padB: 18 };

function plotGeometry(w, h, K) {
  const plotW = w - PLOT.padL - PLOT.padR;
  const plotH = h - PLOT.padT - PLOT.padB;
  const yMax = ui.plot.yMax;
  return {
    plotW,
    plotH,
    x: (k) => PLOT.padL + ((k + 0.5) * plotW) / K,
    y: (steps) => PLOT.padT + plotH - (steps / yMax) * plotH,
    kAt: (px) => clamp(Math.floor(((px - PLOT.padL) / plotW) * K), 0, K - 1),
    stepsAt: (py) => Math.round(((PLOT.padT + plotH - py) / plotH) * yMax),
  };
}

function drawPlot() {
  const canvas = $('schedule-plot');
  const { ctx, w, h } = fitCanvas(canvas);
  const d = plotData();
  const K = d.K;
  if (!ui.plot.drag) ui.plot.yMax = clamp(niceCeil(Math.max(10, ...d.nominal) * 1.2), 10, MAX_STEPS);
  const geo = plotGeometry(w, h, K);
  const bw = geo.plotW / K;

  drawRunProgress(ctx, geo, bw, K);
  drawTokenBars(ctx, geo, d, bw, w);
  axisLabels(ctx, PLOT.padL, geo.plotH, ui.plot.yMax, '', PLOT.padT);

  drawBaselineRef(ctx, geo, w);
  if (d.effective) drawLine(ctx, geo, d.effective, '#38d6c4', [4, 3]);
  drawLine(ctx, geo, d.nominal, '#8b7cff');
  const r = K <= 24 ? 3.5 : K <= 64 ? 2.5 : 0;
  for (let k = 0; k < K; k++) {
    const hot = k === ui.plot.hover || (document.activeElement === canvas && k === ui.plot.focus);
    if (!r && !hot) continue;
    ctx.fillStyle = hot ? '#ffffff' : '#8b7cff';
    ctx.beginPath();
    ctx.arc(geo.x(k), geo.y(d.nominal[k]), hot ? 5 : r, 0, Math.PI * 2);
    ctx.fill();
  }
  ctx.fillStyle = '#8d96aa';
  ctx.font = '10px system-ui, sans-serif';
  ctx.textBaseline = 'top';
  ctx.textAlign = 'center';
  ctx.fillText(`AR step 1 … ${K}`, PLOT.padL + geo.plotW / 2, h - PLOT.padB + 4);
  ctx.textAlign = 'start';
  showReadout(d);
}

/** Shades the AR steps already run and marks the current one. */
function drawRunProgress(ctx, geo, bw, K) {
  const v = ui.vis;
  if (!v || !v.active || v.k < 0 || v.K !== K) return;
  ctx.fillStyle = 'rgba(139,124,255,0.08)';
  ctx.fillRect(PLOT.padL, PLOT.padT, bw * (v.k + 1), geo.plotH);
  if (!v.done && !v.stopped) {
    ctx.fillStyle = 'rgba(56,214,196,0.25)';
    ctx.fillRect(PLOT.padL + bw * v.k, PLOT.padT, bw, geo.plotH);
  }
}

/** During an A/B baseline run, the constant schedule it uses, for comparison. */
function drawBaselineRef(ctx, geo, w) {
  if (!ui.run || ui.run.lane !== 'baseline') return;
  const steps = parseSchedule(ui.run.request.schedule).start;
  const y = geo.y(Math.min(steps, ui.plot.yMax));
  ctx.strokeStyle = '#ffb545';
  ctx.lineWidth = 1.5;
  ctx.setLineDash([6, 4]);
  ctx.beginPath();
  ctx.moveTo(PLOT.padL, y);
  ctx.lineTo(w - PLOT.padR, y);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = '#ffb545';
  ctx.font = '10px system-ui, sans-serif';
  ctx.textBaseline = 'bottom';
  ctx.fillText(`plain MAR: ${steps} every step`, PLOT.padL + 4, y - 2);
}

/** Tokens revealed per step, as faint bars on their own right-hand scale. */
function drawTokenBars(ctx, geo, d, bw, w) {
  const maxTok = Math.max(1, ...d.tokens);
  ctx.fillStyle = 'rgba(95,112,150,0.32)';
  for (let k = 0; k < d.K; k++) {
    const hBar = (d.tokens[k] / maxTok) * geo.plotH * 0.9;
    ctx.fillRect(PLOT.padL + k * bw + bw * 0.15, PLOT.padT + geo.plotH - hBar, Math.max(1, bw * 0.7), hBar);
  }
  ctx.fillStyle = '#6c7894';
  ctx.font = '10px system-ui, sans-serif';
  ctx.textBaseline = 'middle';
  ctx.fillText(`${maxTok}`, w - PLOT.padR + 4, PLOT.padT + geo.plotH * 0.1);
  ctx.fillText('tok', w - PLOT.padR + 4, PLOT.padT + geo.plotH * 0.1 + 11);
}

function drawLine(ctx, geo, values, colour, dash = []) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2;
  ctx.setLineDash(dash);
  ctx.lineJoin = 'round';
  ctx.beginPath();
  values.forEach((s, k) => (k ? ctx.lineTo(geo.x(k), geo.y(s)) : ctx.moveTo(geo.x(k), geo.y(s))));
  ctx.stroke();
  ctx.setLineDash([]);
}

function showReadout(d) {
  const canvas = $('schedule-plot');
  const k = ui.plot.hover >= 0 ? ui.plot.hover : document.activeElement === canvas ? ui.plot.focus : -1;
  const el = $('plot-readout');
  if (k < 0 || k >= d.K) {
    const s = currentSchedule();
    const name = s.kind === 'custom' ? `custom, ${Math.max(...s.custom)} → ${s.custom[s.custom.length - 1]}` : scheduleString(s);
    el.textContent = `${name} · drag the points to draw your own`;
    return;
  }
  // The whole line wraps (never cut off): a phone shows it on two lines.
  const eff = d.effective ? ` (${d.effective[k]} run)` : '';
  const cfg = d.cfg ? ` · cfg ${d.cfg[k].toFixed(2)}` : '';
  el.textContent = `AR step ${k + 1}/${d.K}: ${d.tokens[k]} token${d.tokens[k] === 1 ? '' : 's'} · ${d.nominal[k]} steps${eff}${cfg}`;
}

/** Sets the custom count of AR step k (and the steps a fast drag skipped over). */
function editCurve(k, steps) {
  if (ui.preset !== 'custom') setPreset('custom');
  const value = clamp(steps, MIN_STEPS, MAX_STEPS);
  const from = ui.plot.lastK >= 0 ? ui.plot.lastK : k;
  const lo = Math.min(from, k);
  const hi = Math.max(from, k);
  const startVal = ui.custom[from];
  for (let i = lo; i <= hi; i++) {
    const f = hi === lo ? 1 : Math.abs(i - from) / (hi - lo);
    ui.custom[i] = i === k ? value : Math.round(startVal + (value - startVal) * f);
  }
  ui.plot.lastK = k;
}

function wirePlot() {
  const canvas = $('schedule-plot');
  const geoAt = () => plotGeometry(canvas.clientWidth, canvas.clientHeight, +$('ar-steps').value);
  const local = (e) => {
    const r = canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  };

  canvas.addEventListener('pointerdown', (e) => {
    if (e.button !== 0) return;
    canvas.setPointerCapture(e.pointerId);
    ui.plot.drag = true;
    ui.plot.lastK = -1;
    const [px, py] = local(e);
    const geo = geoAt();
    ui.plot.focus = geo.kAt(px); // keyboard editing continues where the mouse was
    editCurve(geo.kAt(px), geo.stepsAt(py));
    ui.plot.hover = geo.kAt(px);
    settingsChanged({ restart: false });
  });
  canvas.addEventListener('pointermove', (e) => {
    const [px, py] = local(e);
    const geo = geoAt();
    ui.plot.hover = geo.kAt(px);
    if (ui.plot.drag) {
      editCurve(geo.kAt(px), geo.stepsAt(py));
      settingsChanged({ restart: false });
    } else {
      drawPlot();
    }
  });
  const end = () => {
    if (!ui.plot.drag) return;
    ui.plot.drag = false;
    settingsChanged(); // rescale the axis and (auto-)run once the stroke is over
  };
  canvas.addEventListener('pointerup', end);
  canvas.addEventListener('pointercancel', end);
  canvas.addEventListener('pointerleave', () => {
    ui.plot.hover = -1;
    drawPlot();
  });
  canvas.addEventListener('keydown', onPlotKey);
  canvas.addEventListener('focus', drawPlot);
  canvas.addEventListener('blur', drawPlot);
}

/** Keyboard editing: ←/→ choose an AR step, ↑/↓ change its steps (Shift: by 5). */
function onPlotKey(e) {
  const K = +$('ar-steps').value;
  const p = ui.plot;
  const delta = e.shiftKey ? 5 : 1;
  if (e.key === 'ArrowLeft' || e.key === 'ArrowRight') {
    p.focus = clamp(p.focus + (e.key === 'ArrowLeft' ? -1 : 1), 0, K - 1);
    drawPlot();
  } else if (e.key === 'ArrowUp' || e.key === 'ArrowDown') {
    const current = nominalSteps(K)[clamp(p.focus, 0, K - 1)];
    p.lastK = -1;
    editCurve(clamp(p.focus, 0, K - 1), current + (e.key === 'ArrowUp' ? delta : -delta));
    settingsChanged();
  } else {
    return;
  }
  e.preventDefault();
}

// ───────────────────────── your own weights: picker and drag-and-drop ─────────────────────────

async function loadWeightsFile(file) {
  if (!file) return;
  clearTimeout(ui.autoTimer);
  cancelRun('file');
  clearError();
  $('info').hidden = true;
  ui.loading = true;
  ui.loadingFile = true;
  ui.pendingFile = file;
  setState('loading');
  showProgress(0, file.size, `reading ${file.name}`);
  try {
    const bytes = await file.arrayBuffer();
    showProgress(file.size, file.size, `loading ${file.name}`);
    post({ type: 'loadFile', name: file.name, bytes }, [bytes]);
  } catch (err) {
    onError({ where: 'weights', name: file.name, message: `the browser could not read the file (${err.message || err})` });
  }
}

function wireDrop() {
  const overlay = $('drop-overlay');
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes('Files');
  let depth = 0; // dragenter/leave fire for every child element
  document.addEventListener('dragenter', (e) => {
    if (!hasFiles(e)) return;
    depth++;
    overlay.hidden = false;
  });
  document.addEventListener('dragover', (e) => {
    if (hasFiles(e)) e.preventDefault();
  });
  document.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) overlay.hidden = true;
  });
  document.addEventListener('drop', (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    loadWeightsFile(e.dataTransfer.files[0]);
  });
}

// ───────────────────────── start ─────────────────────────

// For the end-to-end test: read-only views of the run state, and a way to make the worker die.
window.disaTest = {
  formatMs,
  vis: () => (ui.vis ? { runId: ui.vis.runId, k: ui.vis.k, highlighted: ui.vis.current.length, stopped: ui.vis.stopped || null, done: ui.vis.done } : null),
  crashWorker: () => worker.postMessage({ type: 'simulateCrash' }),
  setInterruptible: (on) => worker.postMessage({ type: 'setInterruptible', on }),
};

function main() {
  setPreset('linear');
  syncOutputs();
  wireControls();
  wirePlot();
  wireDrop();
  setState('loading');
  resetVis(readRequest(), 'main', false);
  drawAll();
  let pending = 0; // redraw once per frame however many boxes changed
  const observer = new ResizeObserver(() => {
    if (!pending) pending = requestAnimationFrame(() => ((pending = 0), drawAll()));
  });
  for (const id of ['stage-overlay', 'order-map', 'heat-map', 'timing-chart', 'schedule-plot']) observer.observe($(id));
  // Wide screens size the visualization to the viewport below the top bar and the banners.
  const chrome = () =>
    document.documentElement.style.setProperty(
      '--chrome-h',
      `${document.querySelector('.topbar').offsetHeight + document.querySelector('.banners').offsetHeight}px`,
    );
  const chromeObserver = new ResizeObserver(chrome);
  chromeObserver.observe(document.querySelector('.topbar'));
  chromeObserver.observe(document.querySelector('.banners'));
  showBaselineNote();
  startWorker({});
}

main();

// Teaching view (teach.js): the worker, the last run's request and the page state; it gets the
// worker's `teach` replies.
window.disaHost = { post: (m) => post(m), request: () => (ui.vis ? ui.vis.request : readRequest()), model: () => ui.model, state: () => ui.state, onTeach: null };
handlers.teach = (msg) => window.disaHost.onTeach && window.disaHost.onTeach(msg);
