/**
 * Training checkpoints: clipcap checkpoint directories (config.json + model.safetensors, what `caption --model`
 * loads) that also hold what a run needs to continue exactly: `optimizer.safetensors` (AdamW's moments, by
 * the official state_dict names) and `trainer-state.json` (step, epoch, position in the epoch, loss history,
 * the options and the data digest).
 *
 * Crash safety: a checkpoint is assembled in a hidden temp directory inside the run directory
 * (`.NAME.<hex>.tmp`), every file and the directory are fsynced, and only then is it renamed to NAME, and the
 * run directory fsynced. A kill at any moment leaves either no NAME or a complete one, plus at worst a hidden
 * temp that the next run in that directory removes (`cleanStaleTemps`). Old checkpoints are removed the same
 * way round: renamed to a temp name first, so a half-deleted directory is never loadable under its name.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { ClipCapConfig } from '../config/models.js';
import { UserError } from '../util/errors.js';
import { moveDirIntoPlace, writeFileAtomic } from '../util/atomic.js';
import { CLIPCAP_CONFIG_FILE, CLIPCAP_WEIGHTS_FILE, saveClipcapDir } from '../weights/families/clipcap.js';
import type { StateDict } from '../weights/host.js';
import { readSafetensors, saveSafetensors } from '../weights/safetensors.js';

export const TRAIN_STATE_FILE = 'trainer-state.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const TRAIN_STATE_FORMAT = 'clipcap-train-state';
export const TRAIN_STATE_VERSION = 1;

/** Where a run stands after a step; everything else a resumed run needs is derived from it and the seed. */
export interface TrainState {
  format: typeof TRAIN_STATE_FORMAT;
  version: number;
  /** Optimizer steps taken. */
  step: number;
  /** The epoch the next step belongs to (0-based) and how many of its steps are done. */
  epoch: number;
  step_in_epoch: number;
  steps_per_epoch: number;
  total_steps: number;
  /** True for the run's last checkpoint (final/): nothing left to resume. */
  complete: boolean;
  /** Sum and count of this epoch's losses so far (the epoch mean continues across a resume). */
  epoch_loss_sum: number;
  epoch_loss_count: number;
  losses_per_epoch: number[];
  /** Every step's loss, in order (numbers round-trip exactly through JSON). */
  losses: number[];
  val_losses: Array<{ epoch: number; step: number; loss: number }>;
  /** Seconds of training so far (for throughput and ETA after a resume). */
  elapsed_s: number;
  /** The training options (resolved), as `clipcap train` would take them again. */
  options: Record<string, unknown>;
  /** sha256 of the data files (and captions sidecars), in order. */
  data_digest: string;
  max_seq_len: number;
  /** How every random stream is derived (documentation: the streams are pure functions of these). */
  rng: { seed: number; shuffle: string; dropout: string };
}

export interface TrainCheckpoint {
  config: ClipCapConfig;
  mapperWeights: StateDict;
  /** GPT-2's canonical weights when they are trained (fine-tuning). */
  gpt2?: StateDict;
  source: string;
  /** config.json members besides the model's (sources, training, data). */
  extraConfig: Record<string, unknown>;
  /** AdamW moments by parameter name (`exp_avg.NAME`, `exp_avg_sq.NAME`) and per-parameter step counts. */
  optimizer: StateDict;
  optimizerSteps: Record<string, number>;
  state: TrainState;
}

/** Hidden temp entries a writer of this directory leaves when killed: `.NAME.<12 hex>.tmp` (and nested). */
const TEMP_RE = /^\..+\.[0-9a-f]{12}\.tmp(\.old)?$/;

async function fsyncPath(p: string): Promise<void> {
  const fh = await fs.open(p, 'r');
  try {
    await fh.sync();
  } catch (e) {
    // Some file systems refuse fsync on a directory (EINVAL/EISDIR); the files themselves were synced.
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'EISDIR' && code !== 'EPERM') throw e;
  } finally {
    await fh.close();
  }
}

