// Teaching view: DiSA's evidence, measured live on the model in the page.
//
// Why do late tokens need fewer diffusion steps? The DiSA paper argues with three measurements
// (spread of the next-token distribution, straightness of the denoising path, predictability of
// the token); this view runs them on the last generation's settings through the library
// (src/analysis.rs via the worker: teach-worker.js) and shows them against the AR step, with a
// timeline scrubber over the cached states, a token inspector and a side-by-side comparison of
// two schedules. Every number comes from the library; this file only draws and words them.
//
// Hooks: app/main.js sets `window.disaHost = {post(msg), request(), model(), state(), onTeach}` and
// forwards the worker's `teach` messages to `onTeach`; this module adds its own card after the
// page's <main>. For tests it exposes `window.disaTeach`.

const $ = (id) => document.getElementById(id);
const COLORS = { a: '#8b7cff', b: '#38d6c4', variance: '#5b8cff', straight: '#5fd08a', length: '#c38cff', oneShot: '#ff7a8a', completed: '#ffb545' };

const T = {
  state: 'idle', // idle | running | done | error
  nextId: 1,
  pending: null, // { id, which, resolve, reject }
  a: null, // { request, result, images }
  b: null, // the comparison run
  j: 0, // scrub position: AR steps done
  selected: null, // position of the inspected token
};
window.disaTeach = T;

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function buildCard() {
  const card = h('section', { class: 'card teach', id: 'teach', 'aria-labelledby': 'teach-title', 'data-state': 'idle' });
  card.innerHTML = `
    <h2 id="teach-title">Why do late tokens need fewer steps? <span class="dim">DiSA's evidence, measured on this model</span></h2>
    <p class="teach-intro">DiSA gives the first tokens many diffusion steps and the last ones few. The paper's reason:
      once most of the image is known, the next token is <b>nearly decided</b>. Three measurements show it; here they run
      live on the model in this page, on your last generation (same seed and settings).</p>
    <div class="teach-controls">
      <label>re-samples per token (M) <input id="teach-m" type="number" min="2" max="256" value="32"></label>
      <label>compare with <select id="teach-compare-schedule">
        <option value="auto">the other kind (constant ↔ DiSA)</option>
        <option value="constant:50">constant:50</option>
        <option value="linear:50:5">linear:50:5 (DiSA)</option>
        <option value="none">no comparison</option>
      </select></label>
      <button type="button" id="teach-run" class="primary">Analyse the last generation</button>
      <span class="teach-status" id="teach-status" role="status">Runs only when you ask: one extra generation with the analysis.</span>
      <progress id="teach-progress" max="1" value="0" hidden></progress>
    </div>
    <div class="teach-body" id="teach-body" hidden>
      <div class="teach-plots">
        <figure class="teach-fig"><figcaption>1 · Spread of the next token <span class="dim">(variance of M re-samples, same context)</span></figcaption>
          <canvas id="teach-plot-variance" class="teach-plot"></canvas><p class="teach-note" id="teach-note-variance"></p></figure>
        <figure class="teach-fig"><figcaption>2 · Straightness of the path noise → token <span class="dim">(S = distance ÷ path length, 1 = straight)</span></figcaption>
          <canvas id="teach-plot-straightness" class="teach-plot"></canvas><p class="teach-note" id="teach-note-straightness"></p></figure>
        <figure class="teach-fig"><figcaption>3 · Predictability <span class="dim">(error of one guess at the noisiest step)</span></figcaption>
          <canvas id="teach-plot-predict" class="teach-plot"></canvas><p class="teach-note" id="teach-note-predict"></p></figure>
        <figure class="teach-fig"><figcaption>Paths from noise to token <span class="dim">(2-D PCA; <span class="early">early</span> vs <span class="late">late</span> tokens)</span></figcaption>
          <canvas id="teach-plot-pca" class="teach-plot"></canvas><p class="teach-note" id="teach-note-pca"></p></figure>
      </div>
      <div class="teach-timeline">
        <label for="teach-scrubber">Timeline</label>
        <input type="range" id="teach-scrubber" min="0" max="1" value="1" step="1">
        <span id="teach-scrub-label" class="mono"></span>
      </div>
      <div class="teach-states">
        <figure><canvas id="teach-partial" class="teach-img"></canvas><figcaption>image so far</figcaption></figure>
        <figure><canvas id="teach-completed" class="teach-img"></canvas><figcaption>completed by one guess</figcaption></figure>
        <figure><canvas id="teach-tokens" class="teach-img clickable" title="Click a token to inspect it"></canvas><figcaption>tokens by AR step · click one</figcaption></figure>
        <div class="teach-facts" id="teach-facts"></div>
      </div>
      <div class="teach-inspector" id="teach-inspector">
        <p class="dim">Click a token in the grid to see its order, AR step, steps, path and spread.</p>
      </div>
      <div class="teach-compare" id="teach-compare" hidden>
        <h3>Same seed, two schedules <span class="dim">(scrubbed together)</span></h3>
        <div class="teach-states">
          <figure><canvas id="teach-cmp-a" class="teach-img"></canvas><figcaption id="teach-cmp-a-label">A</figcaption></figure>
          <figure><canvas id="teach-cmp-b" class="teach-img"></canvas><figcaption id="teach-cmp-b-label">B</figcaption></figure>
          <figure><canvas id="teach-cmp-diff" class="teach-img"></canvas><figcaption>per-token difference ‖A − B‖</figcaption></figure>
          <div class="teach-facts" id="teach-cmp-facts"></div>
        </div>
        <p class="teach-note" id="teach-note-compare"></p>
      </div>
    </div>`;
  return card;
}

