/**
 * `clipcap bench caption`: captioning latency and throughput at full size (GPT-2 small + the 512 -> 3840 -> 7680
 * MLP mapper, weights by the fixture rule unless --clipcap gives a checkpoint), through the library API
 * (ClipCap.caption: mapper, decoder with the KV cache, BPE decode), and with --pytorch the official predict.py
 * decoders on plain PyTorch (bench/pytorch_caption.py), which recompute the whole sequence at every step, and
 * PyTorch with a KV cache (backend "pytorch_kv": the tuned peer; --pytorch-decoders picks which run).
 *
 * Every case starts from a CLIP embedding (made by the weight rule: benchEmbeddings), so it times the mapper and
 * the decoder; the CLIP forward is `clipcap bench clip`. Tokens: 20, with no stop token, so every run does the same
 * work. Cases (DESIGN.md "Contracts"):
 * - beam5_20tok, greedy_20tok: one image, metric ms (total latency), with peak RSS; plus
 *   beam5_20tok_per_token / greedy_20tok_per_token, metric ms_per_token (latency / 20);
 * - batch32_beam5: 32 images in one batch, beam 5, metric captions_per_s. PyTorch's side is what the official
 *   code does for 32 images: 32 sequential generate_beam calls, of which the first --pytorch-batch-calls (default
 *   2) are timed (every call does the same work).
 * --weights bf16|int8 times GPT-2 with weight-only reduced precision (Gpt2Model.quantizeWeights; machine.weights
 * says which). machine.tokens_<case> records the first embedding's tokens (greedy; best beam) of each single-image case, comma-
 * separated, so that peers (bench/compare.mjs) can check they produce the same output.
 * Runs: 3 for the single-image cases and 1 for the batch (after a warm-up); PyTorch 1 (its beam search takes
 * ~20 s per caption on 2 cores); --runs N sets them all.
 */
import path from 'node:path';
import type { Backend, WeightFormat } from '../engine/backend.js';
import { ClipCapModel } from '../models/clipcap.js';
import { GPT2_SMALL, type Gpt2Config, type MapperConfig } from '../config/models.js';
import { syntheticGpt2, syntheticMapper, syntheticValues } from '../models/synthetic.js';
import { ClipCap } from '../pipeline/caption.js';
import { captionerParts } from '../pipeline/load.js';
import type { CaptionOptions, CaptionResult } from '../pipeline/types.js';
import { UsageError, UserError } from '../util/errors.js';
import { benchEngine, loadPeers, runsOf, timeAsync } from './common.js';
import { machineInfo, median, speedup } from './report.js';
import type { BenchReport, BenchResult, BenchRunOptions } from './report.js';

const DEFAULT_RUNS = 3;
/** One batch of 32 beam searches takes ~30 s on 2 cores: one timed run unless --runs says otherwise. */
const DEFAULT_BATCH_RUNS = 1;
/** PyTorch's official beam search takes ~20 s per caption on 2 cores: one run by default. */
const DEFAULT_PYTORCH_RUNS = 1;
const DEFAULT_PYTORCH_BATCH_CALLS = 2;
const TOKENS = 20;
const SMOKE_TOKENS = 3;
const BATCH = 32;
const BEAM = 5;

/** The tiny GPT-2 and mapper of the --smoke runs: the fixture models' shapes (weights by the same rule). */
export const SMOKE_GPT2: Gpt2Config = { ...GPT2_SMALL, n_positions: 128, n_embd: 32, n_layer: 2, n_head: 4 };
export const SMOKE_MAPPER: MapperConfig = {
  kind: 'mlp',
  prefix_size: 24,
  prefix_length: 10,
  sizes: [24, 160, 320],
};

/**
 * n CLIP embeddings of width d: row i = base[i % 2] · (1 + 0.05 · floor(i / 2)), rounded once to float32, with
 * the two bases made by the weight rule (tensors `bench.clip_embedding.0` / `.1`): no files needed, and
 * bench/pytorch_caption.py makes the same ones.
 */
export function benchEmbeddings(n: number, d: number): Float32Array[] {
  const base = [syntheticValues('bench.clip_embedding.0', d), syntheticValues('bench.clip_embedding.1', d)];
  return Array.from({ length: n }, (_, i) => {
    const s = 1 + 0.05 * Math.floor(i / 2);
    return Float32Array.from(base[i % 2], (v) => Math.fround(v * s));
  });
}

/** --weights: f32 (default), bf16 or int8. */
function weightsOption(opts: BenchRunOptions): 'f32' | WeightFormat {
  const w = opts.extra.weights ?? 'f32';
  if (w !== 'f32' && w !== 'bf16' && w !== 'int8')
    throw new UsageError(`--weights must be f32, bf16 or int8, got "${String(w)}"`);
  return w;
}

