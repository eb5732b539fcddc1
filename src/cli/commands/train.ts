/**
 * `clipcap train --data FEATURES... --out DIR [...]` / `clipcap train --resume DIR`: train a ClipCap mapping
 * network the official way (pipeline/train.ts, train/loop.ts). Progress: a bar on a terminal (smoothed loss,
 * lr, samples/s, ETA), else one line every --log-every seconds with the same fields; --format json prints a
 * summary. SIGINT/SIGTERM save a resumable checkpoint, print how to resume, and exit 130/143.
 */
import cliProgress from 'cli-progress';
import { Option, type Command } from 'commander';
import { train, type TrainEvent, type TrainOptions } from '../../pipeline/train.js';
import { UsageError } from '../../util/errors.js';
import { floatArg, intArg, processContext, type CliContext, type CliIO } from './caption.js';
import { backendOption, DEFAULT_GPT2_SPEC, offlineOption } from '../options.js';
import type { BackendName } from '../../engine/registry.js';

interface TrainCliOptions {
  data?: string[];
  val?: string[];
  valFraction?: number;
  out?: string;
  resume?: string;
  mappingType: 'mlp' | 'transformer';
  onlyPrefix?: boolean;
  finetuneGpt2?: boolean;
  gpt2?: string;
  prefixLength: number;
  clipLength: number;
  numLayers: number;
  normalizePrefix?: boolean;
  epochs: number;
  batchSize: number;
  lr: number;
  warmup: number;
  seed: number;
  loss: 'official' | 'mask';
  saveEvery: number;
  saveEverySteps: number;
  keepLast?: number;
  maxSteps?: number;
  exportTorch?: string;
  logEvery: number;
  backend?: BackendName;
  offline?: boolean;
  format: 'text' | 'json';
}

function duration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h > 0
    ? `${h}h${String(m).padStart(2, '0')}m`
    : m > 0
      ? `${m}m${String(sec).padStart(2, '0')}s`
      : `${sec}s`;
}

/** Progress display: a cli-progress bar on a terminal, periodic plain lines elsewhere (logs, Slurm, CI). */
class Progress {
  private bar?: cliProgress.SingleBar;
  private ema = 0;
  private emaN = 0;
  private lastLine = 0;
  private startStep = 0;
  private startElapsed = -1;

  constructor(
    private readonly io: CliIO,
    private readonly logEveryS: number,
  ) {}

  event(e: TrainEvent): void {
    if (e.type === 'warning') this.print(`clipcap: warning: ${e.message}\n`);
    else if (e.type === 'checkpoint' && e.path.endsWith('.pt')) this.print(`clipcap: wrote ${e.path}\n`);
    else if (e.type === 'start') {
      const resumed = e.resumedFrom !== undefined ? `, resuming ${e.resumedFrom} at step ${e.startStep}` : '';
      const val = e.valCaptions > 0 ? ` (+${e.valCaptions} for validation)` : '';
      this.print(
        `clipcap: ${e.captions} captions${val}, max_seq_len ${e.maxSeqLen}, ${e.stepsPerEpoch} steps per epoch, ` +
          `${e.lastStep} steps${resumed}\n`,
      );
      this.startStep = e.startStep;
      if (this.io.progress) {
        this.bar = new cliProgress.SingleBar(
          {
            stream: process.stderr,
            format:
              'training [{bar}] {value}/{total} | epoch {epoch} | loss {loss} | lr {lr} | {sps} samples/s | {eta} left',
            hideCursor: true,
            etaBuffer: 50,
          },
          cliProgress.Presets.shades_classic,
        );
        this.bar.start(e.lastStep, e.startStep, { epoch: 1, loss: '-', lr: '-', sps: '-', eta: '?' });
      }
    } else if (e.type === 'step') {
      // Smoothed loss: bias-corrected EMA over ~50 steps.
      this.ema = 0.98 * this.ema + 0.02 * e.loss;
      this.emaN++;
      const loss = this.ema / (1 - 0.98 ** this.emaN);
      if (this.startElapsed < 0) this.startElapsed = e.elapsedS;
      const done = e.step - this.startStep;
      const rate = done / Math.max(1e-9, e.elapsedS - this.startElapsed);
      const eta = (e.lastStep - e.step) / rate;
      const fields = {
        epoch: e.epoch + 1,
        loss: loss.toFixed(4),
        lr: e.lr.toExponential(2),
        sps: e.samplesPerS.toFixed(1),
        eta: duration(eta),
      };
      if (this.bar) this.bar.update(e.step, fields);
      else {
        const now = Date.now();
        if (now - this.lastLine >= this.logEveryS * 1000 || e.step === e.lastStep) {
          this.lastLine = now;
          this.io.stderr(
            `clipcap: step ${e.step}/${e.lastStep} epoch ${fields.epoch} (${e.stepInEpoch}/${e.stepsPerEpoch}) ` +
              `loss ${fields.loss} lr ${fields.lr} ${fields.sps} samples/s elapsed ${duration(e.elapsedS)} ETA ${fields.eta}\n`,
          );
        }
      }
    } else if (e.type === 'epoch') {
      const val = e.valLoss !== undefined ? `, validation loss ${e.valLoss.toFixed(4)}` : '';
      const saved = e.checkpoint !== undefined ? `, saved ${e.checkpoint}` : '';
      this.print(`clipcap: epoch ${e.epoch + 1}: mean loss ${e.meanLoss.toFixed(4)}${val}${saved}\n`);
    }
  }