// ───────────────────────── formatting ─────────────────────────

const fin = (x) => typeof x === 'number' && Number.isFinite(x);
function fmt(x) {
  if (!fin(x)) return '–';
  const a = Math.abs(x);
  if (a === 0) return '0';
  if (a >= 1000 || a < 0.001) return x.toExponential(2);
  return x.toPrecision(3);
}
const firstLast = (values) => {
  const f = values.map((v, k) => [k, v]).filter(([, v]) => fin(v));
  return f.length ? { first: f[0], last: f[f.length - 1] } : null;
};
function ratioWords(a, b) {
  if (!fin(a) || !fin(b) || a <= 0 || b <= 0) return 'about the same as';
  const r = a / b;
  if (r >= 1.1) return `${r.toFixed(1)}× less than`;
  if (r <= 1 / 1.1) return `${(1 / r).toFixed(1)}× more than`;
  return 'about the same as';
}

// ───────────────────────── plots ─────────────────────────

function sizeCanvas(c, aspect = 0.6) {
  const w = Math.max(120, Math.round(c.clientWidth || c.parentElement.clientWidth || 300));
  const hgt = Math.round(w * aspect);
  const dpr = window.devicePixelRatio || 1;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(hgt * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(hgt * dpr);
  }
  c.style.height = `${hgt}px`;
  const ctx = c.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, w, h: hgt };
}

/** Line plot of several series against the AR step (1-based on the axis); the part after the
 *  scrub position `upto` is drawn faint. */
