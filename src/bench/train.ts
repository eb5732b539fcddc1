/**
 * `clipcap bench train`: training throughput of the official recipe at full size (GPT-2 small, CLIP width
 * 512, K = 10, weights by the fixture rule): one timed unit is a whole optimizer step (zero grads, forward
 * and backward in train mode, AdamW), metric samples_per_s = batch / median step time.
 *
 * Cases:
 * - mlp_finetune_b8_t20: the MLP mapper with GPT-2 fine-tuned (dropout on), batch 8, 20 caption tokens;
 * - transformer_frozen_b8_t20: the 8-layer transformer mapper (clip_length 10), GPT-2 frozen (eval mode).
 */
import { ClipCapModel, type ClipCapMode } from '../models/clipcap.js';
import { FULLSIZE_MLP_MAPPER, syntheticGpt2, syntheticMapper } from '../models/synthetic.js';
import type { Gpt2Config, MapperConfig } from '../config/models.js';
import { AdamW, CLIPCAP_ADAMW } from '../nn/adamw.js';
import { mulberry32 } from '../util/random.js';
import { linearWarmupSchedule } from '../nn/schedule.js';
import { benchEngine, runsOf, timeAsync } from './common.js';
import { SMOKE_GPT2 } from './caption.js';
import { machineInfo, median, type BenchReport, type BenchResult, type BenchRunOptions } from './report.js';

const DEFAULT_RUNS = 3;
const BATCH = 8;
const TOKENS = 20;

const TRANSFORMER_MAPPER: MapperConfig = {
  kind: 'transformer',
  prefix_size: 512,
  prefix_length: 10,
  clip_length: 10,
  num_layers: 8,
  num_heads: 8,
};

function smokeMapper(kind: 'mlp' | 'transformer', e: number): MapperConfig {
  return kind === 'mlp'
    ? { kind, prefix_size: 24, prefix_length: 2, sizes: [24, e, 2 * e] }
    : { kind, prefix_size: 24, prefix_length: 2, clip_length: 2, num_layers: 1, num_heads: 8 };
}

export async function runTrainBench(opts: BenchRunOptions): Promise<BenchReport> {
  const smoke = opts.extra.smoke === true;
  const runs = runsOf(opts, DEFAULT_RUNS);
  const eng = benchEngine(opts);
  const gcfg: Gpt2Config | undefined = smoke ? SMOKE_GPT2 : undefined;
  const cases: { id: string; mapper: MapperConfig; mode: ClipCapMode }[] = [
    {
      id: `mlp_finetune_b${BATCH}_t${TOKENS}`,
      mapper: smoke ? smokeMapper('mlp', SMOKE_GPT2.n_embd) : FULLSIZE_MLP_MAPPER,
      mode: 'finetune',
    },
    {
      id: `transformer_frozen_b${BATCH}_t${TOKENS}`,
      mapper: smoke ? smokeMapper('transformer', SMOKE_GPT2.n_embd) : TRANSFORMER_MAPPER,
      mode: 'frozen',
    },
  ];
  const results: BenchResult[] = [];
  for (const c of cases) {
    const gpt2 = syntheticGpt2(gcfg);
    const m = syntheticMapper(c.mapper, gpt2.config.n_embd);
    const model = ClipCapModel.create(eng.backend, {
      mapper: m.config,
      mapperWeights: m.weights,
      gpt2,
      mode: c.mode,
    });
    try {
      // A fixed random batch: real-looking token ids, every position real (no padding).
      const rand = mulberry32(1);
      const d = c.mapper.prefix_size;
      const prefix = Float32Array.from({ length: BATCH * d }, () => rand() * 2 - 1);
      const tokens = Int32Array.from({ length: BATCH * TOKENS }, () => 1 + Math.floor(rand() * 50000));
      const opt = new AdamW(model.trainableParameters(), CLIPCAP_ADAMW, linearWarmupSchedule(0, 1e9));
      const step = async (): Promise<void> => {
        opt.zeroGrad();
        model.lossAndBackward({ prefix, tokens, length: TOKENS }, { train: true });
        opt.step();
      };
      const t = await timeAsync(step, runs, smoke ? 0 : 1);
      const value = BATCH / median(t.seconds);
      opts.log(`${c.id}: ${eng.name} ${value.toFixed(2)} samples/s, peak RSS ${t.peakRssMb.toFixed(0)} MiB`);
      results.push({
        case: c.id,
        backend: eng.name,
        metric: 'samples_per_s',
        value,
        runs,
        peak_rss_mb: t.peakRssMb,
      });
    } finally {
      model.dispose();
    }
  }
  const extra: Record<string, string | number | boolean> = {
    ...eng.extra,
    model: smoke
      ? 'tiny GPT-2 + mappers (fixture rule, --smoke)'
      : 'GPT-2 small + ClipCap mappers (fixture rule)',
  };
  if (smoke) extra.smoke = true;
  return { bench: 'train', machine: machineInfo(eng.threads, eng.avx2, extra), results };
}
