// Canvas helpers shared by the views: colour ramps, HiDPI sizing, RGBA images, axes.

import { clamp } from './state.js';

export const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
export const MAGMA = [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]];

/** The colour at `t` in 0..1 along `stops`, and whether dark text reads on it. */
export function ramp(stops, t) {
  const x = clamp(t, 0, 1) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const c = stops[i].map((a, j) => Math.round(a + (stops[i + 1][j] - a) * f));
  return { css: `rgb(${c[0]},${c[1]},${c[2]})`, light: 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2] > 140 };
}

/** Sizes a canvas's backing store to its CSS box and returns a context in CSS pixels. */
export function fitCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth);
  const h = Math.max(1, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function toClamped(pixels, n) {
  if (pixels instanceof Uint8ClampedArray) return pixels.length === n ? pixels : pixels.subarray(0, n);
  if (pixels instanceof ArrayBuffer) return new Uint8ClampedArray(pixels, 0, n);
  if (ArrayBuffer.isView(pixels)) return new Uint8ClampedArray(pixels.buffer, pixels.byteOffset, n);
  return Uint8ClampedArray.from(pixels.slice(0, n));
}

/** Puts an RGBA image `{width, height, pixels}` on a canvas at its native size (CSS scales it, pixelated). */
export function drawPixels(canvas, img) {
  if (!img || !img.pixels) return;
  const n = img.width * img.height * 4;
  if ((img.pixels.length ?? img.pixels.byteLength) < n) return;
  canvas.width = img.width;
  canvas.height = img.height;
  canvas.getContext('2d').putImageData(new ImageData(toClamped(img.pixels, n), img.width, img.height), 0, 0);
}

export function clearCanvas(canvas) {
  canvas.width = 1;
  canvas.height = 1;
}

/** The smallest round number ≥ x, for axis tops that move in small steps. */
export function niceCeil(x) {
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

/** Y-axis labels and light grid lines at 0, half and max. */
export function axisLabels(ctx, padL, plotH, yMax, unit, top = 4) {
  ctx.font = '10px system-ui, sans-serif';
  ctx.textBaseline = 'middle';
  ctx.textAlign = 'right';
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH - f * plotH;
    ctx.fillStyle = '#8d96aa';
    const v = yMax * f;
    ctx.fillText(`${Number.isInteger(v) ? v : v.toFixed(1)}${f === 1 && unit ? ` ${unit}` : ''}`, padL - 4, y);
    ctx.strokeStyle = 'rgba(255,255,255,0.06)';
    ctx.beginPath();
    ctx.moveTo(padL, Math.round(y) + 0.5);
    ctx.lineTo(ctx.canvas.clientWidth, Math.round(y) + 0.5);
    ctx.stroke();
  }
  ctx.textAlign = 'start';
}
