/**
 * `clipcap train --data FEATURES --out DIR [...]`: train a ClipCap mapping network the official way
 * (pipeline/train.ts). Progress: a bar on a terminal, else one line per epoch; --format json prints a summary.
 */
import cliProgress from 'cli-progress';
import { Option, type Command } from 'commander';
import { trainClipcap, type TrainOptions } from '../../pipeline/train.js';
import { UsageError } from '../../util/errors.js';
import { floatArg, intArg, processContext, type CliContext, type CliIO } from './caption.js';
import { backendOption, DEFAULT_GPT2_SPEC, offlineOption } from '../options.js';

interface TrainCliOptions {
  data: string;
  out: string;
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
  maxSteps?: number;
  backend?: 'native' | 'reference';
  offline?: boolean;
  format: 'text' | 'json';
}

export async function runTrain(o: TrainCliOptions, io: CliIO): Promise<void> {
  if (o.onlyPrefix && o.finetuneGpt2) throw new UsageError('give --only-prefix or --finetune-gpt2, not both');
  const opts: TrainOptions = {
    data: o.data,
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
    maxSteps: o.maxSteps,
    backend: o.backend,
    offline: o.offline,
  };
  let bar: cliProgress.SingleBar | undefined;
  const result = await (async () => {
    try {
      return await trainClipcap(opts, {
        onStart: (s) => {
          io.stderr(
            `clipcap: ${s.captions} captions, max_seq_len ${s.maxSeqLen}, ${s.stepsPerEpoch} steps per epoch\n`,
          );
          if (!io.progress) return;
          const total = o.maxSteps !== undefined ? Math.min(o.maxSteps, s.totalSteps) : s.totalSteps;
          bar = new cliProgress.SingleBar(
            {
              stream: process.stderr,
              format: 'training [{bar}] {value}/{total} | epoch {epoch} | loss {loss} | {eta_formatted} left',
              hideCursor: true,
            },
            cliProgress.Presets.shades_classic,
          );
          bar.start(total, 0, { epoch: 1, loss: '-' });
        },
        onStep: (p) => bar?.update(p.step, { epoch: p.epoch + 1, loss: p.loss.toFixed(4) }),
        onEpoch: (e) => {
          if (bar) return;
          const saved = e.checkpoint !== undefined ? `, saved ${e.checkpoint}` : '';
          io.stderr(`clipcap: epoch ${e.epoch + 1}: mean loss ${e.meanLoss.toFixed(4)}${saved}\n`);
        },
      });
    } finally {
      bar?.stop();
    }
  })();
  if (o.format === 'json') {
    const { steps, epochs, final_loss, losses_per_epoch, checkpoint } = result;
    io.stdout(`${JSON.stringify({ steps, epochs, final_loss, losses_per_epoch, checkpoint })}\n`);
  } else {
    io.stdout(
      `trained ${result.steps} steps (${result.epochs} epochs), final loss ${result.final_loss.toFixed(4)}; ` +
        `checkpoint ${result.checkpoint}\n`,
    );
  }
}

export function register(program: Command, ctx: CliContext = processContext): void {
  program
    .command('train')
    .description('train a ClipCap mapping network on CLIP features and captions (the official recipe)')
    .requiredOption(
      '--data <FILE>',
      'features: a .pkl from the official parse_coco.py, or a .safetensors from clipcap extract (with its .captions.jsonl)',
    )
    .requiredOption('--out <DIR>', 'output directory (new or empty): epoch-NNN/ and final/ checkpoints')
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
    .option(
      '--save-every <n>',
      'also save epoch-NNN/ every n epochs (0: only final/)',
      intArg('--save-every', 0),
      0,
    )
    .option('--max-steps <n>', 'stop after n optimizer steps', intArg('--max-steps', 1))
    .addOption(backendOption())
    .addOption(offlineOption())
    .addOption(new Option('--format <fmt>', 'summary format').choices(['text', 'json']).default('text'))
    .action(async (o: TrainCliOptions) => {
      await runTrain(o, ctx.io());
    });
}
