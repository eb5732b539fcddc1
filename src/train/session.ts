/**
 * One training run once everything is read: builds the model (fresh mapper weights from the seed, or the
 * weights of the checkpoint being resumed), prepares the run directory (stale temps of an interrupted save,
 * metrics of a fresh run, the metrics past a resumed checkpoint), runs the loop (loop.ts) and writes the final
 * `torch.save` export. pipeline/train.ts resolves the options and reads the files, then calls this.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Backend } from '../engine/backend.js';
import type { Gpt2Config, MapperConfig } from '../config/models.js';
import { ClipCapModel, type ClipCapMode } from '../models/clipcap.js';
import type { StateDict } from '../weights/host.js';
import { saveTorchStateDict } from '../weights/torch-write.js';
import { cleanStaleTemps, truncateMetrics } from './checkpoint.js';
import type { TrainingSet } from './data.js';
import { initMapperWeights } from './init.js';
import {
  LOSS_CHART_FILE,
  METRICS_FILE,
  runTrainingLoop,
  type LoopControl,
  type LoopOptions,
  type LoopResult,
  type ResumeFrom,
  type RunRecord,
} from './loop.js';

/** The model a run trains. */
export interface TrainModelSpec {
  mapper: MapperConfig;
  /** GPT-2 as loaded (config and pretrained weights). */
  gpt2: { config: Gpt2Config; weights: StateDict };
  mode: ClipCapMode;
  normalizePrefix: boolean;
  /** Seeds fresh mapper weights (not used when resuming). */
  seed: number;
  /** The weights of the checkpoint being resumed: its mapper, and its GPT-2 when the run fine-tunes GPT-2. */
  resumed?: { mapperWeights: StateDict; gpt2Weights?: StateDict };
  /** Names the weights in messages (the GPT-2 source). */
  source: string;
}

export interface TrainRun {
  backend: Backend;
  model: TrainModelSpec;
  train: TrainingSet;
  val?: TrainingSet;
  /** Loop options; `out` is the run directory. */
  loop: LoopOptions;
  record: RunRecord;
  resume?: ResumeFrom;
  /** Also write the final model as the official torch.save state dict here. */
  exportTorch?: string;
  control?: LoopControl & {
    /** The trained model, before it is disposed (e.g. to inspect its weights). */
    onFinish?: (model: ClipCapModel) => void;
  };
}

export async function trainModel(run: TrainRun): Promise<LoopResult> {
  const { model: m, loop: o, resume } = run;
  const emit = run.control?.onEvent ?? ((): void => undefined);
  const mapperWeights = m.resumed?.mapperWeights ?? initMapperWeights(m.mapper, m.gpt2.config.n_embd, m.seed);
  const gpt2 = m.resumed?.gpt2Weights ? { config: m.gpt2.config, weights: m.resumed.gpt2Weights } : m.gpt2;
  const model = ClipCapModel.create(
    run.backend,
    { mapper: m.mapper, mapperWeights, gpt2, mode: m.mode, normalizePrefix: m.normalizePrefix },
    m.source,
  );
  try {
    await fs.mkdir(o.out, { recursive: true });
    if (!resume)
      for (const f of [METRICS_FILE, LOSS_CHART_FILE]) await fs.rm(path.join(o.out, f), { force: true });
    for (const t of await cleanStaleTemps(o.out))
      emit({ type: 'warning', message: `removed ${t}, left by an interrupted save` });
    if (resume)
      await truncateMetrics(
        path.join(o.out, METRICS_FILE),
        resume.state.step,
        resume.state.val_losses.some((v) => v.step === resume.state.step),
      );
    const result = await runTrainingLoop(model, run.train, run.val, o, run.record, resume, {
      onEvent: run.control?.onEvent,
      signal: run.control?.signal,
    });
    if (!result.interrupted && run.exportTorch !== undefined) {
      // Every official key (clip_project.*, gpt.transformer.*, gpt.lm_head.weight tied to wte), also for a
      // model trained with GPT-2 frozen: ClipCaptionPrefix.state_dict() holds GPT-2 too.
      await saveTorchStateDict(run.exportTorch, model.stateDict());
      emit({ type: 'checkpoint', path: run.exportTorch, step: result.steps, reason: 'final' });
    }
    if (!result.interrupted) run.control?.onFinish?.(model);
    return result;
  } finally {
    model.dispose();
  }
}
