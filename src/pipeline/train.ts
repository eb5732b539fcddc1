/**
 * `clipcap train` as a library call: the official train.py loop (DESIGN.md "Training input", "Optimizer").
 *
 * Captions -> GPT-2 BPE padded to the dataset's max_seq_len; each epoch a seeded shuffle, batches of
 * `batchSize` (the last partial batch dropped); AdamW (lr, betas 0.9/0.999, eps 1e-6, no weight decay) with
 * linear warmup then linear decay to 0 at epochs · steps_per_epoch (the first step runs at lr 0); GPT-2 in
 * train mode (dropout) when fine-tuned, eval mode when frozen. Checkpoints are clipcap directories
 * (config.json + model.safetensors), each written atomically: OUT/epoch-NNN after every `saveEvery` epochs
 * and OUT/final at the end; GPT-2's weights are saved only when they were trained.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { getBackend, type BackendName } from '../engine/index.js';
import type { Backend } from '../engine/backend.js';
import { ClipCapModel, type ClipCapLossMode, type ClipCapMode } from '../models/clipcap.js';
import type { Gpt2Config, MapperConfig } from '../models/config.js';
import { AdamW, CLIPCAP_ADAMW } from '../nn/adamw.js';
import { paramsToStateDict } from '../models/weights.js';
import { Gpt2Tokenizer } from '../text/gpt2-tokenizer.js';
import {
  makeBatch,
  mulberry32,
  readTrainingData,
  shuffled,
  tokenize,
  type TrainingSet,
} from '../train/data.js';
import { initMapperWeights } from '../train/init.js';
import { linearWarmupSchedule } from '../train/schedule.js';
import { UserError } from '../util/errors.js';
import { OFFICIAL_MAPPER_HEADS, saveClipcapDir } from '../weights/families/clipcap.js';
import { gpt2Weights } from '../weights/families/gpt2.js';
import type { StateDict } from '../weights/host.js';
import { loadSafetensors } from '../weights/safetensors.js';
import { DEFAULT_GPT2, modelFile } from './load.js';

export interface TrainOptions {
  /** .pkl from the official parse_coco.py, or .safetensors from clipcap extract (+ .captions.jsonl). */
  data: string;
  /** Output directory (must not exist, or be empty). */
  out: string;
  mappingType?: 'mlp' | 'transformer';
  /** Train only the mapper (GPT-2 frozen). Default: true for transformer, false for mlp. */
  onlyPrefix?: boolean;
  /** GPT-2 directory or hub repo id (default openai-community/gpt2). */
  gpt2?: string;
  prefixLength?: number;
  clipLength?: number;
  numLayers?: number;
  normalizePrefix?: boolean;
  epochs?: number;
  batchSize?: number;
  lr?: number;
  warmup?: number;
  seed?: number;
  loss?: ClipCapLossMode;
  /** Save OUT/epoch-NNN every this many epochs (0 or undefined: only OUT/final). */
  saveEvery?: number;
  /** Stop after this many optimizer steps (the schedule still spans every epoch). */
  maxSteps?: number;
  backend?: BackendName | Backend;
  offline?: boolean;
  revision?: string;
}

export interface TrainProgress {
  epoch: number;
  step: number;
  stepsPerEpoch: number;
  loss: number;
  lr: number;
}

export interface TrainHooks {
  /** Before the first step: the sizes of the run. */
  onStart?(info: { captions: number; maxSeqLen: number; stepsPerEpoch: number; totalSteps: number }): void;
  onStep?(p: TrainProgress): void;
  onEpoch?(info: { epoch: number; meanLoss: number; checkpoint?: string }): void;
  /** The trained model, before it is disposed (e.g. to inspect its weights). */
  onFinish?(model: ClipCapModel): void;
}

export interface TrainResult {
  steps: number;
  epochs: number;
  final_loss: number;
  losses_per_epoch: number[];
  /** Every step's loss, in order. */
  losses: number[];
  checkpoint: string;
  maxSeqLen: number;
}

function positiveInt(name: string, v: number, min = 1): number {
  if (!Number.isInteger(v) || v < min) throw new UserError(`${name} must be an integer >= ${min}, got ${v}`);
  return v;
}

async function loadGpt2ForTraining(
  spec: string,
  o: { offline?: boolean; revision?: string },
): Promise<{ config: Gpt2Config; weights: StateDict }> {
  const what = `GPT-2 ${spec}`;
  const cfgFile = await modelFile(spec, 'config.json', o, what);
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await fs.readFile(cfgFile, 'utf8')) as Record<string, unknown>;
  } catch {
    throw new UserError(`${what}: ${cfgFile} is not valid JSON; re-download it`);
  }
  const file = await modelFile(spec, 'model.safetensors', o, what);
  const f = await loadSafetensors(file);
  try {
    return gpt2Weights(await f.readAll(), config, file);
  } finally {
    await f.close();
  }
}

/** The mapper config train.py builds for these options and GPT-2 width `e`. */
export function trainMapperConfig(o: TrainOptions, prefixSize: number, e: number): MapperConfig {
  const k = positiveInt('--prefix-length', o.prefixLength ?? 10);
  if ((o.mappingType ?? 'mlp') === 'mlp')
    return {
      kind: 'mlp',
      prefix_size: prefixSize,
      prefix_length: k,
      sizes: [prefixSize, (e * k) >> 1, e * k],
    };
  return {
    kind: 'transformer',
    prefix_size: prefixSize,
    prefix_length: k,
    clip_length: positiveInt('--clip-length', o.clipLength ?? 10),
    num_layers: positiveInt('--num-layers', o.numLayers ?? 8),
    num_heads: OFFICIAL_MAPPER_HEADS,
  };
}

