// The DiSA schedule: its controls' state, the worker's plan of the current request, and the
// editable plot (requested and run diffusion steps and tokens per AR step). Every number the
// plot and the totals show is the library's (`plan` in src/web.rs); the page only holds what the
// reader set: a preset with start/end, or a custom curve drawn on the plot.

import { $, clamp, ui, MIN_STEPS, MAX_STEPS, PLAN_DELAY_MS } from './state.js';
import { post } from './worker-client.js';
import { fitCanvas, niceCeil, axisLabels } from './draw.js';
import { readRequest, settingsChanged } from './settings.js';
import { attachPlan } from './grid-view.js';

// ───────────────────────── the reader's schedule ─────────────────────────

/** The editor's schedule: `{kind, start, end, custom}`. */
function currentSchedule() {
  return {
    kind: ui.preset,
    start: +$('start-steps').value,
    end: +$('end-steps').value,
    custom: ui.custom,
  };
}

/** The editor's schedule in the library's text form (a request's `schedule`). */
export function scheduleString(s = currentSchedule()) {
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
export const shortSchedule = (s) => (s.startsWith('custom:') ? 'custom' : s);
/** A request's schedule with its clip, when the request sets one (the A/B baseline may). */
export const scheduleLabel = (r) => shortSchedule(r.schedule) + (r.clip != null ? ` · clip ${r.clip}` : '');

/** Stretches the reader's custom curve to a new number of AR steps (linear interpolation). */
export function resample(values, K) {
  if (values.length === K) return values.slice();
  if (values.length === 1 || K === 1) return Array(K).fill(values[0]);
  return Array.from({ length: K }, (_, i) => {
    const x = (i * (values.length - 1)) / (K - 1);
    const a = Math.floor(x);
    const b = Math.min(values.length - 1, a + 1);
    return Math.round(values[a] + (values[b] - values[a]) * (x - a));
  });
}

export function setPreset(kind) {
  const K = +$('ar-steps').value;
  if (kind === 'custom' && ui.preset !== 'custom' && !(ui.custom && ui.custom.length === K)) {
    // Start the custom curve from whatever the plot shows, so a drag edits rather than resets.
    const shown = plotData().nominal;
    ui.custom = shown ? shown.slice() : Array(K).fill(+$('start-steps').value);
  }
  ui.preset = kind;
  $('preset').value = kind;
  const custom = kind === 'custom';
  $('start-steps').disabled = custom;
  $('end-steps').disabled = custom || kind === 'constant';
  $('start-label').textContent = kind === 'constant' ? 'steps' : 'start';
}

/** Shows a schedule the library took apart (a model's `defaultSchedule`: {kind, start, end, custom}). */
export function applyScheduleParts(p) {
  if (p.kind === 'custom') {
    ui.custom = resample(p.custom, +$('ar-steps').value);
  } else {
    $('start-steps').value = String(p.start);
    $('end-steps').value = String(p.end ?? Math.min(p.start, +$('end-steps').value));
  }
  setPreset(p.kind);
}

// ───────────────────────── plans from the worker ─────────────────────────

/** What a plan depends on: requests with the same key have the same plan. */
const planKey = (req) => `${req.arSteps}|${req.schedule}|${req.cfg}|${req.cfgSchedule}`;

/** The worker's plan of `request`, when it has answered for these settings; else null. */
export function planFor(request) {
  return ui.plan && ui.plan.key === planKey(request) ? ui.plan.plan : null;
}

export function requestPlan() {
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

/** Calls `fn(plan)` with the current request's plan, now or when it arrives (`fn(null)`: it failed). */
export function whenPlanned(fn) {
  const key = planKey(readRequest());
  const plan = planFor(readRequest());
  if (plan) return fn(plan);
  ui.planWaiters.push({ key, fn });
  requestPlan();
}

function flushWaiters(key, plan) {
  const waiters = ui.planWaiters;
  ui.planWaiters = [];
  for (const w of waiters) if (w.key === key) w.fn(plan);
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

export function acceptPlan(msg) {
  const key = planReplyKey(msg);
  if (key !== planKey(readRequest())) return; // a newer request is on its way
  ui.plan = { key, plan: msg.plan };
  const v = ui.vis;
  if (v && v.lane !== 'baseline' && planKey(v.request) === key) attachPlan(msg.plan, msg.plan.maxSteps);
  flushWaiters(key, msg.plan);
  drawPlot();
  showPlanTotals();
}

/** Whether a plan error answers the newest request (older ones are stale). */
export function acceptPlanError(msg) {
  const key = planReplyKey(msg);
  if (key !== planKey(readRequest())) return false;
  flushWaiters(key, null);
  return true;
}

/**
 * What the plot shows, per AR step: `nominal` (requested) and `effective` (run) steps, `tokens`
 * revealed and `cfg`, with the `plan` they come from. Until the worker answers for the current
 * settings: the reader's own curve (custom) or the last plan's for the same K, and no totals.
 */
function plotData() {
  const req = readRequest();
  const K = req.arSteps;
  const plan = planFor(req);
  if (plan && plan.steps.length === K) {
    return {
      K,
      plan,
      nominal: plan.steps.map((s) => s.nominalSteps),
      effective: plan.steps.map((s) => s.effectiveSteps),
      tokens: plan.steps.map((s) => s.tokens),
      cfg: plan.steps.map((s) => s.cfg),
    };
  }
  const last = ui.plan && ui.plan.plan.steps.length === K ? ui.plan.plan : null;
  const own = ui.preset === 'custom' && ui.custom && ui.custom.length === K;
  return {
    K,
    plan: null,
    nominal: own ? ui.custom.slice() : last ? last.steps.map((s) => s.nominalSteps) : null,
    effective: null,
    tokens: last ? last.steps.map((s) => s.tokens) : null, // they depend on K only
    cfg: null,
  };
}

/** The plan's totals under the plot and in the explanation (kept until the new plan arrives). */
function showPlanTotals() {
  const p = plotData().plan;
  if (!p) return;
  const base = p.baseline;
  const ratio = base.official.headCalls / Math.max(1, p.headCalls);
  const el = $('plan-totals');
  el.classList.remove('err');
  el.innerHTML =
    `Plan: <b>${p.headCalls}</b> head calls · <b>${p.tokenSteps}</b> token·steps. ` +
    (ui.preset === 'constant'
      ? 'This is plain MAR.'
      : `Plain MAR at ${base.steps} steps, no clip: ${base.official.headCalls} · ${base.official.tokenSteps} → <span class="good">${ratio.toFixed(1)}× fewer calls</span>`);
  $('explain-plan').textContent =
    ui.preset === 'constant'
      ? 'at the current settings both are plain MAR'
      : `at the current settings (K = ${p.steps.length}, ${shortSchedule(scheduleString())}) the plan makes ${ratio.toFixed(1)}× fewer head calls than plain MAR at ${base.steps} steps`;
}

export function showPlanError(text) {
  const el = $('plan-totals');
  el.textContent = `Plan error: ${text}`;
  el.classList.add('err');
}

// ───────────────────────── the plot (live and editable) ─────────────────────────

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
    valueAt: (py) => Math.round(((PLOT.padT + plotH - py) / plotH) * yMax),
  };
}

export function drawPlot() {
  const canvas = $('schedule-plot');
  const { ctx, w, h } = fitCanvas(canvas);
  const d = plotData();
  const K = d.K;
  if (!ui.plot.drag && d.nominal) ui.plot.yMax = clamp(niceCeil(Math.max(10, ...d.nominal) * 1.2), 10, MAX_STEPS);
  const geo = plotGeometry(w, h, K);
  const bw = geo.plotW / K;

  drawRunProgress(ctx, geo, bw, K);
  if (d.tokens) drawTokenBars(ctx, geo, d, bw, w);
  axisLabels(ctx, PLOT.padL, geo.plotH, ui.plot.yMax, '', PLOT.padT);

  drawBaselineRef(ctx, geo, w);
  if (d.effective) drawLine(ctx, geo, d.effective, '#38d6c4', [4, 3]);
  if (d.nominal) {
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
  if (!ui.run || ui.run.lane !== 'baseline' || !ui.ab || !ui.ab.plan) return;
  const steps = ui.ab.plan.baseline.steps;
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
  if (k < 0 || k >= d.K || !d.nominal) {
    const s = currentSchedule();
    const name = s.kind === 'custom' ? `custom, ${Math.max(...s.custom)} → ${s.custom[s.custom.length - 1]}` : scheduleString(s);
    el.textContent = `${name} · drag the points to draw your own`;
    return;
  }
  // The whole line wraps (never cut off): a phone shows it on two lines.
  const tokens = d.tokens ? `${d.tokens[k]} token${d.tokens[k] === 1 ? '' : 's'} · ` : '';
  const eff = d.effective ? ` (${d.effective[k]} run)` : '';
  const cfg = d.cfg ? ` · cfg ${d.cfg[k].toFixed(2)}` : '';
  el.textContent = `AR step ${k + 1}/${d.K}: ${tokens}${d.nominal[k]} steps${eff}${cfg}`;
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

export function wirePlot() {
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
    editCurve(geo.kAt(px), geo.valueAt(py));
    ui.plot.hover = geo.kAt(px);
    settingsChanged({ restart: false });
  });
  canvas.addEventListener('pointermove', (e) => {
    const [px, py] = local(e);
    const geo = geoAt();
    ui.plot.hover = geo.kAt(px);
    if (ui.plot.drag) {
      editCurve(geo.kAt(px), geo.valueAt(py));
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
    const shown = plotData().nominal;
    if (!shown) return; // the plan is on its way
    const k = clamp(p.focus, 0, K - 1);
    p.lastK = -1;
    editCurve(k, shown[k] + (e.key === 'ArrowUp' ? delta : -delta));
    settingsChanged();
  } else {
    return;
  }
  e.preventDefault();
}