/** Remove hidden temp files and directories that a killed writer left in `dir`; returns their names. */
export async function cleanStaleTemps(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir).catch(() => [] as string[]);
  const stale = entries.filter((e) => TEMP_RE.test(e));
  for (const e of stale) await fs.rm(path.join(dir, e), { recursive: true, force: true });
  return stale;
}

/** Entries of a run directory that are not stale temps. */
export async function liveEntries(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    if (e.code === 'ENOTDIR') throw new UserError(`--out ${dir} is a file; give a new directory`);
    throw new UserError(`--out ${dir}: cannot read it (${e.code ?? String(e)})`);
  });
  return entries.filter((e) => !TEMP_RE.test(e));
}

/**
 * Write checkpoint `name` into run directory `out` atomically (see the file comment). An existing `name` is
 * replaced only once the new one is complete (a resumed run re-saving a name it saved before).
 */
export async function writeTrainCheckpoint(out: string, name: string, ck: TrainCheckpoint): Promise<string> {
  const final = path.join(out, name);
  await fs.mkdir(out, { recursive: true });
  const stage = path.join(out, `.${name}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await saveClipcapDir(stage, {
      config: ck.config,
      mapperWeights: ck.mapperWeights,
      ...(ck.gpt2 ? { gpt2: ck.gpt2 } : {}),
      source: ck.source,
    });
    // config.json gains the run's members (sources, training options, data digest).
    const cfgPath = path.join(stage, CLIPCAP_CONFIG_FILE);
    const cfg = JSON.parse(await fs.readFile(cfgPath, 'utf8')) as Record<string, unknown>;
    await fs.writeFile(cfgPath, `${JSON.stringify({ ...cfg, ...ck.extraConfig }, null, 2)}\n`);
    await saveSafetensors(path.join(stage, OPTIMIZER_FILE), ck.optimizer, {
      format: 'clipcap-adamw',
      steps: JSON.stringify(ck.optimizerSteps),
    });
    await fs.writeFile(path.join(stage, TRAIN_STATE_FILE), `${JSON.stringify(ck.state)}\n`);
    for (const f of [CLIPCAP_CONFIG_FILE, CLIPCAP_WEIGHTS_FILE, OPTIMIZER_FILE, TRAIN_STATE_FILE])
      await fsyncPath(path.join(stage, f));
    await fsyncPath(stage);
    const exists = await fs.stat(final).then(
      () => true,
      () => false,
    );
    await moveDirIntoPlace(stage, final, exists);
    await fsyncPath(out);
    return final;
  } catch (e) {
    await fs.rm(stage, { recursive: true, force: true });
    throw e;
  }
}

/** Remove a checkpoint directory so that it is never seen half-deleted under its own name. */
export async function removeCheckpoint(dir: string): Promise<void> {
  const doomed = path.join(path.dirname(dir), `.${path.basename(dir)}.${randomBytes(6).toString('hex')}.tmp`);
  await fs.rename(dir, doomed);
  await fs.rm(doomed, { recursive: true, force: true });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Read a checkpoint's trainer-state.json; undefined when the directory is not a training checkpoint. */
export async function readTrainState(dir: string): Promise<TrainState | undefined> {
  const file = path.join(dir, TRAIN_STATE_FILE);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new UserError(`${file}: not valid JSON; resume from another checkpoint`);
  }
  if (!isObject(v) || v.format !== TRAIN_STATE_FORMAT)
    throw new UserError(`${file}: not a clipcap training state; resume from another checkpoint`);
  if (v.version !== TRAIN_STATE_VERSION)
    throw new UserError(`${file}: state version ${String(v.version)} is not supported by this clipcap`);
  for (const k of ['step', 'epoch', 'step_in_epoch', 'steps_per_epoch', 'total_steps', 'max_seq_len'])
    if (!Number.isInteger(v[k]) || (v[k] as number) < 0)
      throw new UserError(`${file}: "${k}" must be a non-negative integer`);
  if (!isObject(v.options) || typeof v.data_digest !== 'string' || !Array.isArray(v.losses))
    throw new UserError(`${file}: options, data_digest or losses missing; resume from another checkpoint`);
  return v as unknown as TrainState;
}

/** AdamW moments and step counts of a checkpoint. */
export async function readOptimizerState(
  dir: string,
): Promise<{ tensors: StateDict; steps: Record<string, number> }> {
  const file = path.join(dir, OPTIMIZER_FILE);
  const { tensors, metadata } = await readSafetensors(file);
  let steps: unknown;
  try {
    steps = JSON.parse(metadata?.steps ?? '');
  } catch {
    steps = undefined;
  }
  if (!isObject(steps) || !Object.values(steps).every((s) => Number.isInteger(s)))
    throw new UserError(
      `${file}: no per-parameter step counts in its metadata; resume from another checkpoint`,
    );
  return { tensors, steps: steps as Record<string, number> };
}

export interface FoundCheckpoint {
  dir: string;
  state: TrainState;
}

/** The training checkpoints directly inside a run directory, by step (oldest first). */
export async function listCheckpoints(out: string): Promise<FoundCheckpoint[]> {
  const found: FoundCheckpoint[] = [];
  for (const e of await liveEntries(out)) {
    const dir = path.join(out, e);
    if (
      !(await fs.stat(dir).then(
        (s) => s.isDirectory(),
        () => false,
      ))
    )
      continue;
    const state = await readTrainState(dir).catch(() => undefined);
    if (state) found.push({ dir, state });
  }
  // final/ sorts after a step checkpoint of the same step (it is the complete one).
  return found.sort(
    (a, b) => a.state.step - b.state.step || Number(a.state.complete) - Number(b.state.complete),
  );
}

/**
 * `--resume DIR`: DIR is a checkpoint (has trainer-state.json) or a run directory (its latest checkpoint).
 * Returns the checkpoint and the run directory new checkpoints go to.
 */
export async function findResumePoint(dir: string): Promise<{ run: string; checkpoint: FoundCheckpoint }> {
  const st = await fs.stat(dir).catch(() => null);
  if (!st?.isDirectory())
    throw new UserError(`--resume ${dir}: no such directory; give a run's --out directory`);
  const own = await readTrainState(dir);
  if (own) return { run: path.dirname(path.resolve(dir)), checkpoint: { dir, state: own } };
  const all = await listCheckpoints(dir);
  const last = all[all.length - 1];
  if (!last)
    throw new UserError(
      `--resume ${dir}: holds no training checkpoint (no */${TRAIN_STATE_FILE}); start a new run with --data and --out`,
    );
  return { run: dir, checkpoint: last };
}

/** Keep only the newest `keep` periodic checkpoints (epoch-*, step-*); final/ is never removed. */
export async function pruneCheckpoints(out: string, keep: number): Promise<string[]> {
  const periodic = (await listCheckpoints(out)).filter((c) =>
    /^(epoch|step)-\d+$/.test(path.basename(c.dir)),
  );
  const doomed = periodic.slice(0, Math.max(0, periodic.length - keep));
  for (const c of doomed) await removeCheckpoint(c.dir);
  return doomed.map((c) => c.dir);
}

/**
 * Append-only metrics log; a resumed run first drops the lines past its checkpoint: every line after `step`, and
 * a validation line at `step` itself unless the checkpoint already counts it (`valAtStep`), since a checkpoint
 * taken at an epoch's last step comes before that epoch's validation.
 */
export async function truncateMetrics(file: string, step: number, valAtStep = true): Promise<string[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    return [];
  }
  const keep = text.split('\n').filter((l) => {
    if (l.trim() === '') return false;
    try {
      const o = JSON.parse(l) as { step?: unknown; val_loss?: unknown };
      if (typeof o.step !== 'number') return false;
      return o.step < step || (o.step === step && (o.val_loss === undefined || valAtStep));
    } catch {
      return false; // a torn last line from a kill
    }
  });
  await writeFileAtomic(file, keep.map((l) => `${l}\n`).join(''));
  return keep;
}