function linePlot(canvas, series, upto, K) {
  const { ctx, w, h: hh } = sizeCanvas(canvas);
  const m = { l: 44, r: 8, t: 8, b: 22 };
  ctx.clearRect(0, 0, w, hh);
  const all = series.flatMap((s) => s.values.filter(fin));
  let lo = Math.min(0, ...all);
  let hi = Math.max(...all, lo + 1e-12);
  hi += (hi - lo) * 0.05;
  const x = (k) => m.l + (K <= 1 ? 0.5 : k / (K - 1)) * (w - m.l - m.r);
  const y = (v) => hh - m.b - ((v - lo) / (hi - lo)) * (hh - m.t - m.b);
  ctx.strokeStyle = '#273044';
  ctx.fillStyle = '#8d96aa';
  ctx.font = '10px system-ui, sans-serif';
  ctx.lineWidth = 1;
  for (let i = 0; i <= 3; i++) {
    const v = lo + ((hi - lo) * i) / 3;
    ctx.beginPath();
    ctx.moveTo(m.l, y(v));
    ctx.lineTo(w - m.r, y(v));
    ctx.stroke();
    ctx.textAlign = 'right';
    ctx.fillText(fmt(v), m.l - 4, y(v) + 3);
  }
  ctx.textAlign = 'center';
  for (const k of [0, Math.floor((K - 1) / 2), K - 1]) ctx.fillText(String(k + 1), x(k), hh - 8);
  ctx.fillText('AR step', (m.l + w) / 2, hh - 0);
  for (const s of series) {
    for (const faint of [true, false]) {
      ctx.strokeStyle = s.color;
      ctx.globalAlpha = faint ? 0.25 : 1;
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false;
      s.values.forEach((v, k) => {
        if (!fin(v) || (!faint && k >= upto)) return;
        if (started) ctx.lineTo(x(k), y(v));
        else ctx.moveTo(x(k), y(v));
        started = true;
      });
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
  }
  // Scrub marker: the last step done.
  if (upto > 0) {
    ctx.strokeStyle = '#e6e9f0';
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(x(upto - 1), m.t);
    ctx.lineTo(x(upto - 1), hh - m.b);
    ctx.stroke();
    ctx.setLineDash([]);
  }
  // Legend.
  ctx.textAlign = 'left';
  series.forEach((s, i) => {
    ctx.fillStyle = s.color;
    ctx.fillRect(m.l + 6, m.t + 4 + i * 13, 10, 3);
    ctx.fillStyle = '#e6e9f0';
    ctx.fillText(s.label, m.l + 20, m.t + 9 + i * 13);
  });
  canvas.dataset.points = String(series.reduce((n, s) => n + s.values.filter(fin).length, 0));
}

/** 2-D paths (PCA coordinates) with start (noise) as a ring and end (token) as a dot. */
function pathPlot(canvas, paths, aspect = 0.6) {
  const { ctx, w, h: hh } = sizeCanvas(canvas, aspect);
  ctx.clearRect(0, 0, w, hh);
  const pts = paths.flatMap((p) => p.points);
  if (!pts.length) return;
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const span = Math.max(x1 - x0, y1 - y0, 1e-9);
  const s = Math.min(w - 16, hh - 16) / span;
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const X = (v) => w / 2 + (v - cx) * s;
  const Y = (v) => hh / 2 - (v - cy) * s;
  for (const p of paths) {
    ctx.strokeStyle = p.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    p.points.forEach(([a, b], i) => (i ? ctx.lineTo(X(a), Y(b)) : ctx.moveTo(X(a), Y(b))));
    ctx.stroke();
    const [sa, sb] = p.points[0];
    const [ea, eb] = p.points[p.points.length - 1];
    ctx.beginPath();
    ctx.arc(X(sa), Y(sb), 3.5, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.fillStyle = p.color;
    ctx.beginPath();
    ctx.arc(X(ea), Y(eb), 3.5, 0, 2 * Math.PI);
    ctx.fill();
  }
  canvas.dataset.points = String(pts.length);
}

function drawImage(canvas, img) {
  if (!img) return;
  const off = new OffscreenCanvas(img.width, img.height);
  off.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(img.pixels), img.width, img.height), 0, 0);
  const { ctx, w, h: hh } = sizeCanvas(canvas, 1);
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, w, hh);
  ctx.drawImage(off, 0, 0, w, hh);
  canvas.dataset.drawn = '1';
}

/** A grid × grid map; `cell(p)` gives a colour or null (not revealed). */
function gridMap(canvas, grid, cell, selected) {
  const { ctx, w, h: hh } = sizeCanvas(canvas, 1);
  ctx.clearRect(0, 0, w, hh);
  const s = w / grid;
  for (let p = 0; p < grid * grid; p++) {
    const c = cell(p);
    ctx.fillStyle = c || '#1b2130';
    ctx.fillRect((p % grid) * s + 0.5, Math.floor(p / grid) * s + 0.5, s - 1, s - 1);
  }
  if (selected != null) {
    ctx.strokeStyle = '#ffffff';
    ctx.lineWidth = 2;
    ctx.strokeRect((selected % grid) * s + 1, Math.floor(selected / grid) * s + 1, s - 2, s - 2);
  }
  canvas.dataset.drawn = '1';
}

const stepHue = (k, K) => `hsl(${250 - (200 * k) / Math.max(1, K - 1)}, 75%, 60%)`;

// ───────────────────────── data helpers ─────────────────────────

const curve = (r, key) => r.steps.map((s) => s[key]);
const tokenAt = (r, p) => r.tokens.find((t) => t.position === p);
/** Tokens revealed after `j` AR steps, and token·steps spent on them (the library's `doneAfter`). */
const stepsDone = (r, j) => r.doneAfter[j];
function tokenDistance(ra, rb, p) {
  const c = ra.tokenDim;
  let d = 0;
  for (let i = 0; i < c; i++) d += (ra.finalTokens[p * c + i] - rb.finalTokens[p * c + i]) ** 2;
  return Math.sqrt(d);
}

