/**
 * `clipcap train` as a library call: options, files and sources. The training itself lives in train/: the run
 * (model, run directory, export) in train/session.ts, the loop (official train.py recipe, checkpoints, resume)
 * in train/loop.ts. This file resolves the options, reads the data (several files and globs: shards) and the
 * checkpoint to resume, loads GPT-2 through the same path captioning uses (loadGpt2), and records in every
 * checkpoint what it needs to be used and continued: the CLIP model the features came from and the GPT-2
 * (config.json "sources"), the mapper config, the training options and the data's digest.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { getBackend, type BackendName } from '../engine/index.js';
import type { Backend } from '../engine/backend.js';
import { ClipCapModel, type ClipCapLossMode, type ClipCapMode } from '../models/clipcap.js';
import type { MapperConfig } from '../config/models.js';
import { CLIPCAP_ADAMW } from '../nn/adamw.js';
import { findResumePoint, liveEntries, readOptimizerState } from '../train/checkpoint.js';
import {
  officialMaxSeqLen,
  readTrainingFiles,
  splitByImage,
  TrainingSetBuilder,
  type TrainingSet,
} from '../train/data.js';
import {
  LOSS_CHART_FILE,
  METRICS_FILE,
  type LoopResult,
  type ResumeFrom,
  type TrainEvent,
} from '../train/loop.js';
import { UserError } from '../util/errors.js';
import { loadClipcapDir, OFFICIAL_MAPPER_HEADS } from '../weights/families/clipcap.js';
import type { StateDict } from '../weights/host.js';
import { trainModel } from '../train/session.js';
import { captionsSidecarPath } from '../data/embeddings.js';
import { expandGlob, hasGlobMagic } from './inputs.js';
import { DEFAULT_GPT2, loadGpt2, loadGpt2Tokenizer, looksLikeRepoId } from './load.js';

export type { TrainEvent } from '../train/loop.js';

export interface TrainOptions {
  /**
   * Training data: files or glob patterns (shards), each a .pkl from the official parse_coco.py or a
   * .safetensors from clipcap extract (+ its .captions.jsonl). Rows of all files are concatenated in order.
   */
  data?: string | readonly string[];
  /** Validation data (same formats); its loss is computed after every epoch. */
  val?: string | readonly string[];
  /** Hold out this fraction of the data's images (with all their captions) for validation instead. */
  valFraction?: number;
  /** Output directory (new, or empty apart from stale temps). */
  out?: string;
  /** Continue a run: its --out directory (latest checkpoint) or one of its checkpoints. */
  resume?: string;
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
  /** Save OUT/epoch-NNN every this many epochs (default 1; 0: none). */
  saveEvery?: number;
  /** Also save OUT/step-NNNNNNN every this many steps (default 0: none). */
  saveEverySteps?: number;
  /** Keep only the newest K epoch-/step- checkpoints (default: all). */
  keepLast?: number;
  /** Stop after this many optimizer steps (the schedule still spans every epoch). */
  maxSteps?: number;
  /** Also write the final model as the official `torch.save(ClipCaptionModel.state_dict())` .pt file. */
  exportTorch?: string;
  backend?: BackendName | Backend;
  offline?: boolean;
  revision?: string;
}

export interface TrainControl {
  /** Progress and notices as events (start, step, epoch, checkpoint, warning). */
  onEvent?: (e: TrainEvent) => void;
  /** Abort: a resumable checkpoint is saved at the next step boundary; the result says `interrupted`. */
  signal?: AbortSignal;
  /** The trained model, before it is disposed (e.g. to inspect its weights). */
  onFinish?: (model: ClipCapModel) => void;
}

export interface TrainProgress {
  epoch: number;
  step: number;
  stepsPerEpoch: number;
  loss: number;
  lr: number;
}

