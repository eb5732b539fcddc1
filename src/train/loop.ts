/**
 * The official ClipCap training loop (train.py, DESIGN.md "Training input", "Optimizer"), resumable.
 *
 * Each epoch a seeded shuffle, batches of `batchSize` (the last partial batch dropped); AdamW with linear
 * warmup then linear decay to 0 at epochs · steps_per_epoch (the first step runs at lr 0); GPT-2 in train mode
 * (dropout) when fine-tuned, eval mode when frozen.
 *
 * Every random stream is a pure function of the seed and a position: epoch e's shuffle uses
 * deriveSeed(seed, SHUFFLE, e) and step s's dropout masks deriveSeed(seed, DROPOUT, s). A checkpoint therefore
 * needs only the weights, AdamW's moments and step counts, and where the run stands (epoch, step in epoch,
 * the epoch's loss sum so far): a run stopped anywhere and resumed takes exactly the steps the uninterrupted
 * run takes and ends with the same bytes.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { ClipCapLossMode, ClipCapModel } from '../models/clipcap.js';
import type { ClipCapConfig } from '../config/models.js';
import { paramsToStateDict } from '../models/weights.js';
import { AdamW, CLIPCAP_ADAMW } from '../nn/adamw.js';
import type { Parameter } from '../nn/parameter.js';
import { UserError } from '../util/errors.js';
import { deriveSeed, mulberry32, shuffled } from '../util/random.js';
import type { StateDict } from '../weights/host.js';
import { writeLossChart } from './chart.js';
import {
  listCheckpoints,
  pruneCheckpoints,
  TRAIN_STATE_FORMAT,
  TRAIN_STATE_VERSION,
  writeTrainCheckpoint,
  type TrainState,
} from './checkpoint.js';
import { makeBatch, type TrainingSet } from './data.js';
import { linearWarmupSchedule } from '../nn/schedule.js';

/** Stream keys of deriveSeed (arbitrary distinct constants). */
const SHUFFLE = 0x5348;
const DROPOUT = 0x4450;

export const METRICS_FILE = 'metrics.jsonl';
export const LOSS_CHART_FILE = 'loss.png';

export interface LoopOptions {
  /** The run directory. */
  out: string;
  epochs: number;
  batchSize: number;
  lr: number;
  warmup: number;
  seed: number;
  lossMode: ClipCapLossMode;
  /** Stop after this many optimizer steps in all (the schedule still spans every epoch). */
  maxSteps?: number;
  /** Save OUT/epoch-NNN every this many epochs (0: none). */
  saveEvery: number;
  /** Save OUT/step-NNNNNNN every this many steps (0: none). */
  saveEverySteps: number;
  /** Keep only the newest K epoch-/step- checkpoints (undefined: all). */
  keepLast?: number;
}

/** What every checkpoint of the run records besides its weights and position. */
export interface RunRecord {
  config: ClipCapConfig;
  /** Informational `source` of the weights file. */
  source: string;
  /** config.json members: sources, training options, data digest. */
  extraConfig: Record<string, unknown>;
  /** The options as `clipcap train` would take them again (stored in trainer-state.json). */
  options: Record<string, unknown>;
  dataDigest: string;
}

/** A checkpoint to continue from. */
export interface ResumeFrom {
  dir: string;
  state: TrainState;
  optimizer: StateDict;
  optimizerSteps: Record<string, number>;
}

export type TrainEvent =
  | {
      type: 'start';
      captions: number;
      valCaptions: number;
      maxSeqLen: number;
      stepsPerEpoch: number;
      totalSteps: number;
      /** The step the run stops after (maxSteps or totalSteps). */
      lastStep: number;
      /** Steps already taken (a resumed run). */
      startStep: number;
      resumedFrom?: string;
    }
  | {
      type: 'step';
      epoch: number;
      step: number;
      stepInEpoch: number;
      stepsPerEpoch: number;
      lastStep: number;
      loss: number;
      lr: number;
      /** Over the recent steps of this process. */
      samplesPerS: number;
      /** Training seconds, including those before a resume. */
      elapsedS: number;
    }
  | { type: 'epoch'; epoch: number; meanLoss: number; valLoss?: number; checkpoint?: string }
  | { type: 'checkpoint'; path: string; step: number; reason: 'epoch' | 'steps' | 'interrupt' | 'final' }
  | { type: 'warning'; message: string };

export interface LoopControl {
  onEvent?: (e: TrainEvent) => void;
  /** Abort: the loop saves a resumable checkpoint at the next step boundary and returns `interrupted`. */
  signal?: AbortSignal;
}