// ───────────────────────── rendering ─────────────────────────

function render() {
  const A = T.a;
  if (!A) return;
  const r = A.result;
  const K = r.steps.length;
  const j = T.j;
  $('teach-scrubber').max = String(K);
  $('teach-scrubber').value = String(j);
  const done = stepsDone(r, j);
  $('teach-scrub-label').textContent = `${j}/${K} steps · ${done.tokens}/${r.seqLen} tokens · ${done.tokenSteps} token·steps`;

  linePlot($('teach-plot-variance'), [{ label: 'variance', color: COLORS.variance, values: curve(r, 'variance') }], j, K);
  linePlot($('teach-plot-straightness'), [{ label: 'straightness S', color: COLORS.straight, values: curve(r, 'straightness') }], j, K);
  linePlot($('teach-plot-predict'), [
    { label: 'one-shot guess vs token', color: COLORS.oneShot, values: curve(r, 'one_shot_error') },
    { label: 'completed image vs final', color: COLORS.completed, values: r.completedError },
  ], j, K);
  const half = Math.ceil(r.pcaPaths.length / 2);
  pathPlot($('teach-plot-pca'), r.pcaPaths.map((p, i) => ({ points: p.points, color: i < half ? COLORS.a : COLORS.b })));

  drawImage($('teach-partial'), A.images[2 * j]);
  drawImage($('teach-completed'), A.images[2 * j + 1]);
  gridMap($('teach-tokens'), r.grid, (p) => {
    const t = tokenAt(r, p);
    return t && t.k < j ? stepHue(t.k, K) : null;
  }, T.selected);
  $('teach-facts').innerHTML = '';
  $('teach-facts').append(
    h('div', { text: `AR step ${j}/${K}` }),
    h('div', { text: `tokens revealed ${done.tokens}/${r.seqLen}` }),
    h('div', { text: `diffusion steps spent ${done.tokenSteps} token·steps` }),
    h('div', { text: j > 0 ? `this step: ${r.steps[j - 1].tokens} token(s) × ${r.steps[j - 1].effective_steps} steps` : 'nothing generated yet' }),
  );
  explain(r, j);
  inspect();
  renderCompare();
}

function explain(r, j) {
  const K = r.steps.length;
  const v = firstLast(curve(r, 'variance'));
  if (v) {
    $('teach-note-variance').textContent = `Ask the head ${r.samples} times for the same token: at step ${v.first[0] + 1} the answers vary by ${fmt(v.first[1])} per channel, at step ${v.last[0] + 1} by ${fmt(v.last[1])} — ${ratioWords(v.first[1], v.last[1])} at the start.`
      + (j > 0 && fin(r.steps[j - 1].variance) ? ` At the scrubbed step ${j}: ${fmt(r.steps[j - 1].variance)}.` : '');
  }
  const s = firstLast(curve(r, 'straightness'));
  const l = firstLast(curve(r, 'path_length'));
  if (s && l) {
    $('teach-note-straightness').textContent = `S is ${fmt(s.first[1])} at step ${s.first[0] + 1} and ${fmt(s.last[1])} at step ${s.last[0] + 1}; the path is ${fmt(l.first[1])} long at the start and ${fmt(l.last[1])} at the end. A straighter, shorter path needs fewer steps to follow.`
      + ' (Caution: a schedule with fewer steps makes fewer, longer moves, which by itself raises S; compare with a constant schedule.)';
  }
  const o = firstLast(curve(r, 'one_shot_error'));
  const c = firstLast(r.completedError);
  if (o) {
    $('teach-note-predict').textContent = `One guess of the clean token from pure noise misses the token finally sampled by ${fmt(o.first[1])} (mean squared, per channel) at step ${o.first[0] + 1} and by ${fmt(o.last[1])} at step ${o.last[0] + 1} — ${ratioWords(o.first[1], o.last[1])} at the start.`
      + (c ? ` Filling every unknown token with that guess gives an image ${fmt(c.first[1])} away from the final one at step ${c.first[0] + 1}, ${fmt(c.last[1])} at step ${c.last[0] + 1}.` : '');
  }
  $('teach-note-pca').textContent = `Each line is one token's denoising chain x_T → x_0 projected on its two main directions (ring = noise, dot = token). Purple: the first ${Math.ceil(r.pcaPaths.length / 2)} tokens generated; teal: the last ones. Steps in this run: ${r.steps[0].effective_steps} at step 1, ${r.steps[K - 1].effective_steps} at step ${K}.`;
}

