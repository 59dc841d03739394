// The model worker: owns the wasm module (Burn on WebGPU or CPU), fetches and caches weights,
// and runs generations step by step, posting each AR step to the page. The page never blocks.
// Message protocol: see worker-protocol.md.

import { teach } from './teach-worker.js'; // the teaching view's analysis (teach.js)

const CACHE_NAME = 'disa-models-v1';

let ready = null;          // Promise of the wasm module (one of two builds), initialized
let session = null;        // the library's Session (src/web.rs): backend, model, runs
let modelBytes = null;     // bytes of the current model, kept to reload after a lost GPU
let modelName = '';
let currentRun = null;     // { runId, lane } of the generation in progress

const post = (msg, transfer) => self.postMessage(msg, transfer || []);
const fail = (where, err, extra = {}) =>
  post({ type: 'error', where, message: String(err && err.message ? err.message : err), ...extra });

// Fetches with byte progress, answering from the Cache API when the file is there.
async function fetchWeights(url) {
  const cache = 'caches' in self ? await caches.open(CACHE_NAME) : null;
  const cached = cache ? await cache.match(url) : null;
  if (cached) {
    post({ type: 'progress', loaded: 0, total: null, phase: 'cache' });
    const bytes = new Uint8Array(await cached.arrayBuffer());
    post({ type: 'progress', loaded: bytes.length, total: bytes.length, phase: 'cache' });
    return { bytes, fromCache: true };
  }
  const response = await fetch(url);
  if (!response.ok) throw new Error(`fetching ${url}: HTTP ${response.status}`);
  const total = Number(response.headers.get('content-length')) || null;
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    post({ type: 'progress', loaded, total, phase: 'download' });
  }
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const c of chunks) { bytes.set(c, offset); offset += c.length; }
  if (cache) await cache.put(url, new Response(bytes.slice(), { headers: { 'content-type': 'application/octet-stream' } }));
  return { bytes, fromCache: false };
}

function loadModel(name, bytes) {
  const info = session.loadModel(name, bytes);
  modelBytes = bytes;
  modelName = name;
  post({ type: 'model', info });
}

// The wasm build uses WebAssembly SIMD (.cargo/config.toml). A browser without it cannot
// compile the module; say so rather than show a CompileError. The bytes are a module whose one
// function splats an i32 into a v128 (the test of the wasm-feature-detect package).
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0,
  10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);
const NO_SIMD = 'This browser\'s WebAssembly has no SIMD, which the demo needs: use Chrome or Edge 91+, '
  + 'Firefox 89+ or Safari 16.4+.';

// Two builds of the library (index.html): `disa.js` for WebAssembly SIMD, and `disa-relaxed.js`
// whose CPU-fallback matmuls also use relaxed SIMD's fused multiply-add (about 1.2× faster per
// image; README, "CPU speed"). The second loads where the browser validates relaxed SIMD;
// `?wasm=simd128` on this worker's URL (the page passes its own on) forces the first. The bytes:
// a module whose one function is `f32x4.relaxed_madd` of three splats.
const RELAXED_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0,
  10, 19, 1, 17, 0, 65, 0, 253, 15, 65, 0, 253, 15, 65, 0, 253, 15, 253, 133, 2, 11]);
function libraryUrl() {
  const wanted = new URL(self.location.href).searchParams.get('wasm');
  if (wanted === 'simd128') return './disa.js';
  if (wanted !== null) console.warn(`?wasm=${wanted}: only ?wasm=simd128 is understood; choosing the build by the browser`);
  return WebAssembly.validate(RELAXED_PROBE) ? './disa-relaxed.js' : './disa.js';
}

// The chosen build, initialized; where disa-relaxed.js cannot be loaded (a deployment that
// left it out, a failed fetch) the SIMD build serves instead, with a console warning.
async function loadLibrary() {
  const load = async (url) => {
    const lib = await import(url);
    await lib.default();
    return lib;
  };
  const url = libraryUrl();
  try {
    return await load(url);
  } catch (err) {
    if (url === './disa.js') throw err;
    console.warn(`${url} could not be loaded (${err && err.message ? err.message : err}); using ./disa.js`);
    return load('./disa.js');
  }
}

async function initAll({ weightsUrl, forceCpu, file }) {
  if (!WebAssembly.validate(SIMD_PROBE)) throw new Error(NO_SIMD);
  ready = ready || loadLibrary();
  const { Session } = await ready;
  session = session || new Session();
  const backend = await session.initBackend(!!forceCpu);
  post({ type: 'backend', info: backend });
  if (file) {
    // A restart after a crash: the page passes the user's model back in.
    try {
      loadModel(file.name, new Uint8Array(file.bytes));
      return;
    } catch (err) {
      fail('weights', err, { name: file.name });
    }
  }
  post({ type: 'progress', loaded: 0, total: null, phase: 'download' });
  let { bytes, fromCache } = await fetchWeights(weightsUrl);
  post({ type: 'progress', loaded: bytes.length, total: bytes.length, phase: 'build' });
  try {
    loadModel(weightsUrl.split('/').pop(), bytes);
  } catch (err) {
    if (!fromCache) throw err;
    // A damaged cache entry: drop it and fetch once more.
    await (await caches.open(CACHE_NAME)).delete(weightsUrl);
    ({ bytes } = await fetchWeights(weightsUrl));
    loadModel(weightsUrl.split('/').pop(), bytes);
  }
}

