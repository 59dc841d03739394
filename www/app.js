// DiSA demo page: controls, the live schedule plot, the token-grid visualization and A/B runs.
// All model work happens in worker.js; the messages are documented in worker-protocol.md.

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

const worker = new Worker('./worker.js', { type: 'module' });

function post(msg, transfer) {
  worker.postMessage(msg, transfer || []);
}

function record(msg) {
  // Keep the event log light: the test needs sizes, not megabytes of pixels.
  const copy = { ...msg };
  if (msg.preview) copy.preview = { width: msg.preview.width, height: msg.preview.height };
  if (msg.image) copy.image = { width: msg.image.width, height: msg.image.height };
  window.disaEvents.push(copy);
  if (window.disaEvents.length > MAX_EVENTS) window.disaEvents.shift();
}

const isCurrent = (runId) => ui.run !== null && runId === ui.run.runId;

worker.onmessage = (e) => {
  const msg = e.data || {};
  const handler = handlers[msg.type];
  if (handler) handler(msg);
};

// An uncaught error inside the worker (or a worker.js that fails to load): blame the phase we are in.
worker.onerror = (e) => {
  e.preventDefault();
  const message = e.message || 'the worker script failed to load (worker.js)';
  const where = !ui.model ? 'init' : ui.run ? 'generate' : 'worker';
  handlers.error({ type: 'error', where, message, runId: ui.run ? ui.run.runId : undefined });
};

const handlers = {
  backend(msg) {
    record(msg);
    showBackend(msg.info || {});
    if (ui.recovering && ui.model) endLoading(); // the worker keeps the model across a fallback
  },
  progress(msg) {
    showProgress(msg.loaded, msg.total, msg.phase);
  },
  model(msg) {
    window.disaModelInfo = msg.info; // read by the end-to-end test
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
    if (!isCurrent(msg.runId)) return;
    record(msg);
    onDone(msg);
  },
  error(msg) {
    if (msg.runId != null && !isCurrent(msg.runId)) return;
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
  ui.recovering = false;
  $('progress-wrap').hidden = true;
  setState(idleState());
  if (ui.resumeMode) {
    const mode = ui.resumeMode;
    ui.resumeMode = null;
    startRun(mode);
  }
}

function showError(text) {
  $('error').textContent = text;
  $('error-wrap').hidden = false;
}

function clearError() {
  $('error-wrap').hidden = true;
  $('error').textContent = '';
}

function onError(msg) {
  const text = msg.message || 'unknown error';
  switch (msg.where) {
    case 'plan':
      showPlanError(text);
      return;
    case 'weights':
      // The worker keeps the previous model: report and carry on.
      ui.loading = false;
      ui.loadingFile = false;
      $('progress-wrap').hidden = true;
      showError(
        `Could not load those weights: ${text}` +
          (ui.model ? ` — still using “${ui.model.name}”.` : ''),
      );
      setState(idleState());
      return;
    case 'device':
      ui.resumeMode = ui.run ? ui.lastMode : null;
      dropRun();
      ui.loading = true;
      ui.recovering = true;
      showError(`The GPU device was lost (${text}). Switching backend…`);
      setState('loading');
      return;
    case 'panic':
      // The wasm module aborted: its state is gone, only a reload brings it back.
      dropRun();
      ui.loading = false;
      showError(`The model worker stopped on an internal error: ${text} Reload the page to start again.`);
      setState('error');
      return;
    case 'generate':
      dropRun();
      showError(`Generation failed: ${text}`);
      setState('error');
      return;
    default: // init, or 'worker' (an uncaught worker error between runs)
      ui.loading = false;
      $('progress-wrap').hidden = true;
      showError(msg.where === 'init' ? `Could not start the demo: ${text}` : `Worker error: ${text}`);
      setState(ui.model ? idleState() : 'error');
  }
}

// ───────────────────────── backend, progress, model ─────────────────────────

function showBackend(info) {
  const backend = String(info.backend || 'unknown').toLowerCase();
  const el = $('backend');
  el.textContent = info.adapter ? `${backend} · ${info.adapter}` : backend;
  el.title = `Backend: ${backend}${info.adapter ? `, adapter: ${info.adapter}` : ''}`;
  el.className = `badge ${backend === 'webgpu' && !info.software ? 'gpu' : 'cpu'}`;

  const notes = [];
  if (backend === 'cpu') {
    notes.push(
      info.notice ||
        'WebGPU is not available here, so the demo runs on the CPU fallback: expect it to be much slower.',
    );
  } else if (info.notice) {
    notes.push(info.notice);
  }
  if (info.software) {
    notes.push(
      `Warning: the GPU adapter “${info.adapter || 'unknown'}” is a software renderer, so WebGPU runs on the CPU here.`,
    );
  }
  $('notice').textContent = notes.join(' ');
  $('notice').hidden = notes.length === 0;
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
    cancelRun();
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
    if (ui.lastMode === 'ab') scheduleAutoRun();
  });
  $('stop').addEventListener('click', () => {
    clearTimeout(ui.autoTimer);
    cancelRun();
    setState(idleState());
  });
  $('error-dismiss').addEventListener('click', clearError);
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
  if (!ui.model || ui.planTimer) return;
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
    // clip, so that only the step schedule differs between the two images.
    const base = { ...request, schedule: `constant:${baselineSteps()}` };
    if ($('ab-baseline').value === 'clip') base.clip = DISA_CLIP;
    ui.ab = { request, base, results: {} };
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
  post({ type: 'generate', runId, request, lane });
  setState('running');
  clearInterval(ui.ticker);
  ui.ticker = setInterval(tickLatency, 100);
  drawAll();
}