async function buildCaptioner(
  opts: BenchRunOptions,
  backend: Backend,
): Promise<{ captioner: ClipCap; what: string; synthetic: boolean }> {
  const clipcap = opts.extra.clipcap;
  const weights = weightsOption(opts);
  if (typeof opts.extra.gpt2 === 'string' && typeof clipcap !== 'string')
    throw new UsageError(
      'bench caption: --gpt2 goes with --clipcap FILE (the checkpoint the mapper comes from)',
    );
  if (typeof clipcap === 'string') {
    const gpt2 = typeof opts.extra.gpt2 === 'string' ? opts.extra.gpt2 : undefined;
    const captioner = await ClipCap.load({ clipcap, gpt2, backend, weights });
    return { captioner, what: path.basename(clipcap), synthetic: false };
  }
  const smoke = opts.extra.smoke === true;
  const g = syntheticGpt2(smoke ? SMOKE_GPT2 : undefined);
  const m = smoke ? syntheticMapper(SMOKE_MAPPER, SMOKE_GPT2.n_embd) : syntheticMapper();
  const what = smoke
    ? 'tiny GPT-2 + MLP mapper (fixture rule, --smoke)'
    : 'GPT-2 small + MLP mapper 512-3840-7680, synthetic weights (fixture rule)';
  const model = ClipCapModel.create(backend, { mapper: m.config, mapperWeights: m.weights, gpt2: g }, what);
  if (weights !== 'f32') model.gpt2.quantizeWeights(weights);
  const captioner = new ClipCap(await captionerParts(model, { description: what }));
  return { captioner, what, synthetic: !smoke };
}

/** Tokens of each result; a failed input or a wrong length is a bug in the bench or the decoder. */
function checkTokens(results: CaptionResult[], tokens: number, what: string): number[][] {
  return results.map((r) => {
    if (r.error !== undefined) throw new Error(`${what}: ${r.error}`);
    if (r.tokens.length !== tokens)
      throw new Error(`${what}: ${r.tokens.length} tokens, expected ${tokens} (no stop token)`);
    return r.tokens;
  });
}

function positiveIntOption(v: string | boolean | undefined, name: string, dflt: number): number {
  if (typeof v !== 'string') return dflt;
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || n < 1 || n > 1000)
    throw new UsageError(`${name} must be an integer from 1 to 1000, got "${v}"`);
  return n;
}

