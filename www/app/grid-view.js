// The run's views: the token grid over the preview, the generation-order and steps-per-token
// maps, the live counters, the timing chart and the replay. They show the worker's step events
// as they come; the counters' totals are the library's (each event carries the head calls and
// token·steps so far, the plan the totals to reach).

import { $, clamp, ui, MAX_REPLAY_BYTES } from './state.js';
import { formatMs } from '../format.js';
import { VIRIDIS, MAGMA, ramp, fitCanvas, drawPixels, clearCanvas, niceCeil, axisLabels } from './draw.js';
import { drawPlot, shortSchedule, scheduleLabel } from './schedule-editor.js';

/**
 * Starts showing a run of `request` on `lane` (`active`: it runs now; else the views just follow
 * the settings). `plan`: `{headCalls, tokenSteps, maxSteps}` of that request from the library,
 * or null until it arrives (see attachPlan).
 */
export function resetVis(request, lane, active, plan = null) {
  const grid = ui.model ? ui.model.grid : 8;
  ui.vis = {
    active,
    done: false,
    stopped: null, // why the run stopped: 'stop' | 'settings' | 'file' | 'backend' | 'crash'
    runId: 0,
    lane,
    grid,
    K: request.arSteps,
    k: -1,
    revealK: new Int16Array(grid * grid).fill(-1), // AR step that revealed each token
    cellSteps: new Int16Array(grid * grid), // diffusion steps spent on each token
    current: [],
    flashAt: 0,
    timings: [],
    headCalls: 0,
    tokenSteps: 0,
    last: null, // the newest step event
    totalMs: 0,
    image: null,
    request,
    history: [], // { ev, preview } of every step, for the replay
    heatMax: 0, // the heat map's top: the plan's largest step count
    plan: null, // { headCalls, tokenSteps } the run will reach
  };
  if (active) showLaneTitle(lane, request, false);
  else $('lane-label').textContent = 'Token grid';
  clearCanvas($('stage-preview'));
  $('latency').textContent = active ? '0 ms' : '–';
  $('latency-note').textContent = active ? 'running…' : '\u00a0';
  $('heat-min').textContent = '0';
  if (plan) attachPlan(plan, plan.maxSteps);
  else showCounters();
}

/** The library's plan of the shown request arrived: its totals and largest step count. */
export function attachPlan(totals, maxSteps) {
  const v = ui.vis;
  v.plan = { headCalls: totals.headCalls, tokenSteps: totals.tokenSteps };
  v.heatMax = maxSteps;
  $('heat-max').textContent = String(maxSteps);
  showCounters();
}

/** Caption of the token grid: which lane runs, with which schedule. */
export function showLaneTitle(lane, request, done) {
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
  span.textContent = scheduleLabel(request);
  el.append(span);
}

/** One step event (src/web.rs StepDto) and its preview. */
export function onStep(ev, preview) {
  const v = ui.vis;
  v.k = ev.k;
  v.K = ev.arSteps || v.K;
  for (const p of ev.positions || []) {
    v.revealK[p] = ev.k;
    v.cellSteps[p] = ev.effectiveSteps;
  }
  v.current = ev.positions || [];
  v.flashAt = performance.now();
  v.timings[ev.k] = { tf: ev.transformerMs || 0, head: ev.headMs || 0, gpu: ev.headGpuMs };
  v.headCalls = ev.headCalls;
  v.tokenSteps = ev.tokenSteps;
  v.last = ev;
  if (!v.heatMax) $('heat-max').textContent = String(Math.max(...v.cellSteps)); // until the plan is in
  const keep = preview && preview.width * preview.height * 4 * v.K <= MAX_REPLAY_BYTES;
  v.history.push({ ev, preview: keep ? preview : null });
  if (preview) drawPixels($('stage-preview'), preview);
  showCounters();
  drawAll();
  animateFlash();
}

export function showCounters() {
  const v = ui.vis;
  const plan = v.plan;
  $('step-counter').textContent = `${v.k + 1}/${v.K}`;
  $('steps-used').textContent = v.last && v.active ? String(v.last.effectiveSteps) : '–';
  $('steps-nominal').textContent = v.last && v.active ? `requested ${v.last.nominalSteps}` : '\u00a0';
  $('step-tokens').textContent = v.last && v.active ? `+${v.current.length || v.last.positions.length} tokens` : '\u00a0';
  $('head-calls').textContent = String(v.headCalls);
  $('token-steps').textContent = String(v.tokenSteps);
  $('head-calls-plan').textContent = plan ? `of ${plan.headCalls}` : '\u00a0';
  $('token-steps-plan').textContent = plan ? `of ${plan.tokenSteps}` : '\u00a0';
}

// ───────────────────────── replay: the last run again, slowly enough to follow ─────────────────────────

export function replay() {
  const old = ui.vis;
  if (!old || !old.done || ui.run) return;
  stopReplay();
  resetVis(old.request, old.lane, true, old.plan && { ...old.plan, maxSteps: old.heatMax });
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

export function stopReplay() {
  clearInterval(ui.replayTimer);
  ui.replayTimer = 0;
}

// ───────────────────────── drawing ─────────────────────────

export function drawAll() {
  drawStage();
  drawMap($('order-map'), 'order');
  drawMap($('heat-map'), 'heat');
  drawTiming();
  drawPlot();
}

/** The preview with the token grid over it: masked cells dimmed, the newest highlighted. */
export function drawStage() {
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

/** The order map (AR step of each token) or the heat map (diffusion steps each token got). */
function drawMap(canvas, kind) {
  const { ctx, w } = fitCanvas(canvas);
  const v = ui.vis;
  if (!v) return;
  const g = v.grid;
  const cell = w / g;
  const labels = cell >= 15;
  const heatMax = v.heatMax || Math.max(1, ...v.cellSteps);
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
    const t = kind === 'order' ? (v.K > 1 ? k / (v.K - 1) : 1) : v.cellSteps[p] / heatMax;
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

/** Stacked bars of transformer and head milliseconds per AR step. */
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
  // The fused head's kernels timed on the GPU itself (timestamp queries), where every step
  // so far has that figure: the rest of the head's time is uploads, submits and read-backs.
  const done = times.filter(Boolean);
  const gpu = done.length && done.every((t) => typeof t.gpu === 'number')
    ? ` · its kernels ${formatMs(done.reduce((a, t) => a + t.gpu, 0))} on the GPU`
    : '';
  $('timing-sum').textContent = times.length
    ? `Σ transformer ${formatMs(sumTf)} · Σ head ${formatMs(sumHead)} (${Math.round((100 * sumHead) / Math.max(1e-9, sumTf + sumHead))}%)${gpu}`
    : 'Each bar: one AR step, split into transformer and head time.';
}
