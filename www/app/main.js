// DiSA demo page, the entry module: the worker's messages, errors and crashes, loading the
// reader's weights, and the start. All model work happens in ../worker.js (messages:
// ../worker-protocol.md); the page's modules are listed in ../README.md.

import { $, ui, forceCpu, MAX_RESTARTS_PER_MINUTE } from './state.js';
import { formatMs } from '../format.js';
import { startWorker, stopWorker, post, record } from './worker-client.js';
import { setState, idleState, showError, clearError, showBackend, showProgress } from './status.js';
import { readRequest, syncOutputs, wireControls, applyModel, followSettings } from './settings.js';
import { setPreset, wirePlot, requestPlan, acceptPlan, acceptPlanError, showPlanError } from './schedule-editor.js';
import { onStep, drawAll } from './grid-view.js';
import { startRun, cancelRun, dropRun, cancelConfirmed, onDone } from './runs.js';
import { showBaselineNote } from './ab.js';

const isCurrent = (runId) => ui.run !== null && runId === ui.run.runId;

/** The worker's messages, by type. */
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
  teach(msg) {
    if (window.disaHost.onTeach) window.disaHost.onTeach(msg);
  },
};

function onMessage(msg) {
  const handler = handlers[msg.type];
  if (handler) handler(msg);
}

/** An uncaught error inside the worker: `init` before a model exists, a crash after. */
function onUncaught(message) {
  if (!ui.model) handlers.error({ type: 'error', where: 'init', message });
  else workerCrashed(message);
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

/**
 * The worker died (a wasm trap such as running out of memory, or an uncaught error): its module
 * is gone. Start a fresh one with the last model that loaded, keep the user's settings, say so.
 */
async function workerCrashed(detail) {
  const now = performance.now();
  ui.crashes = ui.crashes.filter((t) => now - t < 60_000);
  ui.crashes.push(now);
  stopWorker();
  const during = ui.pendingFile ? ` while loading “${ui.pendingFile.name}”` : ui.run ? ' during a run' : '';
  const hint = ui.pendingFile ? ' The file may need more memory than this browser gives a page.' : '';
  if (ui.run || ui.ab) cancelRun('crash');
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
  startWorker({ forceCpu: cpu, file }, onMessage, onUncaught);
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

function wireFiles() {
  $('file-input').addEventListener('change', () => {
    loadWeightsFile($('file-input').files[0]);
    $('file-input').value = ''; // so picking the same file again still fires
  });
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
  crashWorker: () => post({ type: 'simulateCrash' }),
  setInterruptible: (on) => post({ type: 'setInterruptible', on }),
};

// Teaching view (../teach.js): the worker, the last run's request and the page state; it gets
// the worker's `teach` replies through `onTeach`.
window.disaHost = {
  post: (m) => post(m),
  request: () => (ui.vis ? ui.vis.request : readRequest()),
  model: () => ui.model,
  state: () => ui.state,
  onTeach: null,
};

function main() {
  setPreset('linear');
  syncOutputs();
  wireControls();
  wirePlot();
  wireFiles();
  setState('loading');
  followSettings();
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
  startWorker({}, onMessage, onUncaught);
}

main();
