#!/usr/bin/env node
/**
 * Dev-only: clipcap against its peers, side by side, alternating the contestants over several rounds (the
 * machine is shared, so one round of each says little), then medians and ratios per case. Run from the repo
 * after `npm run build` (and `npm run build:native`), with Debian's torch for the PyTorch peers:
 *
 *   node bench/compare.mjs [--rounds 3] [--threads 2] [--what clip,caption,train] [--weights int8,bf16]
 *                          [--contestants pytorch,onnxruntime] [--json out.json]
 *
 * --weights adds clipcap with GPT-2's weights in reduced precision (contestants clipcap_int8 / clipcap_bf16,
 * `bench caption --weights`), reported against the best peer too; their tokens are not required to equal the
 * f32 ones (bench/quant_accuracy.mjs measures the agreement). --contestants keeps only the named peers.
 *
 * Contestants per round, in alternating order (odd rounds clipcap first, even rounds the peers first):
 * - clip: `clipcap bench clip` (bs1, bs16), bench/pytorch_clip.py (plain PyTorch, OMP_WAIT_POLICY=PASSIVE) and
 *   bench/ort_bench.mjs (onnxruntime-node on ONNX exports of the same weights);
 * - caption: `clipcap bench caption` (beam5_20tok, greedy_20tok, batch32_beam5), bench/pytorch_caption.py
 *   --decoders kv (PyTorch with a KV cache, the tuned peer; the official decoders are 10-20x slower and are
 *   left to `clipcap bench caption --pytorch`) and bench/ort_bench.mjs (onnxruntime-node, merged KV graph);
 * - train: `clipcap bench train` and bench/pytorch_train.py (the same optimizer steps in PyTorch autograd).
 * Every contestant runs with the same thread count on the same synthetic full-size weights (fixture rule).
 * Outputs are checked, not assumed: every round, each peer's greedy tokens and best beam for the first bench
 * embedding must equal clipcap's (machine.tokens_*), and the CLIP peers' embeddings of the two golden photos must
 * be within 1e-5 of fullsize_goldens (relative to its largest value); a mismatch stops the comparison.
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
const only = opt('contestants', null)?.split(',') ?? null;
/** --weights int8[,bf16]: also time clipcap's reduced-precision GPT-2 (contestants clipcap_int8, ...). */
const weights = opt('weights', null)?.split(',') ?? [];
const jsonOut = opt('json', null);
const python = process.env.CLIPCAP_PYTHON ?? '/usr/bin/python3';
const fixtures = path.join(repo, 'test', 'fixtures');

/** Rows of the table: bench, case, metric. */
const CASES = {
  clip: ['bs1', 'bs16'],
  caption: ['greedy_20tok', 'beam5_20tok', 'batch32_beam5'],
  train: ['mlp_finetune_b8_t20', 'transformer_frozen_b8_t20'],
};
const EMBEDS_TOLERANCE = 1e-5;

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

/** `clipcap bench WHAT` from this checkout's build, JSON, at the shared thread count. */
const clipcapBench = (what, ...extra) =>
  run(process.execPath, [
    'dist/src/cli/main.js',
    'bench',
    what,
    '--format',
    'json',
    '--threads',
    threads,
    ...extra,
  ]);

const contestants = {
  clip: {
    clipcap: () => clipcapBench('clip'),
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
      ]),
    onnxruntime: () =>
      run(process.execPath, ['bench/ort_bench.mjs', '--what', 'clip', '--threads', threads, '--runs', '5']),
  },
  caption: {
    clipcap: () => clipcapBench('caption'),
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
      ]),
    onnxruntime: () =>
      run(process.execPath, [
        'bench/ort_bench.mjs',
        '--what',
        'caption',
        '--threads',
        threads,
        '--runs',
        '3',
      ]),
  },
  train: {
    clipcap: () => clipcapBench('train'),
    pytorch: () =>
      run(python, ['bench/pytorch_train.py', '--threads', threads, '--runs', '3', '--fixtures', fixtures]),
  },
};

for (const w of weights) {
  contestants.caption[`clipcap_${w}`] = () => clipcapBench('caption', '--weights', w);
}
/** clipcap's own contestants (f32 and any --weights): not peers, and their ratios are against the peers. */
const isClipcap = (name) => name === 'clipcap' || name.startsWith('clipcap_');

/** Each contestant's output for the first bench embedding ({case: tokens}), or null where it has none. */
function tokensOf(name, doc) {
  if (name === 'clipcap') {
    const m = doc.machine ?? {};
    const t = {};
    for (const c of ['greedy_20tok', 'beam5_20tok'])
      if (typeof m[`tokens_${c}`] === 'string') t[c] = m[`tokens_${c}`].split(',').map(Number);
    return Object.keys(t).length ? t : null;
  }
  return doc.kv_tokens ?? doc.tokens ?? null;
}

/** Throws unless the round's outputs agree: peers' tokens equal clipcap's, CLIP embeddings match the goldens. */
function checkOutputs(bench, docs) {
  if (bench === 'caption') {
    const ours = docs.clipcap && tokensOf('clipcap', docs.clipcap);
    for (const [name, doc] of Object.entries(docs)) {
      // Reduced-precision weights may change tokens (bench/quant_accuracy.mjs measures by how much).
      if (isClipcap(name) || !ours) continue;
      const theirs = tokensOf(name, doc);
      for (const c of Object.keys(ours)) {
        if (JSON.stringify(theirs?.[c]) !== JSON.stringify(ours[c]))
          throw new Error(
            `${name} ${c} tokens ${JSON.stringify(theirs?.[c])} != clipcap's ${JSON.stringify(ours[c])}`,
          );
      }
      process.stderr.write(`  ${name}: greedy and best-beam tokens identical to clipcap's\n`);
    }
  }
  if (bench === 'clip') {
    for (const [name, doc] of Object.entries(docs)) {
      const d = doc.embeds_max_rel_diff;
      if (typeof d !== 'number') continue;
      if (!(d <= EMBEDS_TOLERANCE))
        throw new Error(`${name} CLIP embeddings differ from the goldens by ${d}`);
      process.stderr.write(`  ${name}: CLIP embeddings within ${d.toExponential(1)} of the goldens\n`);
    }
  }
}

/** values[bench][case][contestant] = [per round] */
const values = {};
for (let round = 1; round <= rounds; round++) {
  for (const bench of what) {
    const names = Object.keys(contestants[bench]).filter((n) => isClipcap(n) || !only || only.includes(n));
    if (round % 2 === 0) names.reverse();
    const docs = {};
    for (const name of names) {
      process.stderr.write(`round ${round}/${rounds}: ${bench} ${name}\n`);
      docs[name] = contestants[bench][name]();
    }
    checkOutputs(bench, docs);
    for (const name of names) {
      for (const r of docs[name].results) {
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
    const peers = Object.keys(meds).filter((n) => !isClipcap(n));
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
    for (const n of Object.keys(meds).filter((x) => x.startsWith('clipcap_'))) {
      const r = best === null ? NaN : lower(metric) ? meds[best] / meds[n] : meds[n] / meds[best];
      console.log(`${bench} ${c}: ${n} / best peer (${best}) = ${r.toFixed(2)}`);
    }
    summary.push({ bench, case: c, metric, medians: meds, rounds: byName, best_peer: best, ratio });
  }
}
if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ rounds, threads, summary }, null, 2));