/** Callback hooks (the older interface; `train` with `onEvent` gives the same and more). */
export interface TrainHooks {
  /** Before the first step: the sizes of the run. */
  onStart?(info: { captions: number; maxSeqLen: number; stepsPerEpoch: number; totalSteps: number }): void;
  onStep?(p: TrainProgress): void;
  onEpoch?(info: { epoch: number; meanLoss: number; checkpoint?: string }): void;
  onFinish?(model: ClipCapModel): void;
}

export interface TrainResult extends LoopResult {
  /** The run directory. */
  out: string;
}

function positiveInt(name: string, v: number, min = 1): number {
  if (!Number.isInteger(v) || v < min) throw new UserError(`${name} must be an integer >= ${min}, got ${v}`);
  return v;
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

const DATA_HINT = 'give .pkl files from parse_coco.py or .safetensors files from clipcap extract';
const isDataFile = (p: string): boolean => /\.(safetensors|pkl|pickle)$/i.test(p);

/** Data arguments -> files in order: globs expanded (sorted), absolute paths. */
export async function expandDataFiles(args: string | readonly string[], what = '--data'): Promise<string[]> {
  const list = typeof args === 'string' ? [args] : [...args];
  if (list.length === 0) throw new UserError(`${what}: no files given; ${DATA_HINT}`);
  const out: string[] = [];
  for (const a of list) {
    const st = await fs.stat(a).catch(() => null);
    if (!st && hasGlobMagic(a)) {
      const files = await expandGlob(a, isDataFile);
      if (files.length === 0)
        throw new UserError(`${what} ${a}: no .safetensors or .pkl file matches this pattern`);
      out.push(...files);
    } else out.push(a);
  }
  const abs = out.map((f) => path.resolve(f));
  const dup = abs.find((f, i) => abs.indexOf(f) !== i);
  if (dup) throw new UserError(`${what}: ${dup} is given twice; each shard once`);
  return abs;
}

/** sha256 over every data file (and its captions sidecar), in order. */
export async function dataDigest(files: readonly string[]): Promise<string> {
  const h = createHash('sha256');
  for (const f of files) {
    const parts = /\.safetensors$/i.test(f) ? [f, captionsSidecarPath(f)] : [f];
    for (const p of parts) {
      h.update(`${path.basename(p)}\0`);
      await new Promise<void>((resolve, reject) => {
        createReadStream(p)
          .on('data', (c) => h.update(c))
          .on('end', resolve)
          .on('error', (e: NodeJS.ErrnoException) =>
            reject(e.code === 'ENOENT' ? new UserError(`${p}: no such file; ${DATA_HINT}`) : e),
          );
      });
    }
  }
  return `sha256:${h.digest('hex')}`;
}

/** A model reference as a checkpoint records it: hub ids as they are, local paths relative to the checkpoint. */
function sourceRef(spec: string, outAbs: string): string {
  if (spec.startsWith('bundled:')) return spec;
  const local = path.resolve(spec);
  if (looksLikeRepoId(spec) && !path.isAbsolute(spec) && !spec.startsWith('.')) return spec;
  // Every checkpoint sits directly in the run directory: one relative path serves them all.
  return path.relative(path.join(outAbs, 'final'), local);
}

/** What `train` resolved: the options a checkpoint records, with paths made absolute. */
interface Resolved {
  data: string[];
  val?: string[];
  valFraction?: number;
  out: string;
  mappingType: 'mlp' | 'transformer';
  onlyPrefix: boolean;
  gpt2: string;
  prefixLength: number;
  clipLength: number;
  numLayers: number;
  normalizePrefix: boolean;
  epochs: number;
  batchSize: number;
  lr: number;
  warmup: number;
  seed: number;
  loss: ClipCapLossMode;
  saveEvery: number;
  saveEverySteps: number;
  keepLast?: number;
  maxSteps?: number;
  exportTorch?: string;
}

async function resolveOptions(o: TrainOptions): Promise<Resolved> {
  if (o.data === undefined) throw new UserError(`--data is required (${DATA_HINT})`);
  if (o.out === undefined) throw new UserError('--out is required: the run directory');
  const lr = o.lr ?? CLIPCAP_ADAMW.lr;
  if (!Number.isFinite(lr) || lr < 0) throw new UserError(`--lr must be a non-negative number, got ${lr}`);
  if (o.valFraction !== undefined && !(o.valFraction > 0 && o.valFraction < 1))
    throw new UserError(`--val-fraction must be between 0 and 1, got ${o.valFraction}`);
  if (o.valFraction !== undefined && o.val !== undefined)
    throw new UserError('give --val or --val-fraction, not both');
  const mappingType = o.mappingType ?? 'mlp';
  const gpt2 = o.gpt2 ?? DEFAULT_GPT2;
  const r: Resolved = {
    data: await expandDataFiles(o.data),
    ...(o.val !== undefined ? { val: await expandDataFiles(o.val, '--val') } : {}),
    ...(o.valFraction !== undefined ? { valFraction: o.valFraction } : {}),
    out: path.resolve(o.out),
    mappingType,
    onlyPrefix: o.onlyPrefix ?? mappingType === 'transformer',
    gpt2: (await fs.stat(gpt2).catch(() => null)) ? path.resolve(gpt2) : gpt2,
    prefixLength: positiveInt('--prefix-length', o.prefixLength ?? 10),
    clipLength: positiveInt('--clip-length', o.clipLength ?? 10),
    numLayers: positiveInt('--num-layers', o.numLayers ?? 8),
    normalizePrefix: o.normalizePrefix ?? false,
    epochs: positiveInt('--epochs', o.epochs ?? 10),
    batchSize: positiveInt('--batch-size', o.batchSize ?? 40),
    lr,
    warmup: positiveInt('--warmup', o.warmup ?? 5000, 0),
    seed: positiveInt('--seed', o.seed ?? 0, 0),
    loss: o.loss ?? 'official',
    saveEvery: positiveInt('--save-every', o.saveEvery ?? 1, 0),
    saveEverySteps: positiveInt('--save-every-steps', o.saveEverySteps ?? 0, 0),
    ...(o.keepLast !== undefined ? { keepLast: positiveInt('--keep-last', o.keepLast) } : {}),
    ...(o.maxSteps !== undefined ? { maxSteps: positiveInt('--max-steps', o.maxSteps) } : {}),
    ...(o.exportTorch !== undefined ? { exportTorch: path.resolve(o.exportTorch) } : {}),
  };
  return r;
}

/** The options a checkpoint recorded, checked as freshly given ones are. */
async function optionsFromState(options: Record<string, unknown>, run: string): Promise<Resolved> {
  const r = await resolveOptions({ ...(options as TrainOptions), out: run });
  return r;
}

/** Read the data (and validation data) into sets; over-long captions are cut to what GPT-2 can take. */
async function readSets(
  r: Resolved,
  nPositions: number,
  warn: (m: string) => void,
): Promise<{ train: TrainingSet; val?: TrainingSet; clipModels: string[] }> {
  // The GPT-2's own vocabulary when its directory carries one (vocab.json + merges.txt), else GPT-2's.
  const tok = await loadGpt2Tokenizer(r.gpt2);
  const b = new TrainingSetBuilder(tok);
  const { clipModels } = await readTrainingFiles(r.data, b).catch((e: unknown) => {
    b.close();
    throw e;
  });
  let train = b.build(r.data.length === 1 ? r.data[0] : `${r.data.length} data files`);
  const built = train.features;
  try {
    let val: TrainingSet | undefined;
    if (r.valFraction !== undefined) ({ train, val } = splitByImage(train, r.valFraction, r.seed));
    // max_seq_len over the captions trained on (as train.py computes it over its dataset).
    const lengths = new Int32Array(train.count);
    for (let c = 0; c < train.count; c++) lengths[c] = train.tokenOffsets[c + 1] - train.tokenOffsets[c];
    let maxSeqLen = officialMaxSeqLen(lengths);
    const room = nPositions - r.prefixLength;
    if (room < 1)
      throw new UserError(
        `--prefix-length ${r.prefixLength} leaves no room for tokens in GPT-2's ${nPositions} positions; lower it`,
      );
    if (maxSeqLen > room) {
      warn(
        `captions of up to ${maxSeqLen} tokens do not fit GPT-2's ${nPositions} positions after a ${r.prefixLength}-vector prefix; ` +
          `cutting them to ${room} tokens`,
      );
      maxSeqLen = room;
    }
    train = { ...train, maxSeqLen };
    if (r.val) {
      const vb = new TrainingSetBuilder(tok);
      const v = await readTrainingFiles(r.val, vb);
      const other = v.clipModels.find((m) => !clipModels.includes(m));
      if (other && clipModels.length > 0)
        throw new UserError(
          `--val was extracted with CLIP ${other} but --data with ${clipModels.join(', ')}`,
        );
      val = vb.build(r.val.length === 1 ? r.val[0] : `${r.val.length} validation files`, maxSeqLen);
      if (val.dim !== train.dim)
        throw new UserError(`--val embeddings are ${val.dim}-d but --data's are ${train.dim}-d`);
    } else if (val) val = { ...val, maxSeqLen };
    if (clipModels.length > 1)
      throw new UserError(
        `the data files were extracted with different CLIP models (${clipModels.join(', ')}); train on one model's features`,
      );
    return { train, val, clipModels };
  } catch (e) {
    built.close();
    throw e;
  }
}

/**
 * Train a ClipCap model (fresh, or `resume` a run). Checkpoints, metrics.jsonl and loss.png go to the run
 * directory; an aborted run (`control.signal`) saves a resumable checkpoint and returns `interrupted: true`.
 */
export async function train(o: TrainOptions, control: TrainControl = {}): Promise<TrainResult> {
  const emit = control.onEvent ?? ((): void => undefined);
  const warn = (message: string): void => emit({ type: 'warning', message });
  let r: Resolved;
  let resume: ResumeFrom | undefined;
  if (o.resume !== undefined) {
    const { run, checkpoint } = await findResumePoint(o.resume);
    if (checkpoint.state.complete)
      throw new UserError(
        `${checkpoint.dir}: this run is complete (step ${checkpoint.state.step}); nothing to resume`,
      );
    r = await optionsFromState(checkpoint.state.options, run);
    if (o.exportTorch !== undefined) r.exportTorch = path.resolve(o.exportTorch);
    if (o.keepLast !== undefined) r.keepLast = positiveInt('--keep-last', o.keepLast);
    const opt = await readOptimizerState(checkpoint.dir);
    resume = {
      dir: checkpoint.dir,
      state: checkpoint.state,
      optimizer: opt.tensors,
      optimizerSteps: opt.steps,
    };
  } else {
    r = await resolveOptions(o);
    // A run killed before its first checkpoint leaves only its log and chart: nothing to resume, start over.
    const live = (await liveEntries(r.out)).filter((e) => e !== METRICS_FILE && e !== LOSS_CHART_FILE);
    if (live.length > 0)
      throw new UserError(
        `--out ${r.out} is not empty; give a new or empty directory, or continue that run with clipcap train --resume ${r.out}`,
      );
  }

  // Data first (a bad file fails before GPT-2 loads); digest for the record and to check a resume.
  const digest = await dataDigest(r.data);
  if (resume && resume.state.data_digest !== digest)
    throw new UserError(
      `the data files (${r.data.join(', ')}) changed since ${resume.dir} was saved (digest ${digest} vs ` +
        `${resume.state.data_digest}); resume with the same data`,
    );
  const loadOpts = { offline: o.offline, revision: o.revision };
  const gpt2 = await loadGpt2(r.gpt2, loadOpts);
  const sets = await readSets(r, gpt2.config.n_positions, warn);
  try {
    if (sets.train.count < r.batchSize)
      throw new UserError(
        `${r.data.join(', ')}: ${sets.train.count} training captions make no full batch of ${r.batchSize}; lower --batch-size`,
      );
    const mapper = trainMapperConfig(r, sets.train.dim, gpt2.config.n_embd);
    const mode: ClipCapMode = r.onlyPrefix ? 'frozen' : 'finetune';
    if (resume && resume.state.max_seq_len !== sets.train.maxSeqLen)
      throw new UserError(
        `${resume.dir}: saved with max_seq_len ${resume.state.max_seq_len}, the data now gives ${sets.train.maxSeqLen}`,
      );
    const backend = typeof o.backend === 'object' ? o.backend : getBackend(o.backend);
    let resumed: { mapperWeights: StateDict; gpt2Weights?: StateDict } | undefined;
    if (resume) {
      const ck = await loadClipcapDir(resume.dir);
      if (JSON.stringify(ck.config.mapper) !== JSON.stringify(mapper))
        throw new UserError(`${resume.dir}: its mapper config does not match the recorded options`);
      resumed = { mapperWeights: ck.mapperWeights, gpt2Weights: ck.gpt2 ?? undefined };
    }
    const clip = sets.clipModels[0];
    const options: Record<string, unknown> = { ...r };
    delete options.out;
    const result = await trainModel({
      backend,
      model: {
        mapper,
        gpt2,
        mode,
        normalizePrefix: r.normalizePrefix,
        seed: r.seed,
        resumed,
        source: r.gpt2,
      },
      train: sets.train,
      val: sets.val,
      loop: {
        out: r.out,
        epochs: r.epochs,
        batchSize: r.batchSize,
        lr: r.lr,
        warmup: r.warmup,
        seed: r.seed,
        lossMode: r.loss,
        maxSteps: r.maxSteps,
        saveEvery: r.saveEvery,
        saveEverySteps: r.saveEverySteps,
        keepLast: r.keepLast,
      },
      record: {
        config: { mapper, gpt2: gpt2.config, normalize_prefix: r.normalizePrefix },
        source: `clipcap train ${r.data.map((f) => path.basename(f)).join(' ')}`,
        extraConfig: {
          sources: {
            ...(clip !== undefined ? { clip: sourceRef(clip, r.out) } : {}),
            gpt2: sourceRef(r.gpt2, r.out),
          },
          training: options,
          data: {
            files: r.data,
            digest,
            captions: sets.train.count,
            images: sets.train.rows,
            max_seq_len: sets.train.maxSeqLen,
          },
        },
        options,
        dataDigest: digest,
      },
      resume,
      exportTorch: r.exportTorch,
      control,
    });
    return { ...result, out: r.out };
  } finally {
    // File handles of on-disk features (the validation split shares the training store).
    sets.train.features.close();
    if (sets.val && sets.val.features !== sets.train.features) sets.val.features.close();
  }
}

/** `train` with callback hooks (kept for callers of the first API). */
export async function trainClipcap(o: TrainOptions, hooks: TrainHooks = {}): Promise<TrainResult> {
  return train(o, {
    onFinish: hooks.onFinish,
    onEvent: (e) => {
      if (e.type === 'start')
        hooks.onStart?.({
          captions: e.captions,
          maxSeqLen: e.maxSeqLen,
          stepsPerEpoch: e.stepsPerEpoch,
          totalSteps: e.totalSteps,
        });
      else if (e.type === 'step')
        hooks.onStep?.({
          epoch: e.epoch,
          step: e.step,
          stepsPerEpoch: e.stepsPerEpoch,
          loss: e.loss,
          lr: e.lr,
        });
      else if (e.type === 'epoch')
        hooks.onEpoch?.({ epoch: e.epoch, meanLoss: e.meanLoss, checkpoint: e.checkpoint });
    },
  });
}
