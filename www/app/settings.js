// The controls: the request they describe, what happens when one changes (a new plan, the stale
// run cancelled, auto-run), and a model's arrival (its classes, limits and suggested settings).

import { $, clamp, ui, AUTO_RUN_DELAY_MS, forceCpu } from './state.js';
import { setState, idleState, clearError, showInfo } from './status.js';
import {
  scheduleString, shortSchedule, resample, setPreset, applyScheduleParts, requestPlan, drawPlot, planFor,
} from './schedule-editor.js';
import { resetVis, drawAll, drawStage, replay } from './grid-view.js';
import { startRun, cancelRun } from './runs.js';
import { showBaselineNote } from './ab.js';

/** The request the controls describe (worker-protocol.md `request`). */
export function readRequest() {
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

export function syncOutputs() {
  $('ar-steps-out').value = $('ar-steps').value;
  $('cfg-out').value = (+$('cfg').value).toFixed(1);
  $('temperature-out').value = (+$('temperature').value).toFixed(2);
  $('start-steps-out').value = $('start-steps').value;
  $('end-steps-out').value = ui.preset === 'constant' ? '—' : $('end-steps').value;
}

/** The views follow the settings while nothing runs (with the plan, when the worker has it). */
export function followSettings() {
  const request = readRequest();
  const p = planFor(request);
  resetVis(request, 'main', false, p && { headCalls: p.headCalls, tokenSteps: p.tokenSteps, maxSteps: p.maxSteps });
}

/** Any setting changed: re-plan, cancel the stale run, maybe start a fresh one. */
export function settingsChanged({ restart = true } = {}) {
  syncOutputs();
  requestPlan();
  if (ui.run || ui.ab) {
    cancelRun('settings');
    setState(idleState());
  }
  if (ui.model && ui.vis && !ui.vis.active) {
    followSettings(); // nothing shown yet: follow the new K and plan
    drawAll();
  } else {
    drawPlot();
  }
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

export function wireControls() {
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

  const cpuLink = $('cpu-link');
  if (forceCpu) {
    cpuLink.textContent = 'Use WebGPU when available';
    cpuLink.href = location.pathname;
  }
}

// ───────────────────────── a model arrives ─────────────────────────

/**
 * The memory the weights take, as the file stores them: Burn's modules plus the fused WebGPU
 * kernels' own copies. Returns the badge's short text and its tooltip.
 */
function weightsMemory(info) {
  const mb = (bytes) => `${(bytes / 1e6).toFixed(2)} MB`;
  const parts = [[info.modelWeightBytes, 'the model'], [info.fusedHead?.weightBytes, 'the fused head kernels'],
    [info.fusedTransformer?.weightBytes, 'the fused transformer kernels']].filter(([b]) => b > 0);
  const total = parts.reduce((a, [b]) => a + b, 0);
  return { text: `${mb(total)} of weights`, title: `Weights in memory: ${parts.map(([b, what]) => `${mb(b)} for ${what}`).join(', ')}` };
}

/** A `model` message (src/web.rs ModelInfo): classes, the AR-step limit, its suggested settings. */
export function applyModel(info) {
  // Fresh defaults for a new model; a re-announce after a device fallback keeps the settings.
  const fresh = ui.model === null || ui.loadingFile;
  const prevClass = +$('class').value || 0;
  // A loaded file brings its own defaults: keep the user's settings to offer them back.
  const before = ui.model !== null && ui.loadingFile ? snapshotSettings() : null;
  ui.model = info;
  ui.loadingFile = false;
  ui.plan = null; // plans of the previous model do not apply
  const weights = weightsMemory(info);
  $('model-info').textContent = `${info.name} · ${info.grid}×${info.grid} tokens · ${info.imageSize}px · ${weights.text}`;
  $('model-info').title = `Loaded model. ${weights.title}`;

  fillClasses(info, fresh ? 0 : prevClass);
  $('ar-steps').max = String(info.seqLen);
  if (fresh) applyDefaults(info);
  if (+$('ar-steps').value > info.seqLen) $('ar-steps').value = String(info.seqLen);
  if (ui.preset === 'custom') ui.custom = resample(ui.custom, +$('ar-steps').value);
  syncOutputs();
  if (!ui.run) followSettings();
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

/** The model's suggested settings (`defaults`; the schedule as the library took it apart). */
function applyDefaults(info) {
  const d = info.defaults || {};
  if (d.arSteps) $('ar-steps').value = String(clamp(d.arSteps, 1, info.seqLen));
  if (d.cfg != null) $('cfg').value = String(d.cfg);
  if (d.cfgSchedule) $('cfg-schedule').value = d.cfgSchedule;
  if (d.temperature != null) $('temperature').value = String(d.temperature);
  if (info.defaultSchedule) applyScheduleParts(info.defaultSchedule);
}
