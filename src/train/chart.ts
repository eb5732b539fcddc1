/**
 * loss.png: the training loss per step (raw, faint; smoothed, bold) and the validation loss per epoch, drawn
 * as an SVG and rasterized by sharp (librsvg inside libvips; no other dependency, no binary download).
 */
import sharp from 'sharp';
import { writeFileAtomic } from '../util/atomic.js';

const W = 900;
const H = 480;
const M = { left: 70, right: 20, top: 40, bottom: 50 };

/** Exponential moving average with bias correction (the smoothing TensorBoard applies). */
export function smooth(values: readonly number[], beta = 0.98): number[] {
  const out: number[] = [];
  let m = 0;
  values.forEach((v, i) => {
    m = beta * m + (1 - beta) * v;
    out.push(m / (1 - beta ** (i + 1)));
  });
  return out;
}

/** "Nice" tick values covering [lo, hi]. */
function ticks(lo: number, hi: number, n = 6): number[] {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step)
    out.push(Number(t.toPrecision(12)));
  return out;
}

function escapeXml(s: string): string {
  return s.replace(
    /[<>&"]/g,
    (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c] as string,
  );
}

/** The chart as SVG text. `losses[i]` is step i + 1's loss. */
export function lossChartSvg(
  losses: readonly number[],
  val: ReadonlyArray<{ step: number; loss: number }>,
  stepsPerEpoch: number,
): string {
  const n = losses.length;
  const all = [...losses, ...val.map((v) => v.loss)].filter(Number.isFinite);
  let lo = all.length ? Math.min(...sample(all, 4096)) : 0;
  let hi = all.length ? Math.max(...sample(all, 4096)) : 1;
  if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5, hi + 0.5];
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const maxStep = Math.max(1, n, ...val.map((v) => v.step));
  const x = (step: number): number => M.left + (step / maxStep) * pw;
  const y = (v: number): number => M.top + (1 - (v - lo) / (hi - lo)) * ph;
  // At most ~1500 points per line: every k-th step (the smoothed line carries the trend).
  const every = Math.max(1, Math.ceil(n / 1500));
  const line = (vs: readonly number[]): string => {
    const pts: string[] = [];
    for (let i = 0; i < vs.length; i += every) pts.push(`${x(i + 1).toFixed(1)},${y(vs[i]).toFixed(1)}`);
    if (vs.length && (vs.length - 1) % every !== 0)
      pts.push(`${x(vs.length).toFixed(1)},${y(vs[vs.length - 1]).toFixed(1)}`);
    return pts.join(' ');
  };
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">clipcap train: loss</text>`,
  ];
  for (const t of ticks(lo, hi)) {
    const yy = y(t).toFixed(1);
    parts.push(`<line x1="${M.left}" x2="${W - M.right}" y1="${yy}" y2="${yy}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${M.left - 6}" y="${yy}" text-anchor="end" dominant-baseline="middle">${t}</text>`);
  }
  for (const t of ticks(0, maxStep)) {
    const xx = x(t).toFixed(1);
    parts.push(`<text x="${xx}" y="${H - M.bottom + 18}" text-anchor="middle">${t}</text>`);
  }
  // Epoch boundaries, when there are few enough to see.
  if (stepsPerEpoch > 0 && maxStep / stepsPerEpoch <= 50)
    for (let e = stepsPerEpoch; e < maxStep; e += stepsPerEpoch)
      parts.push(
        `<line x1="${x(e).toFixed(1)}" x2="${x(e).toFixed(1)}" y1="${M.top}" y2="${H - M.bottom}" stroke="#f0f0f0"/>`,
      );
  parts.push(
    `<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`,
    `<text x="${M.left + pw / 2}" y="${H - 12}" text-anchor="middle">step</text>`,
  );
  if (n > 0) {
    parts.push(`<polyline fill="none" stroke="#9ecae1" stroke-width="1" points="${line(losses)}"/>`);
    // Smoothing over ~1/20 of the run (at most ~50 steps), so a short run's curve does not lag behind it.
    const beta = Math.min(0.98, Math.max(0.5, 1 - 20 / n));
    parts.push(
      `<polyline fill="none" stroke="#08519c" stroke-width="2" points="${line(smooth(losses, beta))}"/>`,
    );
  }
  if (val.length > 0) {
    const pts = val.map((v) => `${x(v.step).toFixed(1)},${y(v.loss).toFixed(1)}`).join(' ');
    parts.push(`<polyline fill="none" stroke="#e6550d" stroke-width="2" points="${pts}"/>`);
    for (const v of val)
      parts.push(`<circle cx="${x(v.step).toFixed(1)}" cy="${y(v.loss).toFixed(1)}" r="3" fill="#e6550d"/>`);
  }
  const last = n > 0 ? `train ${losses[n - 1].toPrecision(4)}` : 'no steps yet';
  const lastVal = val.length > 0 ? `, validation ${val[val.length - 1].loss.toPrecision(4)}` : '';
  parts.push(
    `<text x="${W - M.right - 4}" y="${M.top + 16}" text-anchor="end">${escapeXml(`step ${n}: ${last}${lastVal}`)}</text>`,
    `<line x1="${M.left + 10}" x2="${M.left + 30}" y1="${M.top + 14}" y2="${M.top + 14}" stroke="#08519c" stroke-width="2"/>`,
    `<text x="${M.left + 36}" y="${M.top + 18}">train (smoothed)</text>`,
  );
  if (val.length > 0)
    parts.push(
      `<line x1="${M.left + 10}" x2="${M.left + 30}" y1="${M.top + 32}" y2="${M.top + 32}" stroke="#e6550d" stroke-width="2"/>`,
      `<text x="${M.left + 36}" y="${M.top + 36}">validation</text>`,
    );
  parts.push('</svg>');
  return parts.join('\n');
}

/** Up to `max` evenly spaced values (min/max over millions of steps without spreading them all). */
function sample(vs: readonly number[], max: number): number[] {
  if (vs.length <= max) return [...vs];
  const out: number[] = [];
  const every = vs.length / max;
  for (let i = 0; i < max; i++) out.push(vs[Math.floor(i * every)]);
  out.push(vs[vs.length - 1]);
  return out;
}

/** Draw the chart and write it as PNG atomically. */
export async function writeLossChart(
  file: string,
  losses: readonly number[],
  val: ReadonlyArray<{ step: number; loss: number }>,
  stepsPerEpoch: number,
): Promise<void> {
  const png = await sharp(Buffer.from(lossChartSvg(losses, val, stepsPerEpoch)))
    .png()
    .toBuffer();
  await writeFileAtomic(file, png);
}