async function checkOut(out: string): Promise<void> {
  const entries = await fs.readdir(out).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [];
    if (e.code === 'ENOTDIR') throw new UserError(`--out ${out} is a file; give a new directory`);
    throw new UserError(`--out ${out}: cannot read it (${e.code ?? String(e)})`);
  });
  if (entries.length > 0) throw new UserError(`--out ${out} is not empty; give a new or empty directory`);
}

/** Load data, GPT-2 and a fresh mapper, then run the official training loop. */
export async function trainClipcap(o: TrainOptions, hooks: TrainHooks = {}): Promise<TrainResult> {
  const epochs = positiveInt('--epochs', o.epochs ?? 10);
  const batchSize = positiveInt('--batch-size', o.batchSize ?? 40);
  const warmup = positiveInt('--warmup', o.warmup ?? 5000, 0);
  const lr = o.lr ?? CLIPCAP_ADAMW.lr;
  if (!Number.isFinite(lr) || lr < 0) throw new UserError(`--lr must be a non-negative number, got ${lr}`);
  const saveEvery = o.saveEvery ?? 0;
  positiveInt('--save-every', saveEvery, 0);
  if (o.maxSteps !== undefined) positiveInt('--max-steps', o.maxSteps);
  const seed = o.seed ?? 0;
  await checkOut(o.out);

  // Data first: a bad file fails before GPT-2 loads.
  const raw = await readTrainingData(o.data);
  const set: TrainingSet = tokenize(raw, await Gpt2Tokenizer.load(), o.data);
  const stepsPerEpoch = Math.floor(set.tokens.length / batchSize);
  if (stepsPerEpoch === 0)
    throw new UserError(
      `${o.data}: ${set.tokens.length} captions make no full batch of ${batchSize}; lower --batch-size`,
    );

  const gpt2 = await loadGpt2ForTraining(o.gpt2 ?? DEFAULT_GPT2, o);
  const mapper = trainMapperConfig(o, raw.dim, gpt2.config.n_embd);
  const mode: ClipCapMode =
    (o.onlyPrefix ?? (o.mappingType ?? 'mlp') === 'transformer') ? 'frozen' : 'finetune';
  const backend = typeof o.backend === 'object' ? o.backend : getBackend(o.backend);
  const model = ClipCapModel.create(
    backend,
    {
      mapper,
      mapperWeights: initMapperWeights(mapper, gpt2.config.n_embd, seed),
      gpt2,
      mode,
      normalizePrefix: o.normalizePrefix ?? false,
    },
    o.gpt2 ?? DEFAULT_GPT2,
  );
  model.gpt2.setDropoutSeed(seed);
  const totalSteps = epochs * stepsPerEpoch;
  const opt = new AdamW(
    model.trainableParameters(),
    { ...CLIPCAP_ADAMW, lr },
    linearWarmupSchedule(warmup, totalSteps),
  );
  const k = model.prefixLength;
  const rand = mulberry32(seed);
  const losses: number[] = [];
  const perEpoch: number[] = [];
  const limit = o.maxSteps ?? totalSteps;
  let checkpoint = '';

  const save = async (name: string): Promise<string> => {
    const dir = path.join(o.out, name);
    await fs.mkdir(o.out, { recursive: true });
    await saveClipcapDir(dir, {
      config: { mapper, gpt2: gpt2.config, normalize_prefix: model.normalizePrefix },
      mapperWeights: paramsToStateDict(model.mapper.parameters()),
      ...(mode === 'finetune' ? { gpt2: paramsToStateDict(model.gpt2.parameters()) } : {}),
      source: `clipcap train ${path.basename(o.data)}`,
    });
    return dir;
  };

  hooks.onStart?.({ captions: set.tokens.length, maxSeqLen: set.maxSeqLen, stepsPerEpoch, totalSteps });
  try {
    let epoch = 0;
    for (; epoch < epochs && losses.length < limit; epoch++) {
      const order = shuffled(set.tokens.length, rand);
      let sum = 0;
      let n = 0;
      for (let s = 0; s < stepsPerEpoch && losses.length < limit; s++) {
        const batch = makeBatch(set, order.slice(s * batchSize, (s + 1) * batchSize), k);
        opt.zeroGrad();
        const stepLr = opt.currentLr;
        const { loss } = model.lossAndBackward(batch, { train: true, lossMode: o.loss ?? 'official' });
        opt.step();
        losses.push(loss);
        sum += loss;
        n++;
        hooks.onStep?.({ epoch, step: losses.length, stepsPerEpoch, loss, lr: stepLr });
      }
      perEpoch.push(sum / n);
      const last = epoch === epochs - 1 || losses.length >= limit;
      let saved: string | undefined;
      if (saveEvery > 0 && (epoch + 1) % saveEvery === 0 && !last)
        saved = await save(`epoch-${String(epoch + 1).padStart(3, '0')}`);
      hooks.onEpoch?.({ epoch, meanLoss: sum / n, checkpoint: saved });
    }
    checkpoint = await save('final');
    hooks.onFinish?.(model);
    return {
      steps: losses.length,
      epochs: epoch,
      final_loss: losses[losses.length - 1],
      losses_per_epoch: perEpoch,
      losses,
      checkpoint,
      maxSeqLen: set.maxSeqLen,
    };
  } finally {
    model.dispose();
  }
}
