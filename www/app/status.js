// The page's state attribute and what it says to the reader: the error and info banners, the
// load progress, and the backend badge with its notice.

import { $, ui, forceCpu } from './state.js';
import { switchToCpu } from './runs.js';

/** Sets body[data-state] and the buttons that depend on it. */
export function setState(s) {
  ui.state = s;
  document.body.dataset.state = s;
  const usable = ui.model !== null && !ui.loading;
  $('generate').disabled = !usable;
  $('ab-run').disabled = !usable;
  $('stop').hidden = s !== 'running';
  $('class').disabled = ui.model === null;
}

/** State to return to when nothing is running. */
export function idleState() {
  if (!ui.model) return ui.loading ? 'loading' : 'error';
  return ui.vis && ui.vis.done ? 'done' : 'ready';
}

/** Shows a message for people in `#error`; `detail` (the technical text) sits one click away. */
export function showError(text, detail) {
  const el = $('error');
  el.replaceChildren(document.createTextNode(text));
  if (detail && detail !== text) el.append(' ', details('Technical detail', detail));
  $('error-wrap').hidden = false;
}

export function clearError() {
  $('error-wrap').hidden = true;
  $('error').textContent = '';
}

/** A collapsed `<details>` with a summary line and preformatted text (or nodes). */
function details(summary, body) {
  const d = document.createElement('details');
  const s = document.createElement('summary');
  s.textContent = summary;
  d.append(s);
  if (typeof body === 'string') {
    const pre = document.createElement('pre');
    pre.textContent = body;
    d.append(pre);
  } else {
    d.append(...body);
  }
  return d;
}

/** A dismissable line under the top bar, with an optional action button. */
export function showInfo(text, actionLabel, action) {
  $('info-text').textContent = text;
  const button = $('info-action');
  button.hidden = !actionLabel;
  button.textContent = actionLabel || '';
  button.onclick = action
    ? () => {
        button.hidden = true;
        action();
      }
    : null;
  $('info').hidden = false;
}

export function showProgress(loaded, total, phase) {
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

/** What the reader can do to get WebGPU: browsers and settings, as of 2025. */
function webgpuHelp() {
  const list = document.createElement('ul');
  for (const line of [
    'Chrome or Edge 113 or newer on Windows, macOS or ChromeOS; Chrome 121 or newer on Android.',
    'Safari 26 or newer on macOS, iOS and iPadOS.',
    'Firefox 141 or newer on Windows (elsewhere, Firefox Nightly).',
    'On Linux, Chrome needs chrome://flags/#enable-unsafe-webgpu (and a Vulkan driver).',
    'Hardware acceleration must be on in the browser’s settings, and the page must come from https:// or localhost.',
  ]) {
    const li = document.createElement('li');
    li.textContent = line;
    list.append(li);
  }
  return [list];
}

/** The backend badge and, when the CPU runs or WebGPU is software, the notice saying why. */
export function showBackend(info) {
  const backend = String(info.backend || 'unknown').toLowerCase();
  const el = $('backend');
  el.textContent = info.adapter ? `${backend} · ${info.adapter}` : backend;
  el.title = `Backend: ${backend}${info.adapter ? `, adapter: ${info.adapter}` : ''}`;
  el.className = `badge ${backend === 'webgpu' && !info.software ? 'gpu' : 'cpu'}`;

  const notice = $('notice');
  notice.replaceChildren();
  const text = document.createElement('span');
  notice.append(text);
  const parts = [];
  if (backend === 'cpu') {
    parts.push(info.notice || 'WebGPU is not available here, so the demo runs on the CPU (slower).');
    if (info.reason === 'unavailable' || info.reason === 'failed') {
      notice.append(details('How to enable WebGPU', webgpuHelp()));
    }
    if (info.reason === 'software') {
      const back = document.createElement('a');
      back.href = location.pathname;
      back.textContent = 'Use WebGPU again';
      notice.append(back);
    }
  } else if (info.notice) {
    parts.push(info.notice);
  }
  if (backend === 'webgpu' && info.software) {
    parts.push(
      `WebGPU here runs on “${info.adapter || 'unknown'}”, a software renderer that emulates a GPU on the CPU: ` +
        'it is usually far slower than this page’s own CPU backend.',
    );
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'small';
    button.id = 'use-cpu';
    button.textContent = 'Switch to the CPU backend';
    button.addEventListener('click', switchToCpu);
    notice.append(button);
  }
  const measured = speedNote();
  if (measured) parts.push(measured);
  text.textContent = parts.join(' ');
  if (info.detail) notice.append(details('Technical detail', info.detail));
  notice.hidden = parts.length === 0;
  $('cpu-link').hidden = backend === 'cpu' && !forceCpu;
}

/** Measured ms per head call on each backend used in this session, when there are two. */
function speedNote() {
  const entries = Object.entries(ui.speed);
  if (entries.length < 2) return '';
  const [[a, ma], [b, mb]] = entries.slice(-2);
  const [fast, slow, ratio] = ma <= mb ? [a, b, mb / ma] : [b, a, ma / mb];
  return `Measured here: ${entries.map(([k, v]) => `${k} ${v.toFixed(2)} ms`).join(', ')} per head call, so ${fast} is ${ratio.toFixed(1)}× faster than ${slow}.`;
}