function inspect() {
  const box = $('teach-inspector');
  const r = T.a && T.a.result;
  if (!r || T.selected == null) return;
  const t = tokenAt(r, T.selected);
  if (!t) return;
  const st = r.steps[t.k];
  const g = r.grid;
  box.innerHTML = '';
  const canvas = h('canvas', { id: 'teach-token-path', class: 'teach-plot small' });
  const rows = [
    ['position', `row ${Math.floor(t.position / g) + 1}, column ${(t.position % g) + 1}`],
    ['generation order', `${t.order + 1} of ${r.seqLen}`],
    ['AR step', `${t.k + 1} of ${r.steps.length} (with ${st.tokens - 1} other token(s))`],
    ['diffusion steps', `${t.steps}`],
    ['spread (variance)', `${fmt(t.variance)} · step average ${fmt(st.variance)} · run average ${fmt(mean(curve(r, 'variance')))}`],
    ['straightness S', `${fmt(t.straightness)} · step average ${fmt(st.straightness)}`],
    ['path length', `${fmt(t.pathLength)} · step average ${fmt(st.path_length)}`],
    ['one-shot error', `${fmt(t.oneShotError)} · step average ${fmt(st.one_shot_error)}`],
  ];
  const dl = h('dl', { id: 'teach-token-facts' });
  for (const [k, v] of rows) dl.append(h('dt', { text: k }), h('dd', { text: v }));
  box.append(h('h3', { text: `Token ${t.position}` }), h('div', { class: 'teach-inspect-grid' }, dl, h('figure', {}, canvas, h('figcaption', { text: 'its path noise → token (its own 2-D PCA)' }))));
  pathPlot(canvas, [{ points: t.path, color: t.k < r.steps.length / 2 ? COLORS.a : COLORS.b }], 0.75);
}

const mean = (v) => {
  const f = v.filter(fin);
  return f.length ? f.reduce((a, b) => a + b, 0) / f.length : NaN;
};

function renderCompare() {
  const box = $('teach-compare');
  if (!T.a || !T.b) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const ra = T.a.result;
  const rb = T.b.result;
  const j = Math.min(T.j, rb.steps.length);
  drawImage($('teach-cmp-a'), T.a.images[2 * j]);
  drawImage($('teach-cmp-b'), T.b.images[2 * j]);
  $('teach-cmp-a-label').textContent = `A · ${ra.schedule}`;
  $('teach-cmp-b-label').textContent = `B · ${rb.schedule}`;
  const n = ra.seqLen;
  const dist = Array.from({ length: n }, (_, p) => tokenDistance(ra, rb, p));
  const maxD = Math.max(...dist, 1e-9);
  gridMap($('teach-cmp-diff'), ra.grid, (p) => {
    const t = tokenAt(ra, p);
    if (!t || t.k >= j) return null;
    return `hsl(20, 90%, ${12 + 58 * (dist[p] / maxD)}%)`;
  }, T.selected);
  const da = stepsDone(ra, j);
  const db = stepsDone(rb, j);
  const ta = stepsDone(ra, ra.steps.length).tokenSteps;
  const tb = stepsDone(rb, rb.steps.length).tokenSteps;
  $('teach-cmp-facts').innerHTML = '';
  $('teach-cmp-facts').append(
    h('div', { text: `A: ${da.tokenSteps} token·steps so far (${ta} in all)` }),
    h('div', { text: `B: ${db.tokenSteps} token·steps so far (${tb} in all)` }),
    h('div', { text: `mean ‖A − B‖ per token ${fmt(mean(dist))}, largest ${fmt(maxD)}` }),
  );
  // Where do the two differ: early tokens or late ones?
  const byHalf = (lo, hi) => mean(ra.tokens.filter((t) => t.k >= lo && t.k < hi).map((t) => dist[t.position]));
  const K = ra.steps.length;
  $('teach-note-compare').textContent = `Same seed, same generation order, different step counts. B spends ${fmt(tb / Math.max(1, ta))}× the token·steps of A. Tokens of the first half of the AR steps differ by ${fmt(byHalf(0, K / 2))} on average, tokens of the second half by ${fmt(byHalf(K / 2, K))}.`;
}