/** Tells the worker to stop the current run; its late messages are then ignored. */
function cancelRun() {
  stopReplay();
  if (ui.run) post({ type: 'cancel', runId: ui.run.runId });
  dropRun();
}

function dropRun() {
  ui.run = null;
  if (ui.ab) $('ab-card').classList.remove('running');
  ui.ab = null;
  clearInterval(ui.ticker);
}

function tickLatency() {
  if (ui.run) $('latency').textContent = `${Math.round(performance.now() - ui.run.t0)} ms`;
}

/** Caption of the token grid: which lane runs, with which schedule. */
function showLaneTitle(lane, request, done) {
  const s = scheduleLabel(request);
  const what = lane === 'baseline' ? 'A/B 1/2 · plain MAR' : lane === 'disa' ? 'A/B 2/2 · DiSA' : done ? 'Done' : 'Generating';
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
  $('latency').textContent = `${Math.round(msg.totalMs)} ms`;
  $('latency-note').textContent = 'total';
  showLaneTitle(lane, ui.run.request, true);

  if (lane === 'baseline' && ui.ab) {
    ui.ab.results.baseline = msg;
    drawPixels($('ab-baseline-canvas'), msg.image);
    $('ab-baseline-meta').textContent = abMeta(ui.ab.base, msg);
    launch('disa', ui.ab.request); // same seed, now with the DiSA schedule
    return;
  }
  drawPixels($('final-canvas'), msg.image);
  $('final-meta').textContent = `${msg.image.width}×${msg.image.height} · ${Math.round(msg.totalMs)} ms`;
  $('save-png').hidden = false;
  if (lane === 'disa' && ui.ab) showAbResult(msg);
  $('replay').hidden = false;
  ui.run = null;
  ui.ab = null;
  drawAll();
  setState('done');
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
  $('latency').textContent = `${Math.round(old.totalMs)} ms`;
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
  $('head-call-ratio').textContent = '…';
  $('ab-baseline-meta').textContent = 'running…';
  $('ab-disa-meta').textContent = 'waiting…';
  clearCanvas($('ab-baseline-canvas'));
  clearCanvas($('ab-disa-canvas'));
}

function abMeta(request, msg) {
  return `${scheduleLabel(request)}\n${Math.round(samplingMs(msg))} ms sampling\n${msg.headCalls} calls`;
}

/** Transformer + head time of a run: the work DiSA changes (previews are decoded apart). */
const samplingMs = (msg) => (msg.samplingMs != null ? msg.samplingMs : msg.totalMs);

function showAbResult(msg) {
  const base = ui.ab.results.baseline;
  drawPixels($('ab-disa-canvas'), msg.image);
  $('ab-disa-meta').textContent = abMeta(ui.ab.request, msg);
  $('speedup').textContent = `${(samplingMs(base) / Math.max(1e-6, samplingMs(msg))).toFixed(2)}×`;
  $('speedup').classList.add('has');
  $('head-call-ratio').textContent = `${(base.headCalls / Math.max(1, msg.headCalls)).toFixed(2)}×`;
  $('ab-card').classList.remove('running');
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
    ? `Σ transformer ${Math.round(sumTf)} ms · Σ head ${Math.round(sumHead)} ms (${Math.round((100 * sumHead) / Math.max(1e-9, sumTf + sumHead))}%)`
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
  if (!v.done) {
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
    el.textContent = `${scheduleString().slice(0, 60)} · drag the points to draw your own`;
    return;
  }
  const eff = d.effective ? `, ${d.effective[k]} run` : '';
  const cfg = d.cfg ? ` · cfg ${d.cfg[k].toFixed(2)}` : '';
  el.textContent = `step ${k + 1}/${d.K}: ${d.tokens[k]} tokens · ${d.nominal[k]} steps${eff}${cfg}`;
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
  cancelRun();
  clearError();
  ui.loading = true;
  ui.loadingFile = true;
  setState('loading');
  showProgress(0, file.size, `reading ${file.name}`);
  try {
    const bytes = await file.arrayBuffer();
    showProgress(file.size, file.size, `loading ${file.name}`);
    post({ type: 'loadFile', name: file.name, bytes }, [bytes]);
  } catch (err) {
    ui.loadingFile = false;
    onError({ where: 'weights', message: `could not read ${file.name}: ${err.message || err}` });
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
  post({ type: 'init', weightsUrl: 'assets/model.safetensors', forceCpu });
}

main();
