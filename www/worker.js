// The model worker: owns the wasm module (Burn on WebGPU or CPU), fetches and caches weights,
// and runs generations step by step, posting each AR step to the page. The page never blocks.
// Message protocol: see worker-protocol.md.

import init, * as disa from './disa.js';

const CACHE_NAME = 'disa-models-v1';

let ready = null;          // Promise of the wasm module's initialization
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
  const info = JSON.parse(disa.loadModel(name, bytes));
  modelBytes = bytes;
  modelName = name;
  post({ type: 'model', info });
}

async function initAll({ weightsUrl, forceCpu }) {
  ready = ready || init();
  await ready;
  const backend = JSON.parse(await disa.initBackend(!!forceCpu));
  post({ type: 'backend', info: backend });
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

// After a lost GPU: switch to the CPU backend and rebuild the model there.
function recoverFromLostDevice() {
  disa.useCpuBackend();
  post({ type: 'backend', info: { backend: 'cpu', adapter: 'CPU (Burn flex, WebAssembly)', software: false,
    notice: 'The GPU device was lost; switched to the CPU backend.' } });
  if (modelBytes) loadModel(modelName, modelBytes);
}

const yieldToEvents = () => new Promise((resolve) => setTimeout(resolve, 0));

async function generate({ runId, request, lane }) {
  disa.cancel();
  currentRun = { runId, lane };
  const started = performance.now();
  let headCalls = 0, tokenSteps = 0, samplingMs = 0, last = null;
  try {
    disa.startGeneration(JSON.stringify(request));
    for (;;) {
      await yieldToEvents(); // lets a cancel or a new run in
      if (!currentRun || currentRun.runId !== runId) return;
      const result = await disa.step();
      if (!currentRun || currentRun.runId !== runId) return;
      if (result === null || result === undefined) break;
      const event = JSON.parse(result.event);
      if (event.positions.length > 0) headCalls += event.effectiveSteps;
      tokenSteps += event.positions.length * event.effectiveSteps;
      samplingMs += event.transformerMs + event.headMs; // excludes the preview decode
      last = result.preview;
      post({ type: 'step', runId, lane, event, preview: last });
    }
    currentRun = null;
    post({ type: 'done', runId, lane, image: last, totalMs: performance.now() - started, samplingMs, headCalls, tokenSteps });
  } catch (err) {
    currentRun = null;
    if (disa.deviceLost()) {
      fail('device', err, { runId });
      recoverFromLostDevice();
    } else {
      fail('generate', err, { runId });
    }
  }
}

self.onmessage = async ({ data }) => {
  try {
    switch (data.type) {
      case 'init':
        await initAll(data);
        break;
      case 'loadFile':
        try {
          currentRun = null;
          disa.cancel();
          loadModel(data.name, new Uint8Array(data.bytes));
        } catch (err) {
          fail('weights', err);
        }
        break;
      case 'plan':
        try {
          post({ type: 'plan', id: data.id, plan: JSON.parse(disa.plan(JSON.stringify(data.request))) });
        } catch (err) {
          fail('plan', err, { id: data.id });
        }
        break;
      case 'generate':
        await generate(data);
        break;
      case 'cancel':
        if (currentRun && currentRun.runId === data.runId) currentRun = null;
        disa.cancel();
        break;
      default:
        fail('init', `unknown message ${data.type}`);
    }
  } catch (err) {
    fail(data.type === 'init' ? 'init' : 'generate', err);
  }
};