// ───────────────────────── running ─────────────────────────

function otherSchedule(request) {
  const choice = $('teach-compare-schedule').value;
  if (choice === 'none') return null;
  if (choice !== 'auto') return choice === request.schedule ? null : choice;
  if (request.schedule.startsWith('constant:')) return 'linear:50:5';
  const start = Number(request.schedule.split(':')[1]) || 50;
  return `constant:${start}`;
}

function runOne(request, samples, which) {
  const host = window.disaHost;
  const id = T.nextId++;
  return new Promise((resolve, reject) => {
    T.pending = { id, which, resolve, reject };
    host.post({ type: 'teach', id, request, samples });
  });
}

function onMessage(msg) {
  if (msg.type !== 'teach' || !T.pending || msg.id !== T.pending.id) return;
  const p = T.pending;
  if (msg.phase === 'done') {
    T.pending = null;
    p.resolve({ result: msg.result, images: msg.images });
  } else if (msg.phase === 'error') {
    T.pending = null;
    p.reject(new Error(msg.message));
  } else {
    const label = msg.phase === 'generate' ? 'generating (recording the head\'s draws)' : 'measuring spread, paths and guesses';
    const bar = $('teach-progress');
    bar.hidden = false;
    bar.max = msg.total;
    bar.value = msg.done;
    status(`${p.which}: ${label} · AR step ${msg.done}/${msg.total}`);
  }
}

function status(text) {
  $('teach-status').textContent = text;
}

function setState(s) {
  T.state = s;
  $('teach').dataset.state = s;
  $('teach-run').disabled = s === 'running';
}

async function analyse() {
  const host = window.disaHost;
  if (!host || !host.model()) {
    status('Wait for the model to load first.');
    return;
  }
  if (host.state() === 'running') {
    status('A generation is running: analyse it when it is done.');
    return;
  }
  const request = { ...host.request() };
  const samples = Math.max(2, Math.min(256, Math.round(Number($('teach-m').value) || 32)));
  $('teach-m').value = String(samples);
  setState('running');
  T.b = null;
  try {
    T.a = { request, ...(await runOne(request, samples, `A · ${request.schedule}`)) };
    const other = otherSchedule(request);
    if (other) {
      // B keeps A's clip so that only the step schedule differs.
      const clip = request.clip != null ? request.clip : 950;
      const req = { ...request, schedule: other, clip };
      T.b = { request: req, ...(await runOne(req, samples, `B · ${other}`)) };
    }
    T.j = T.a.result.steps.length;
    $('teach-body').hidden = false;
    $('teach-progress').hidden = true;
    setState('done');
    status(`Analysed ${T.a.result.steps.length} AR steps with M = ${samples}; chains replayed within ${fmt(T.a.result.replayError)} of the generated tokens.`);
    render();
  } catch (err) {
    $('teach-progress').hidden = true;
    setState('error');
    status(`The analysis failed: ${err.message}`);
  }
}

function tokenFromClick(canvas, e) {
  const r = T.a && T.a.result;
  if (!r) return null;
  const rect = canvas.getBoundingClientRect();
  const col = Math.floor(((e.clientX - rect.left) / rect.width) * r.grid);
  const row = Math.floor(((e.clientY - rect.top) / rect.height) * r.grid);
  if (col < 0 || row < 0 || col >= r.grid || row >= r.grid) return null;
  return row * r.grid + col;
}

function attach() {
  const host = window.disaHost;
  const main = document.querySelector('main');
  if (!host || !main) return;
  const card = buildCard();
  main.after(card);
  host.onTeach = onMessage;
  $('teach-run').addEventListener('click', analyse);
  const scrub = () => {
    T.j = Number($('teach-scrubber').value);
    render();
  };
  $('teach-scrubber').addEventListener('input', scrub);
  $('teach-scrubber').addEventListener('change', scrub);
  for (const id of ['teach-tokens', 'teach-cmp-diff']) {
    $(id).addEventListener('click', (e) => {
      const p = tokenFromClick($(id), e);
      if (p == null) return;
      T.selected = p;
      render();
    });
  }
  let pending = 0;
  new ResizeObserver(() => {
    if (!pending) pending = requestAnimationFrame(() => ((pending = 0), render()));
  }).observe(card);
}

/** For tests: select a token by position. */
T.inspect = (p) => {
  T.selected = p;
  render();
};

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', attach);
else attach();
