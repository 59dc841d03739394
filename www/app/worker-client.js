// The model worker (../worker.js) as the page sees it: start it, post to it, and the event log
// the end-to-end test reads. Messages: ../worker-protocol.md.

import { DEFAULT_WEIGHTS, MAX_EVENTS, forceCpu } from './state.js';

// Every accepted backend/step/done/error message, and the page's own launch/stopped entries.
window.disaEvents = [];

let worker = null;

/**
 * Starts the model worker (again, after a crash) and sends it `init`. `onMessage(msg)` gets its
 * messages; `onUncaught(text)` an uncaught error inside it (a wasm trap, a script that fails to
 * load).
 */
export function startWorker(init, onMessage, onUncaught) {
  // `?wasm=simd128` on the page's URL forces the library build without relaxed SIMD (worker.js).
  const wasm = new URLSearchParams(location.search).get('wasm');
  worker = new Worker(wasm ? `./worker.js?wasm=${encodeURIComponent(wasm)}` : './worker.js', { type: 'module' });
  worker.onmessage = (e) => onMessage(e.data || {});
  worker.onerror = (e) => {
    e.preventDefault();
    onUncaught(e.message || 'the worker script failed to load (worker.js)');
  };
  post({ type: 'init', weightsUrl: DEFAULT_WEIGHTS, forceCpu, ...init });
}

/** Drops the worker: no more messages from it. */
export function stopWorker() {
  worker.onmessage = null;
  worker.onerror = null;
  worker.terminate();
}

export function post(msg, transfer) {
  worker.postMessage(msg, transfer || []);
}

/** Appends to `window.disaEvents`, without pixel arrays (the test needs sizes, not megabytes). */
export function record(msg) {
  const copy = { ...msg, at: performance.now() };
  if (msg.preview) copy.preview = { width: msg.preview.width, height: msg.preview.height };
  if (msg.image) copy.image = { width: msg.image.width, height: msg.image.height };
  window.disaEvents.push(copy);
  if (window.disaEvents.length > MAX_EVENTS) window.disaEvents.shift();
}
