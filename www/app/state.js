// The page's one state object, `ui`, with every field declared here, and the constants the
// modules share. Modules read and write `ui` directly; nothing else holds page state.

/** The element with this id. */
export const $ = (id) => document.getElementById(id);
export const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

export const MIN_STEPS = 2; // the library refuses fewer (its respacing needs two)
export const MAX_STEPS = 1000; // the diffusion's base timesteps
export const AUTO_RUN_DELAY_MS = 350; // wait for sliders to settle before restarting a run
export const PLAN_DELAY_MS = 30; // coalesce plan requests while a slider moves
export const MAX_EVENTS = 5000; // window.disaEvents keeps this many
export const MAX_REPLAY_BYTES = 96e6; // keep previews for the replay only while they stay this small
export const DEFAULT_WEIGHTS = 'assets/model.safetensors';
export const MAX_RESTARTS_PER_MINUTE = 3; // a worker that keeps crashing is not restarted again

const params = new URLSearchParams(location.search);
/** `?cpu` or `?backend=cpu`: the CPU backend, WebGPU off. */
export const forceCpu = params.has('cpu') || params.get('backend') === 'cpu';

/**
 * Everything the page knows. Plans, step events and model info are the worker's (the
 * library's) answers, kept as they came: the page computes no schedule numbers itself.
 */
export const ui = {
  /** body[data-state]: 'loading' | 'ready' | 'running' | 'done' | 'error'. */
  state: 'loading',
  /** The worker's `model` info (src/web.rs ModelInfo), null before the first model. */
  model: null,
  loading: true, // weights being fetched or loaded
  loadingFile: false, // the load in progress is the user's file (its defaults then apply)
  recovering: false, // after a device loss or crash, until a backend/model message
  resumeMode: null, // the run mode to restart once the worker is back ('single' | 'ab')
  hasRun: false, // auto-run only restarts once the user has generated something
  lastMode: 'single', // 'single' | 'ab': what auto-run restarts
  nextRunId: 1,
  /** The run that is current: { runId, lane: 'main'|'baseline'|'disa', request, t0 }. */
  run: null,
  /**
   * The A/B comparison in progress: { request, plan, base, rounds, round, baseline: [done…],
   * disa: [done…] }; `plan` (and `base`, the baseline request) once the request's plan is in.
   */
  ab: null,
  /** What the token-grid views show (see grid-view.js resetVis). */
  vis: null,
  preset: 'linear', // the schedule editor's kind: constant | linear | cosine | two-stage | custom
  custom: null, // per-AR-step counts when the preset is custom (the reader's own curve)
  /** The newest plan from the worker: { key, plan } (src/web.rs PlanDto). */
  plan: null,
  planSeq: 0,
  planKeys: new Map(), // plan id -> key of the request it answers
  pendingPlans: 0,
  planWaiters: [], // callbacks waiting for the current request's plan (an A/B start)
  plot: { yMax: 60, drag: false, lastK: -1, hover: -1, focus: 0 },
  autoTimer: 0,
  planTimer: 0,
  ticker: 0,
  replayTimer: 0,
  flashing: false, // the newest tokens' highlight is fading
  cancelled: new Map(), // runId -> performance.now() of its cancel, until the worker confirms
  backendInfo: null, // the last `backend` message's info
  speed: {}, // backend label -> ms per head call of its last finished run (the CPU offer)
  modelFile: null, // the File of the user's model in use (reloaded if the worker restarts)
  pendingFile: null, // the File being loaded
  crashes: [], // times of worker crashes in the last minute
};