export interface LoopResult {
  steps: number;
  epochs: number;
  final_loss: number;
  losses_per_epoch: number[];
  losses: number[];
  val_losses: Array<{ epoch: number; step: number; loss: number }>;
  /** The last checkpoint written (final/, or the interrupt checkpoint). */
  checkpoint: string;
  maxSeqLen: number;
  /** True when stopped by the signal (checkpoint is then resumable). */
  interrupted: boolean;
}

/** The loss is NaN or infinite: the run stops and keeps its last good checkpoint. */
export class TrainingDivergedError extends UserError {}

/** Mean loss over the validation set in eval mode (no dropout), batches in order, the last one partial. */
export function validationLoss(
  model: ClipCapModel,
  set: TrainingSet,
  batchSize: number,
  lossMode: ClipCapLossMode,
): number {
  let sum = 0;
  for (let start = 0; start < set.count; start += batchSize) {
    const n = Math.min(batchSize, set.count - start);
    const idx = new Int32Array(n);
    for (let i = 0; i < n; i++) idx[i] = start + i;
    const { loss } = model.loss(makeBatch(set, idx, model.prefixLength), { train: false, lossMode });
    sum += loss * n;
  }
  return sum / set.count;
}

/** Messages for schedules that cannot do what the user presumably wants. */
export function scheduleWarnings(o: {
  warmup: number;
  totalSteps: number;
  maxSteps?: number;
  lr: number;
}): string[] {
  const w: string[] = [];
  const last = Math.min(o.maxSteps ?? o.totalSteps, o.totalSteps);
  if (o.lr === 0) w.push('--lr is 0: no weight will change');
  if (o.warmup > 0 && last <= o.warmup) {
    const peak = ((last - 1) / o.warmup) * 100;
    w.push(
      `the run stops after ${last} steps, inside the ${o.warmup}-step warmup: the learning rate never exceeds ` +
        `${peak.toFixed(peak < 1 ? 3 : 1)}% of --lr (lower --warmup or train longer)`,
    );
  } else if (o.warmup >= o.totalSteps && o.totalSteps > 0)
    w.push(
      `--warmup ${o.warmup} is not below the ${o.totalSteps} steps of the schedule: the rate never decays`,
    );
  if (o.maxSteps !== undefined && o.maxSteps < o.totalSteps && o.maxSteps > o.warmup && o.totalSteps > 0) {
    const left = (o.totalSteps - o.maxSteps) / Math.max(1, o.totalSteps - o.warmup);
    if (left > 0.5)
      w.push(
        `--max-steps ${o.maxSteps} stops the run while the schedule (over ${o.totalSteps} steps) is still at ` +
          `${(left * 100).toFixed(0)}% of --lr: lower --epochs so the decay finishes`,
      );
  }
  return w;
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0');
}

/**
 * Train `model` on `train` from scratch or from `resume`, writing checkpoints, metrics.jsonl and loss.png
 * into `o.out`. The caller owns the model (and disposes it).
 */
