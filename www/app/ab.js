// The A/B card: plain MAR and DiSA from the same seed, alternating for a number of rounds; the
// median sampling speed-up with its spread, the head-call ratio of the two runs (each run's
// head calls are the library's totals), and the head's own speed-up: the transformer's time,
// the same under every schedule, is why the total gains less than the head.

import { $, ui } from './state.js';
import { formatMs, formatRatio, median } from '../format.js';
import { clearCanvas, drawPixels } from './draw.js';
import { scheduleLabel, shortSchedule } from './schedule-editor.js';

export function showAbRunning() {
  $('ab-card').classList.add('running');
  $('speedup').classList.remove('has');
  $('speedup').textContent = '…';
  $('speedup-spread').textContent = '\u00a0';
  $('head-call-ratio').textContent = '…';
  $('head-speedup').textContent = '…';
  $('ab-baseline-meta').textContent = 'running…';
  $('ab-disa-meta').textContent = 'waiting…';
  $('ab-status').textContent = ui.ab && ui.ab.rounds > 1 ? `${ui.ab.rounds} rounds, alternating plain MAR and DiSA…` : 'running…';
  clearCanvas($('ab-baseline-canvas'));
  clearCanvas($('ab-disa-canvas'));
}

/** Caption of one side: schedule, median sampling time over the rounds so far, head calls. */
function abMeta(request, runs) {
  const ms = median(runs.map(samplingMs));
  const of = runs.length > 1 ? ` (median of ${runs.length})` : '';
  return `${scheduleLabel(request)}\n${formatMs(ms)} sampling${of}\n${runs[0].headCalls} calls`;
}

/** Transformer + head time of a run: the work DiSA changes (previews are decoded apart). */
const samplingMs = (msg) => (msg.samplingMs != null ? msg.samplingMs : msg.totalMs);

/** The per-round speed-ups so far: baseline ÷ DiSA sampling time of the same round. */
function abRatios(ab) {
  return ab.disa.map((d, i) => samplingMs(ab.baseline[i]) / Math.max(1e-6, samplingMs(d)));
}

/** The head's own speed-ups so far (`null` when the runs did not report their phases). */
function headRatios(ab) {
  if (!ab.disa.every((d, i) => d.headMs > 0 && ab.baseline[i].headMs > 0)) return null;
  return ab.disa.map((d, i) => ab.baseline[i].headMs / d.headMs);
}

/** Median transformer time of one side's runs, in ms. */
const transformerMs = (runs) => median(runs.map((r) => r.transformerMs || 0));

/** The baseline run of a round finished: its image (first round) and caption. */
export function showAbBaseline(ab, msg) {
  if (ab.round === 0) {
    drawPixels($('ab-baseline-canvas'), msg.image);
    $('ab-baseline-meta').textContent = abMeta(ab.base, ab.baseline);
  }
}

/** After each round: the images (first round), the median speed-up and its spread. */
export function showAbResult(ab) {
  const last = ab.disa[ab.disa.length - 1];
  if (ab.disa.length === 1) drawPixels($('ab-disa-canvas'), last.image);
  $('ab-baseline-meta').textContent = abMeta(ab.base, ab.baseline);
  $('ab-disa-meta').textContent = abMeta(ab.request, ab.disa);
  const ratios = abRatios(ab);
  $('speedup').textContent = formatRatio(median(ratios));
  $('speedup').classList.add('has');
  $('speedup-spread').textContent =
    ratios.length > 1
      ? `median of ${ratios.length} · ${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}`
      : 'one round: timings swing';
  $('head-call-ratio').textContent = formatRatio(ab.baseline[0].headCalls / Math.max(1, last.headCalls));
  const head = headRatios(ab);
  $('head-speedup').textContent = head ? formatRatio(median(head)) : '–';
  $('ab-status').textContent = ab.disa.length < ab.rounds ? `round ${ab.disa.length}/${ab.rounds} done…` : '\u00a0';
}

/** The comparison is complete: the card stops running and the explanation quotes the result. */
export function showAbDone(ab) {
  $('ab-card').classList.remove('running');
  const ratios = abRatios(ab);
  const heads = ab.baseline[0].headCalls / Math.max(1, ab.disa[0].headCalls);
  const spread = ratios.length > 1 ? ` (median of ${ratios.length} rounds, ${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})` : ' (one round)';
  $('ab-status').textContent = `${ab.rounds} round${ab.rounds > 1 ? 's' : ''} · ${ui.backendInfo ? ui.backendInfo.backend : ''}`;
  $('explain-measured').textContent =
    `Measured here just now: ${formatRatio(median(ratios))} faster sampling${spread} and ${formatRatio(heads)} fewer head calls, ` +
    `plain MAR at ${ab.plan.baseline.steps} steps${ab.base.clip != null ? ` (clip ${ab.base.clip})` : ' (no clip)'} vs ` +
    `${shortSchedule(ab.request.schedule)}, K = ${ab.request.arSteps}.` +
    amdahl(ab, median(ratios), heads);
}

/**
 * Why the total gains less than the head: the transformer's time, measured on both sides. The
 * speed-up is (T + H_plain) / (T + H_DiSA), so it approaches the head's own only when T is small.
 */
function amdahl(ab, total, heads) {
  if (!(total < heads)) return '';
  const head = headRatios(ab);
  if (!head) return ' The transformer’s time does not shrink with T, so the speed-up stays below the head-call ratio.';
  const [plain, disa] = [transformerMs(ab.baseline), transformerMs(ab.disa)];
  return ` The head alone ran ${formatRatio(median(head))} faster; the transformer took ${formatMs(plain)} in plain MAR ` +
    `and ${formatMs(disa)} with DiSA (it does not depend on T), so the whole run gains less.`;
}

/** An A/B pair that was interrupted (Stop, Generate, a setting) clears its "running" state. */
export function showAbInterrupted(ab, reason) {
  $('ab-card').classList.remove('running');
  if (ab.disa.length > 0) {
    // Some rounds finished: keep their figures, say the rest did not run.
    $('ab-status').textContent = `stopped after ${ab.disa.length} of ${ab.rounds} rounds`;
    return;
  }
  const why = reason === 'stop' ? 'stopped' : reason === 'settings' ? 'stopped: settings changed' : 'interrupted';
  $('ab-baseline-meta').textContent = ab.baseline.length ? abMeta(ab.base, ab.baseline) : why;
  $('ab-disa-meta').textContent = 'not run';
  $('speedup').textContent = '–';
  $('speedup-spread').textContent = '\u00a0';
  $('head-call-ratio').textContent = '–';
  $('head-speedup').textContent = '–';
  $('ab-status').textContent = `The comparison was ${why === 'interrupted' ? 'interrupted by another run' : why}: press A/B to run it again.`;
}

/** What each baseline means, said on the card, not only in a tooltip. */
export function showBaselineNote() {
  const official = $('ab-baseline').value === 'official';
  $('ab-clip-note').hidden = official;
  const note = $('ab-official-note');
  note.hidden = !official;
  if (!official) return;
  const builtIn = !ui.modelFile;
  note.classList.toggle('warn', !builtIn);
  note.textContent = builtIn
    ? 'The official code starts each token\'s denoising at t = 999, DiSA at 950: the images differ in the schedule and in those first timesteps. The built-in model was trained for t = 999 too (extra weight on the last timesteps), so both images should be clean garments.'
    : 'The official code starts denoising at t = 999, DiSA at t = 950. A model trained little on the last timesteps can fail at t = 999 and draw noise there (the built-in model was trained for it); if this baseline image is noise, compare times only.';
}