export async function runCaptionBench(opts: BenchRunOptions): Promise<BenchReport> {
  const smoke = opts.extra.smoke === true;
  const runs = runsOf(opts, DEFAULT_RUNS);
  const batchRuns = runsOf(opts, DEFAULT_BATCH_RUNS);
  const warmup = smoke ? 0 : 1;
  const T = smoke ? SMOKE_TOKENS : TOKENS;
  const torchRuns = opts.runs ?? DEFAULT_PYTORCH_RUNS;
  const torchCalls = positiveIntOption(
    opts.extra.pytorchBatchCalls,
    '--pytorch-batch-calls',
    smoke ? 1 : DEFAULT_PYTORCH_BATCH_CALLS,
  );
  const decoders =
    typeof opts.extra.pytorchDecoders === 'string' ? opts.extra.pytorchDecoders : 'official,kv';
  if (!/^(official|kv)(,(official|kv))?$/.test(decoders))
    throw new UsageError(`--pytorch-decoders takes official, kv or official,kv, got "${decoders}"`);
  const eng = benchEngine(opts);
  if (typeof opts.extra.clip === 'string')
    opts.log('bench caption starts from CLIP embeddings: --clip is not used (see bench clip)');
  const { captioner, what, synthetic } = await buildCaptioner(opts, eng.backend);
  const extra: Record<string, string | number | boolean> = {
    ...eng.extra,
    model: what,
    tokens: T,
    weights: weightsOption(opts),
  };
  if (smoke) extra.smoke = true;
  const results: BenchResult[] = [];
  /** Our tokens for the first embedding per single-image case (the best beam), to compare with PyTorch's. */
  const firstTokens: Record<string, number[]> = {};
  try {
    const D = captioner.embeddingSize;
    const embeds = benchEmbeddings(BATCH, D);
    const caption = (n: number, o: CaptionOptions) =>
      captioner.caption(
        embeds.slice(0, n).map((embedding, i) => ({ embedding, name: `embedding ${i}` })),
        { maxTokens: T, stop: 'none', batchSize: n, ...o },
      );

    const single: { id: string; o: CaptionOptions }[] = [
      { id: `beam${BEAM}_20tok`, o: { method: 'beam', beamSize: BEAM } },
      { id: 'greedy_20tok', o: { method: 'greedy' } },
    ];
    for (const c of single) {
      const t = await timeAsync(
        async () => void (firstTokens[c.id] = checkTokens(await caption(1, c.o), T, c.id)[0]),
        runs,
        warmup,
      );
      const ms = median(t.seconds) * 1000;
      // The first embedding's tokens (best beam), so peers' outputs can be checked against ours.
      extra[`tokens_${c.id}`] = firstTokens[c.id].join(',');
      opts.log(`${c.id}: ${eng.name} ${ms.toFixed(0)} ms (${(ms / T).toFixed(1)} ms/token)`);
      results.push({
        case: c.id,
        backend: eng.name,
        metric: 'ms',
        value: ms,
        runs,
        peak_rss_mb: t.peakRssMb,
      });
      results.push({
        case: `${c.id}_per_token`,
        backend: eng.name,
        metric: 'ms_per_token',
        value: ms / T,
        runs,
      });
    }

    // The batch: warm up on a few images (first-use allocations), then time all 32 together.
    if (warmup > 0) await caption(2, { method: 'beam', beamSize: BEAM, maxTokens: 2 });
    const t = await timeAsync(
      async () => void checkTokens(await caption(BATCH, { method: 'beam', beamSize: BEAM }), T, 'batch'),
      batchRuns,
      0,
    );
    const rate = BATCH / median(t.seconds);
    opts.log(`batch${BATCH}_beam${BEAM}: ${eng.name} ${rate.toFixed(2)} captions/s`);
    results.push({
      case: `batch${BATCH}_beam${BEAM}`,
      backend: eng.name,
      metric: 'captions_per_s',
      value: rate,
      runs: batchRuns,
      peak_rss_mb: t.peakRssMb,
    });
  } finally {
    captioner.dispose(); // before PyTorch runs: the two should not share the memory
  }

  if (opts.extra.pytorch === true) {
    if (!synthetic && !smoke)
      opts.log('PyTorch uses the synthetic GPT-2 small + mapper (same shapes, so the same work)');
    opts.log(
      `running PyTorch decoders (${decoders}; bench/pytorch_caption.py) with ${eng.threads} thread(s), ` +
        `${torchRuns} run(s); official beam search takes ~20 s per caption on 2 cores...`,
    );
    const torch = (await loadPeers()).runTorchBench(
      'pytorch_caption.py',
      { threads: eng.threads, runs: torchRuns, smoke },
      [
        '--tokens',
        String(T),
        '--batch',
        String(BATCH),
        '--batch-calls',
        String(torchCalls),
        '--decoders',
        decoders,
      ],
      results,
      extra,
    );
    if (typeof torch.greedy10_ok === 'boolean') extra.torch_greedy10_ok = torch.greedy10_ok;
    if (torch.greedy10_ok === false)
      throw new UserError(
        'the PyTorch model does not reproduce clipcap.greedy10: the comparison would be invalid',
      );
    if (typeof torch.batch_calls_timed === 'number')
      extra.torch_batch32_calls_timed = torch.batch_calls_timed;
    if (typeof torch.kv_matches_official === 'boolean')
      extra.torch_kv_matches_official = torch.kv_matches_official;
    const kv = torch.kv_tokens as Record<string, number[]> | undefined;
    if (kv && synthetic) {
      // Same work on both sides: PyTorch's KV-cache decoders must produce our tokens.
      const same = Object.keys(firstTokens).every(
        (id) => JSON.stringify(kv[id]) === JSON.stringify(firstTokens[id]),
      );
      extra.torch_kv_tokens_identical = same;
      if (!same)
        opts.log(
          `WARNING: PyTorch KV tokens ${JSON.stringify(kv)} differ from ours ${JSON.stringify(firstTokens)}`,
        );
    }
    for (const r of results.filter((x) => x.backend === eng.name)) {
      const p = results.find((x) => x.backend === 'pytorch' && x.case === r.case);
      if (!p) continue;
      opts.log(
        `${r.case}: ${speedup(r.metric, r.value, p.value).toFixed(1)}x faster than PyTorch's official decoder`,
      );
    }
    for (const r of results.filter((x) => x.backend === eng.name)) {
      const p = results.find((x) => x.backend === 'pytorch_kv' && x.case === r.case);
      if (p)
        opts.log(`${r.case}: ${speedup(r.metric, r.value, p.value).toFixed(2)}x PyTorch with a KV cache`);
    }
  }
  return { bench: 'caption', machine: machineInfo(eng.threads, eng.avx2, extra), results };
}
