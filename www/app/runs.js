// Runs: Generate, the A/B pairs, Stop and cancels, a finished run's result (and its PNG), and the
// switch to the CPU backend. The worker runs them; the page keeps only the newest one current.

import { $, clamp, ui } from './state.js';
import { formatMs } from '../format.js';
import { post, record } from './worker-client.js';
import { drawPixels } from './draw.js';
import { setState, idleState, clearError, showError, showBackend, showProgress } from './status.js';
import { readRequest } from './settings.js';
import { planFor, whenPlanned, scheduleLabel } from './schedule-editor.js';
import { resetVis, showLaneTitle, showCounters, drawAll, stopReplay } from './grid-view.js';
import { showAbRunning, showAbBaseline, showAbResult, showAbDone, showAbInterrupted } from './ab.js';

/** Starts a run: 'single' (Generate) or 'ab' (plain MAR, then DiSA, for the chosen rounds). */
export function startRun(mode) {
  clearTimeout(ui.autoTimer);
  if (!ui.model || ui.loading) return;
  cancelRun();
  clearError();
  ui.lastMode = mode;
  ui.hasRun = true;
  const request = readRequest();
  if (mode !== 'ab') {
    launch('main', request);
    return;
  }
  // Plain MAR at the request's largest step count (the plan's `baseline`), either as the
  // official code runs it (no clip) or with DiSA's clip, so that only the step schedule differs
  // between the two images. The pair alternates for `rounds` rounds: single timings swing, the
  // median of the ratios does not.
  const rounds = clamp(+$('ab-rounds').value || 1, 1, 9);
  const ab = { request, plan: null, base: null, rounds, round: 0, baseline: [], disa: [] };
  ui.ab = ab;
  showAbRunning();
  setState('running');
  whenPlanned((plan) => {
    if (ui.ab !== ab) return; // stopped or replaced while the plan was on its way
    if (!plan) {
      dropRun();
      showError('The A/B comparison could not start: these settings cannot run (see the plan error under the plot).');
      setState(idleState());
      return;
    }
    ab.plan = plan;
    ab.base = { ...request, schedule: plan.baseline.schedule };
    if ($('ab-baseline').value === 'clip') ab.base.clip = plan.baseline.disaClip;
    launch('baseline', ab.base);
  });
}

/** The library's totals for a lane's request, `{headCalls, tokenSteps, maxSteps}`, or null. */
function lanePlan(lane, request) {
  if (lane === 'baseline') {
    const b = ui.ab.plan.baseline;
    return { ...(request.clip != null ? b.clipped : b.official), maxSteps: b.steps };
  }
  const p = lane === 'disa' ? ui.ab.plan : planFor(request);
  return p && { headCalls: p.headCalls, tokenSteps: p.tokenSteps, maxSteps: p.maxSteps };
}

function launch(lane, request) {
  stopReplay();
  $('replay').hidden = true;
  const runId = ui.nextRunId++;
  ui.run = { runId, lane, request, t0: performance.now() };
  resetVis(request, lane, true, lanePlan(lane, request));
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
export function cancelRun(reason = null) {
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

export function dropRun() {
  ui.run = null;
  if (ui.ab) $('ab-card').classList.remove('running');
  ui.ab = null;
  clearInterval(ui.ticker);
}

/** The worker has really stopped a cancelled run: how long that took goes to the event log. */
export function cancelConfirmed(runId) {
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

/** The current run finished (`done`: image, times, the library's head calls and token·steps). */
export function onDone(msg) {
  const v = ui.vis;
  const { lane, request } = ui.run;
  v.done = true;
  v.current = [];
  v.headCalls = msg.headCalls;
  v.tokenSteps = msg.tokenSteps;
  v.totalMs = msg.totalMs;
  v.image = msg.image;
  clearInterval(ui.ticker);
  drawPixels($('stage-preview'), msg.image);
  showCounters();
  $('latency').textContent = formatMs(msg.totalMs);
  $('latency-note').textContent = 'total';
  showLaneTitle(lane, request, true);
  noteSpeed(msg);

  const ab = ui.ab;
  if (lane === 'baseline' && ab) {
    ab.baseline.push(msg);
    showAbBaseline(ab, msg);
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
  showResult(msg, request);
  if (lane === 'disa' && ab) showAbDone(ab);
  $('replay').hidden = false;
  ui.run = null;
  ui.ab = null;
  drawAll();
  setState('done');
}

/** The final image, its caption, and the "save PNG" link with that image as a PNG file. */
function showResult(msg, request) {
  const canvas = $('final-canvas');
  drawPixels(canvas, msg.image);
  $('final-meta').textContent = `${msg.image.width}×${msg.image.height} · ${formatMs(msg.totalMs)}`;
  const link = $('save-png');
  link.href = canvas.toDataURL('image/png');
  link.download = `disa-class${request.classLabel}-seed${request.seed}.png`;
  link.hidden = false;
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

/** Switches the running worker to the CPU backend, keeping the model and the settings. */
export function switchToCpu() {
  if (!ui.model) return;
  const wasSoftware = ui.backendInfo && ui.backendInfo.software;
  ui.resumeMode = ui.run || ui.ab ? ui.lastMode : null;
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
