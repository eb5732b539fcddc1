#!/usr/bin/env node
/**
 * Dev-only: clipcap against its peers, side by side, alternating the contestants over several rounds (the
 * machine is shared, so one round of each says little), then medians and ratios per case. Run from the repo
 * after `npm run build` (and `npm run build:native`), with Debian's torch for the PyTorch peers:
 *
 *   node bench/compare.mjs [--rounds 3] [--threads 2] [--what clip,caption] [--json out.json]
 *
 * Contestants per round, in alternating order (odd rounds clipcap first, even rounds the peers first):
 * - clip: `clipcap bench clip` (bs1, bs16) and bench/pytorch_clip.py (plain PyTorch, OMP_WAIT_POLICY=PASSIVE);
 * - caption: `clipcap bench caption` (beam5_20tok, greedy_20tok, batch32_beam5) and bench/pytorch_caption.py
 *   --decoders kv (PyTorch with a KV cache, the tuned peer; the official decoders are 10-20x slower and are
 *   left to `clipcap bench caption --pytorch`).
 * Every contestant runs with the same thread count on the same synthetic full-size weights (fixture rule).
 * Prints one line per (case, contestant) with the median over rounds and every round's value, and
 * clipcap / best peer per case (> 1: clipcap faster).
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const rounds = Number(opt('rounds', '3'));
const threads = String(opt('threads', '2'));
const what = opt('what', 'clip,caption').split(',');
const jsonOut = opt('json', null);
const python = process.env.CLIPCAP_PYTHON ?? '/usr/bin/python3';
const fixtures = path.join(repo, 'test', 'fixtures');

/** Rows of the table: bench, case, metric. */
const CASES = {
  clip: ['bs1', 'bs16'],
  caption: ['greedy_20tok', 'beam5_20tok', 'batch32_beam5'],
};

function run(cmd, argv) {
  const r = spawnSync(cmd, argv, {
    cwd: repo,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed (exit ${r.status ?? r.signal})`);
  return JSON.parse(r.stdout.slice(r.stdout.indexOf('{')));
}

const contestants = {
  clip: {
    clipcap: () =>
      run(process.execPath, [
        'dist/src/cli/main.js',
        'bench',
        'clip',
        '--format',
        'json',
        '--threads',
        threads,
      ]).results,
    pytorch: () =>
      run(python, [
        'bench/pytorch_clip.py',
        '--threads',
        threads,
        '--runs',
        '5',
        '--fixtures',
        fixtures,
        '--images',
        path.join(fixtures, 'images'),
        '--batch',
        '16',
      ]).results,
  },
  caption: {
    clipcap: () =>
      run(process.execPath, [
        'dist/src/cli/main.js',
        'bench',
        'caption',
        '--format',
        'json',
        '--threads',
        threads,
      ]).results,
    pytorch_kv: () =>
      run(python, [
        'bench/pytorch_caption.py',
        '--threads',
        threads,
        '--runs',
        '3',
        '--fixtures',
        fixtures,
        '--decoders',
        'kv',
      ]).results,
  },
};

/** values[bench][case][contestant] = [per round] */
const values = {};
for (let round = 1; round <= rounds; round++) {
  for (const bench of what) {
    const names = Object.keys(contestants[bench]);
    if (round % 2 === 0) names.reverse();
    for (const name of names) {
      process.stderr.write(`round ${round}/${rounds}: ${bench} ${name}\n`);
      for (const r of contestants[bench][name]()) {
        if (!CASES[bench].includes(r.case)) continue;
        const byCase = ((values[bench] ??= {})[r.case] ??= {});
        (byCase[name] ??= []).push({ value: r.value, metric: r.metric });
      }
    }
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const lower = (metric) => /^(ms|s)(_per_.+)?$/.test(metric);
const summary = [];
for (const bench of what) {
  for (const c of CASES[bench]) {
    const byName = values[bench]?.[c] ?? {};
    const meds = Object.fromEntries(
      Object.entries(byName).map(([n, v]) => [n, median(v.map((x) => x.value))]),
    );
    const metric = Object.values(byName)[0]?.[0].metric ?? '?';
    const peers = Object.keys(meds).filter((n) => n !== 'clipcap');
    const best = peers.reduce(
      (b, n) => (b === null || (lower(metric) ? meds[n] < meds[b] : meds[n] > meds[b]) ? n : b),
      null,
    );
    const ratio = best === null ? NaN : lower(metric) ? meds[best] / meds.clipcap : meds.clipcap / meds[best];
    for (const [n, v] of Object.entries(byName))
      console.log(
        `${bench} ${c} ${n}: median ${meds[n].toFixed(2)} ${metric} (rounds: ${v.map((x) => x.value.toFixed(2)).join(', ')})`,
      );
    console.log(`${bench} ${c}: clipcap / best peer (${best}) = ${ratio.toFixed(2)}`);
    summary.push({ bench, case: c, metric, medians: meds, rounds: byName, best_peer: best, ratio });
  }
}
if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ rounds, threads, summary }, null, 2));