// Switches to the CPU backend and rebuilds the current model there: after a lost GPU, or when
// the page asks (a software WebGPU adapter is slower than the CPU backend).
function switchToCpu(notice, reason) {
  currentRun = null;
  post({ type: 'backend', info: session.useCpuBackend(reason, notice) });
  if (modelBytes) loadModel(modelName, modelBytes);
}

const recoverFromLostDevice = () => switchToCpu('The GPU device was lost; the demo switched to the CPU backend.', 'lost');

// A wasm trap (a Rust panic or abort, e.g. out of memory) leaves the module unusable: the page
// must start a fresh worker.
const isTrap = (err) => typeof WebAssembly !== 'undefined' && err instanceof WebAssembly.RuntimeError;

// A turn of the event loop between AR steps (a cancel or a new run gets in). A message to
// ourselves, not setTimeout(0): nested timeouts are clamped to 4 ms, which cost a 16-step
// image on the CPU about a fifth of its sampling time.
const turn = new MessageChannel();
const yieldToEvents = () => new Promise((resolve) => {
  turn.port1.onmessage = () => resolve();
  turn.port2.postMessage(null);
});

async function generate({ runId, request, lane }) {
  session.cancel();
  currentRun = { runId, lane };
  const started = performance.now();
  let event = null, last = null;
  // Σ over the steps of each phase: the A/B card sets the head's own speed-up beside the total.
  let headMs = 0, transformerMs = 0;
  // A cancelled run says when it has really stopped: the page measures how long a cancel takes
  // (on WebGPU the AR step in flight runs to its end first).
  const stopped = () => {
    post({ type: 'stopped', runId, lane });
  };
  try {
    session.startGeneration(request);
    for (;;) {
      await yieldToEvents(); // lets a cancel or a new run in
      if (!currentRun || currentRun.runId !== runId) return stopped();
      const result = await session.step();
      if (!currentRun || currentRun.runId !== runId) return stopped();
      if (result === null || result === undefined) break;
      event = result.event;
      headMs += event.headMs || 0;
      transformerMs += event.transformerMs || 0;
      if (result.preview) last = result.preview;
      post({ type: 'step', runId, lane, event, preview: result.preview });
    }
    currentRun = null;
    // The totals are the last event's (the library's plan of the steps run).
    const { headCalls = 0, tokenSteps = 0, samplingMs = 0 } = event || {};
    post({
      type: 'done', runId, lane, image: last, totalMs: performance.now() - started, samplingMs,
      headMs, transformerMs, headCalls, tokenSteps,
    });
  } catch (err) {
    currentRun = null;
    if (isTrap(err)) {
      fail('panic', err, { runId });
    } else if (session.deviceLost()) {
      fail('device', err, { runId });
      recoverFromLostDevice();
    } else {
      fail('generate', err, { runId });
    }
  }
}

// The `init` in progress. Every other message waits for it: a file picked while the built-in
// model downloads must not be replaced by it when the download ends, and nothing may reach a
// session that does not exist yet.
let initializing = null;

self.onmessage = async ({ data }) => {
  if (initializing && !(data && data.type === 'init')) await initializing.catch(() => {});
  try {
    switch (data.type) {
      case 'init':
        initializing = initAll(data);
        await initializing;
        break;
      case 'loadFile':
        try {
          currentRun = null;
          session.cancel();
          loadModel(data.name, new Uint8Array(data.bytes));
        } catch (err) {
          fail(isTrap(err) ? 'panic' : 'weights', err, { name: data.name });
        }
        break;
      case 'plan':
        try {
          post({ type: 'plan', id: data.id, plan: session.plan(data.request) });
        } catch (err) {
          fail('plan', err, { id: data.id });
        }
        break;
      case 'generate':
        await generate(data);
        break;
      case 'cancel':
        if (currentRun && currentRun.runId === data.runId) currentRun = null;
        session.cancel();
        break;
      case 'useCpu':
        switchToCpu(data.notice || 'Switched to the CPU backend.', data.reason || 'chosen');
        break;
      case 'teach':
      case 'teachCancel':
        await teach(session, data, post);
        break;
      case 'setInterruptible':
        // For the end-to-end test: off, a cancel waits for the whole AR step (as it used to).
        session.setInterruptible(!!data.on);
        break;
      case 'simulateCrash':
        // For the end-to-end test only: an uncaught error as a wasm trap would throw one.
        setTimeout(() => { throw new Error('simulated crash (test)'); });
        break;
      default:
        fail('init', `unknown message ${data.type}`);
    }
  } catch (err) {
    fail(data.type === 'init' ? 'init' : 'generate', err);
  }
};