  /** A line above the bar (the bar redraws below it). */
  private print(s: string): void {
    if (this.bar) {
      process.stderr.write('\r\x1b[K');
      this.io.stderr(s);
      this.bar.updateETA();
      this.bar.render();
    } else this.io.stderr(s);
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}

export interface TrainRunControl {
  signal?: AbortSignal;
}

/** Returns the exit code (0, or 130/143 when a signal stopped the run; `signalName` says which). */
export async function runTrain(
  o: TrainCliOptions,
  io: CliIO,
  control: TrainRunControl & { signalName?: () => string | undefined } = {},
): Promise<number> {
  if (o.onlyPrefix && o.finetuneGpt2) throw new UsageError('give --only-prefix or --finetune-gpt2, not both');
  if (o.resume === undefined && (o.data === undefined || o.out === undefined))
    throw new UsageError('give --data FILE... and --out DIR, or --resume DIR');
  if (o.resume !== undefined && (o.data !== undefined || o.out !== undefined))
    throw new UsageError(
      '--resume continues a run with its recorded data, output and options; drop --data/--out',
    );
  const opts: TrainOptions = {
    ...(o.resume !== undefined ? { resume: o.resume } : {}),
    data: o.data,
    val: o.val,
    valFraction: o.valFraction,
    out: o.out,
    mappingType: o.mappingType,
    onlyPrefix: o.onlyPrefix ? true : o.finetuneGpt2 ? false : undefined,
    gpt2: o.gpt2,
    prefixLength: o.prefixLength,
    clipLength: o.clipLength,
    numLayers: o.numLayers,
    normalizePrefix: o.normalizePrefix,
    epochs: o.epochs,
    batchSize: o.batchSize,
    lr: o.lr,
    warmup: o.warmup,
    seed: o.seed,
    loss: o.loss,
    saveEvery: o.saveEvery,
    saveEverySteps: o.saveEverySteps,
    keepLast: o.keepLast,
    maxSteps: o.maxSteps,
    exportTorch: o.exportTorch,
    backend: o.backend,
    offline: o.offline,
  };
  const progress = new Progress(io, o.logEvery);
  let result;
  try {
    result = await train(opts, { onEvent: (e) => progress.event(e), signal: control.signal });
  } finally {
    progress.stop();
  }
  if (result.interrupted) {
    const sig = control.signalName?.() ?? 'SIGINT';
    io.stderr(
      `clipcap: ${sig}: stopped after step ${result.steps}; saved a resumable checkpoint ${result.checkpoint}\n` +
        `clipcap: continue with: clipcap train --resume ${result.out}\n`,
    );
    if (o.format === 'json')
      io.stdout(
        `${JSON.stringify({ interrupted: true, steps: result.steps, checkpoint: result.checkpoint, resume: result.out })}\n`,
      );
    return sig === 'SIGTERM' ? 143 : 130;
  }
  if (o.format === 'json') {
    const { steps, epochs, final_loss, losses_per_epoch, val_losses, checkpoint } = result;
    io.stdout(`${JSON.stringify({ steps, epochs, final_loss, losses_per_epoch, val_losses, checkpoint })}\n`);
  } else {
    io.stdout(
      `trained ${result.steps} steps (${result.epochs} epochs), final loss ${result.final_loss.toFixed(4)}; ` +
        `checkpoint ${result.checkpoint}\n`,
    );
  }
  return 0;
}

/** Stop on SIGINT/SIGTERM by aborting (the run saves a checkpoint); a second signal exits at once. */
function withSignals<T>(
  run: (signal: AbortSignal, name: () => string | undefined) => Promise<T>,
): Promise<T> {
  const ac = new AbortController();
  let got: string | undefined;
  const handler = (sig: NodeJS.Signals): void => {
    if (got !== undefined) process.exit(sig === 'SIGTERM' ? 143 : 130);
    got = sig;
    process.stderr.write(
      `\nclipcap: ${sig}: saving a checkpoint at the end of this step (again to quit now)\n`,
    );
    ac.abort();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return run(ac.signal, () => got).finally(() => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  });
}

/** What may change when a run resumes: where it runs and how it reports, not what it computes. */
const RESUME_OPTIONS = new Set([
  'resume',
  'logEvery',
  'backend',
  'offline',
  'format',
  'exportTorch',
  'keepLast',
]);

export function register(program: Command, ctx: CliContext = processContext): void {
  program
    .command('train')
    .description('train a ClipCap mapping network on CLIP features and captions (the official recipe)')
    .option(
      '--data <FILE...>',
      'features: .pkl files from the official parse_coco.py or .safetensors from clipcap extract (with .captions.jsonl); several files or globs (shards) are concatenated',
    )
    .option('--val <FILE...>', 'validation features (same formats); validation loss after every epoch')
    .option(
      '--val-fraction <f>',
      'hold out this fraction of the images (with their captions) for validation',
      floatArg('--val-fraction', (x) => x > 0 && x < 1, 'a number between 0 and 1'),
    )
    .option(
      '--out <DIR>',
      'run directory (new or empty): epoch-NNN/, step-NNNNNNN/, final/, metrics.jsonl, loss.png',
    )
    .option(
      '--resume <DIR>',
      'continue a run exactly: its --out directory (latest checkpoint) or one of its checkpoints',
    )
    .addOption(
      new Option('--mapping-type <type>', 'mapping network').choices(['mlp', 'transformer']).default('mlp'),
    )
    .option('--only-prefix', 'train only the mapper, GPT-2 frozen (the default for transformer)')
    .option('--finetune-gpt2', 'also train GPT-2 (the default for mlp)')
    .option('--gpt2 <DIR|HUB_ID>', `GPT-2 to start from (default: ${DEFAULT_GPT2_SPEC})`)
    .option('--prefix-length <n>', 'prefix length K', intArg('--prefix-length', 1, 1024), 10)
    .option(
      '--clip-length <n>',
      'transformer mapper: vectors made from the CLIP embedding',
      intArg('--clip-length', 1, 1024),
      10,
    )
    .option('--num-layers <n>', 'transformer mapper layers', intArg('--num-layers', 1, 256), 8)
    .option('--normalize-prefix', 'L2-normalize CLIP embeddings before the mapper')
    .option('--epochs <n>', 'epochs', intArg('--epochs', 1), 10)
    .option(
      '--batch-size <n>',
      'captions per step (the last partial batch is dropped)',
      intArg('--batch-size', 1),
      40,
    )
    .option(
      '--lr <x>',
      'peak learning rate',
      floatArg('--lr', (x) => x >= 0, 'a number >= 0'),
      2e-5,
    )
    .option('--warmup <n>', 'linear warmup steps', intArg('--warmup', 0), 5000)
    .option(
      '--seed <n>',
      'seed for the mapper init, shuffling and dropout',
      intArg('--seed', 0, 0xffffffff),
      0,
    )
    .addOption(
      new Option('--loss <mode>', "official (ignore id 0, as train.py) or mask (also trains real '!' tokens)")
        .choices(['official', 'mask'])
        .default('official'),
    )
    .option('--save-every <n>', 'save epoch-NNN/ every n epochs (0: none)', intArg('--save-every', 0), 1)
    .option(
      '--save-every-steps <n>',
      'also save step-NNNNNNN/ every n steps (0: none)',
      intArg('--save-every-steps', 0),
      0,
    )
    .option('--keep-last <k>', 'keep only the newest k epoch-/step- checkpoints', intArg('--keep-last', 1))
    .option('--max-steps <n>', 'stop after n optimizer steps', intArg('--max-steps', 1))
    .option(
      '--export-torch <FILE.pt>',
      'also write the final model as the official torch.save(ClipCaptionModel.state_dict()) file',
    )
    .option(
      '--log-every <seconds>',
      'off a terminal: one progress line every this many seconds',
      floatArg('--log-every', (x) => x >= 0, 'a number >= 0'),
      30,
    )
    .addOption(backendOption())
    .addOption(offlineOption())
    .addOption(new Option('--format <fmt>', 'summary format').choices(['text', 'json']).default('text'))
    .action(async function (this: Command, o: TrainCliOptions) {
      if (o.resume !== undefined) {
        // A resumed run is the recorded run: options that would change it are refused, not silently ignored.
        const given = this.options
          .map((opt) => opt.attributeName())
          .filter((k) => !RESUME_OPTIONS.has(k) && this.getOptionValueSource(k) === 'cli');
        if (given.length > 0)
          throw new UsageError(
            `--resume continues the run with its recorded options; drop ${given.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')}`,
          );
      }
      const code = await withSignals((signal, name) => runTrain(o, ctx.io(), { signal, signalName: name }));
      if (code !== 0) ctx.exit(code);
    });
}
