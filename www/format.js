// Small pure helpers of the page, in their own module so that the end-to-end test can import
// them in Node and check them directly (tests/e2e/e2e.test.mjs).

/**
 * A duration for the page's counters, short enough for a narrow box (at most 7 characters):
 * `850 ms`, `9999 ms`, `12.3 s`, `146 s`, `17 min`, `2.5 h`. Below 10 s in whole milliseconds;
 * from 10 s on in seconds, so that long runs (a software GPU) are never cut off.
 */
export function formatMs(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) return '–';
  if (ms < 9999.5) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 99.95) return `${s.toFixed(1)} s`;
  if (s < 999.5) return `${Math.round(s)} s`;
  const min = s / 60;
  if (min < 99.5) return `${Math.round(min)} min`;
  return `${(min / 60).toFixed(1)} h`;
}

/** The median of a non-empty list of numbers (the mean of the middle two for even lengths). */
export function median(values) {
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** A ratio as the page shows it: `1.84×`. */
export const formatRatio = (x) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : '–');