export async function runTrainingLoop(
  model: ClipCapModel,
  train: TrainingSet,
  val: TrainingSet | undefined,
  o: LoopOptions,
  record: RunRecord,
  resume: ResumeFrom | undefined,
  ctl: LoopControl = {},
): Promise<LoopResult> {
  const emit = ctl.onEvent ?? ((): void => undefined);
  const B = o.batchSize;
  const stepsPerEpoch = Math.floor(train.count / B);
  if (stepsPerEpoch === 0)
    throw new UserError(`${train.count} captions make no full batch of ${B}; lower --batch-size`);
  const totalSteps = o.epochs * stepsPerEpoch;
  const lastStep = Math.min(o.maxSteps ?? totalSteps, totalSteps);
  const k = model.prefixLength;
  const params = model.trainableParameters();
  const names = new Map<Parameter, string>();
  for (const [name, p] of model.namedParameters()) names.set(p, name);
  const opt = new AdamW(params, { ...CLIPCAP_ADAMW, lr: o.lr }, linearWarmupSchedule(o.warmup, totalSteps));
  const metricsPath = path.join(o.out, METRICS_FILE);

  // Where the run stands (a fresh run starts at zero).
  const s = resume?.state;
  if (s && (s.steps_per_epoch !== stepsPerEpoch || s.total_steps !== totalSteps))
    throw new UserError(
      `${resume?.dir}: was saved with ${s.steps_per_epoch} steps per epoch and ${s.total_steps} in all, but the data ` +
        `and options now give ${stepsPerEpoch} and ${totalSteps}; resume with the same data and options`,
    );
  let step = s?.step ?? 0;
  let epoch = s?.epoch ?? 0;
  let j = s?.step_in_epoch ?? 0;
  let epochSum = s?.epoch_loss_sum ?? 0;
  let epochCount = s?.epoch_loss_count ?? 0;
  const losses = [...(s?.losses ?? [])];
  const perEpoch = [...(s?.losses_per_epoch ?? [])];
  const valLosses = [...(s?.val_losses ?? [])];
  const elapsedBefore = s?.elapsed_s ?? 0;
  if (resume) {
    const per = new Map<Parameter, { steps: number; m: Float32Array; v: Float32Array }>();
    for (const p of params) {
      const name = names.get(p) as string;
      const steps = resume.optimizerSteps[name] ?? 0;
      if (steps === 0) continue;
      const m = resume.optimizer.get(`exp_avg.${name}`);
      const v = resume.optimizer.get(`exp_avg_sq.${name}`);
      if (!m || !v || !(m.data instanceof Float32Array) || !(v.data instanceof Float32Array))
        throw new UserError(
          `${resume.dir}: optimizer state has no moments for ${name}; resume from another checkpoint`,
        );
      per.set(p, { steps, m: m.data, v: v.data });
    }
    opt.restore(step, per);
  }

  const t0 = performance.now();
  const elapsed = (): number => elapsedBefore + (performance.now() - t0) / 1000;
  let metricsBuffer: string[] = [];
  let lastFlush = performance.now();
  const flushMetrics = async (): Promise<void> => {
    if (metricsBuffer.length === 0) return;
    const text = metricsBuffer.join('');
    metricsBuffer = [];
    await fs.appendFile(metricsPath, text);
    lastFlush = performance.now();
  };

  const state = (complete: boolean): TrainState => ({
    format: TRAIN_STATE_FORMAT,
    version: TRAIN_STATE_VERSION,
    step,
    epoch,
    step_in_epoch: j,
    steps_per_epoch: stepsPerEpoch,
    total_steps: totalSteps,
    complete,
    epoch_loss_sum: epochSum,
    epoch_loss_count: epochCount,
    losses_per_epoch: perEpoch,
    losses,
    val_losses: valLosses,
    elapsed_s: elapsed(),
    options: record.options,
    data_digest: record.dataDigest,
    max_seq_len: train.maxSeqLen,
    rng: {
      seed: o.seed,
      shuffle: `epoch e: Fisher-Yates over mulberry32(deriveSeed(seed, ${SHUFFLE}, e))`,
      dropout: `step s: GPT-2 dropout seeds from mulberry32(deriveSeed(seed, ${DROPOUT}, s))`,
    },
  });

  const save = async (
    name: string,
    reason: 'epoch' | 'steps' | 'interrupt' | 'final',
    complete = false,
  ): Promise<string> => {
    const optimizer: StateDict = new Map();
    const optimizerSteps: Record<string, number> = {};
    for (const p of params) {
      const name = names.get(p) as string;
      optimizerSteps[name] = opt.paramSteps(p);
      if (!p.m || !p.v) continue;
      optimizer.set(`exp_avg.${name}`, { dtype: 'f32', shape: [...p.shape], data: p.m.toArray() });
      optimizer.set(`exp_avg_sq.${name}`, { dtype: 'f32', shape: [...p.shape], data: p.v.toArray() });
    }
    await flushMetrics();
    const dir = await writeTrainCheckpoint(o.out, name, {
      config: record.config,
      mapperWeights: paramsToStateDict(model.mapper.parameters()),
      ...(model.mode === 'finetune' ? { gpt2: paramsToStateDict(model.gpt2.parameters()) } : {}),
      source: record.source,
      extraConfig: record.extraConfig,
      optimizer,
      optimizerSteps,
      state: state(complete),
    });
    if (o.keepLast !== undefined && (reason === 'epoch' || reason === 'steps'))
      await pruneCheckpoints(o.out, o.keepLast);
    // The picture people look at: refreshed with every checkpoint (a failure to draw never stops training).
    await writeLossChart(path.join(o.out, LOSS_CHART_FILE), losses, valLosses, stepsPerEpoch).catch(
      (e: Error) => emit({ type: 'warning', message: `could not draw ${LOSS_CHART_FILE}: ${e.message}` }),
    );
    emit({ type: 'checkpoint', path: dir, step, reason });
    return dir;
  };

  for (const message of scheduleWarnings({ warmup: o.warmup, totalSteps, maxSteps: o.maxSteps, lr: o.lr }))
    emit({ type: 'warning', message });
  emit({
    type: 'start',
    captions: train.count,
    valCaptions: val?.count ?? 0,
    maxSeqLen: train.maxSeqLen,
    stepsPerEpoch,
    totalSteps,
    lastStep,
    startStep: step,
    ...(resume ? { resumedFrom: resume.dir } : {}),
  });

  // Throughput over a window of recent steps (a fresh process has no history to smooth with).
  const recent: number[] = [performance.now()];
  let checkpoint = '';
  while (epoch < o.epochs && step < lastStep) {
    const order = shuffled(train.count, mulberry32(deriveSeed(o.seed, SHUFFLE, epoch)));
    for (; j < stepsPerEpoch && step < lastStep; j++) {
      if (ctl.signal?.aborted) {
        checkpoint = await save(`step-${pad(step, 7)}`, 'interrupt');
        return result(true);
      }
      const batch = makeBatch(train, order.subarray(j * B, (j + 1) * B), k);
      model.gpt2.setDropoutSeed(deriveSeed(o.seed, DROPOUT, step));
      opt.zeroGrad();
      const lr = opt.currentLr;
      const { loss } = model.lossAndBackward(batch, { train: true, lossMode: o.lossMode });
      if (!Number.isFinite(loss)) {
        await flushMetrics();
        const ckpts = await lastGoodCheckpoint(o.out);
        throw new TrainingDivergedError(
          `the loss is ${loss} at step ${step + 1} (epoch ${epoch + 1}); training stopped before applying it. ` +
            (ckpts ? `The last good checkpoint is ${ckpts}. ` : 'No checkpoint was saved yet. ') +
            'Lower --lr or raise --warmup, and check the data',
        );
      }
      opt.step();
      step++;
      losses.push(loss);
      epochSum += loss;
      epochCount++;
      const now = performance.now();
      recent.push(now);
      if (recent.length > 51) recent.shift();
      const samplesPerS = ((recent.length - 1) * B) / Math.max(1e-9, (now - recent[0]) / 1000);
      const wall = elapsed();
      metricsBuffer.push(
        `${JSON.stringify({ step, epoch: epoch + 1, loss, lr, samples_per_s: samplesPerS, wall_s: wall })}\n`,
      );
      emit({
        type: 'step',
        epoch,
        step,
        stepInEpoch: j + 1,
        stepsPerEpoch,
        lastStep,
        loss,
        lr,
        samplesPerS,
        elapsedS: wall,
      });
      if (o.saveEverySteps > 0 && step % o.saveEverySteps === 0 && step < lastStep) {
        j++; // the checkpoint's position is after this step
        checkpoint = await save(`step-${pad(step, 7)}`, 'steps');
        j--;
      }
      if (now - lastFlush > 10_000) await flushMetrics();
      // Let signals and I/O in between steps (a step is synchronous compute).
      await new Promise<void>((r) => setImmediate(r));
    }
    if (j < stepsPerEpoch) {
      // Stopped by --max-steps inside an epoch: its partial mean still counts.
      perEpoch.push(epochSum / Math.max(1, epochCount));
      break;
    }
    const meanLoss = epochSum / Math.max(1, epochCount);
    perEpoch.push(meanLoss);
    let valLoss: number | undefined;
    if (val) {
      valLoss = validationLoss(model, val, B, o.lossMode);
      valLosses.push({ epoch: epoch + 1, step, loss: valLoss });
      metricsBuffer.push(
        `${JSON.stringify({ step, epoch: epoch + 1, val_loss: valLoss, wall_s: elapsed() })}\n`,
      );
    }
    epoch++;
    j = 0;
    epochSum = 0;
    epochCount = 0;
    const last = epoch >= o.epochs || step >= lastStep;
    let saved: string | undefined;
    if (o.saveEvery > 0 && epoch % o.saveEvery === 0 && !last)
      saved = checkpoint = await save(`epoch-${pad(epoch, 3)}`, 'epoch');
    emit({
      type: 'epoch',
      epoch: epoch - 1,
      meanLoss,
      ...(valLoss !== undefined ? { valLoss } : {}),
      checkpoint: saved,
    });
  }
  checkpoint = await save('final', 'final', true);
  return result(false);

  function result(interrupted: boolean): LoopResult {
    return {
      steps: step,
      epochs: Math.min(o.epochs, epoch + (j > 0 ? 1 : 0)),
      final_loss: losses[losses.length - 1] ?? NaN,
      losses_per_epoch: perEpoch,
      losses,
      val_losses: valLosses,
      checkpoint,
      maxSeqLen: train.maxSeqLen,
      interrupted,
    };
  }
}

/** The newest complete checkpoint in a run directory, for messages. */
async function lastGoodCheckpoint(out: string): Promise<string | undefined> {
  const all = await listCheckpoints(out);
  return all[all.length - 1]?.dir;
}
