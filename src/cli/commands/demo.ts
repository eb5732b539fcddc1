/**
 * `clipcap demo`: caption the photos shipped in assets/demo with the tiny models shipped beside them. It runs
 * the whole real pipeline (decode, CLIP, mapper, GPT-2 with a KV cache, beam search, BPE) offline on a fresh
 * clone; the weights are random, so the captions are nonsense, and the output says so.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Option, type Command } from 'commander';
import { UserError } from '../../util/errors.js';
import { processContext, runCaption, type CliContext, type CliIO } from './caption.js';
import { backendOption } from '../options.js';
import type { BackendName } from '../../engine/registry.js';

/** assets/demo, found by walking up from this file (src/cli/commands or dist/src/cli/commands). */
export function demoAssetsDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = path.join(dir, 'assets', 'demo');
    if (existsSync(path.join(candidate, 'clipcap_mlp_tiny.pt'))) return candidate;
    dir = path.dirname(dir);
  }
  throw new UserError('the demo assets (assets/demo) are missing from this installation; reinstall clipcap');
}

interface DemoOptions {
  decode: 'beam' | 'greedy' | 'nucleus';
  format: 'text' | 'json' | 'jsonl';
  backend?: BackendName;
}

export async function runDemo(o: DemoOptions, io: CliIO): Promise<number> {
  const assets = demoAssetsDir();
  const note =
    'clipcap demo: captioning the photos in assets/demo/images with TINY RANDOM weights (test fixtures), ' +
    'offline. The captions are meaningless; the run proves the pipeline works end to end. ' +
    'For real captions: clipcap caption --model coco photo.jpg';
  if (o.format === 'text') io.stdout(`# ${note}\n`);
  else io.stderr(`${note}\n`);
  // Relative to the working directory when the package is below it (a clone), absolute otherwise.
  const rel = path.relative(process.cwd(), path.join(assets, 'images'));
  const images = rel.startsWith('..') || path.isAbsolute(rel) ? path.join(assets, 'images') : rel;
  return runCaption(
    [images],
    {
      model: 'coco',
      clipcap: path.join(assets, 'clipcap_mlp_tiny.pt'),
      clip: path.join(assets, 'clip_tiny'),
      gpt2: path.join(assets, 'gpt2_tiny'),
      backend: o.backend,
      offline: true,
      decode: o.decode,
      beamSize: 5,
      maxTokens: 20,
      stop: '.',
      topP: 0.8,
      temperature: 1,
      seed: 0,
      numCaptions: 1,
      batchSize: 8,
      format: o.format,
    },
    io,
  );
}

export function register(program: Command, ctx: CliContext = processContext): void {
  program
    .command('demo')
    .description('caption the bundled photos with bundled tiny random-weight models (offline, end to end)')
    .addOption(
      new Option('--decode <method>', 'decoder').choices(['beam', 'greedy', 'nucleus']).default('beam'),
    )
    .addOption(
      new Option('--format <format>', 'output format').choices(['text', 'json', 'jsonl']).default('text'),
    )
    .addOption(backendOption())
    .action(async (o: DemoOptions) => {
      const failed = await runDemo(o, ctx.io());
      if (failed > 0) ctx.exit(1);
    });
}
