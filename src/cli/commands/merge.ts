/**
 * `clipcap merge SHARDS... --out FILE.safetensors`: one feature file (and captions sidecar) from the shards
 * of `clipcap extract --shard i/N` (pipeline/merge.ts). Globs are expanded here.
 */
import type { Command } from 'commander';
import { mergeFeatures } from '../../pipeline/merge.js';
import { expandDataFiles } from '../../pipeline/train.js';
import { UsageError } from '../../util/errors.js';
import { processContext, type CliContext, type CliIO } from './caption.js';

export async function runMerge(files: readonly string[], o: { out: string }, io: CliIO): Promise<void> {
  if (!o.out.toLowerCase().endsWith('.safetensors'))
    throw new UsageError(`--out must name a .safetensors file, got ${o.out}`);
  const list = await expandDataFiles(files, 'merge');
  const r = await mergeFeatures(list, o.out);
  io.stderr(
    `clipcap: merged ${r.files.length} files: ${r.rows} embeddings (${r.dim}-d)` +
      (r.captions > 0 ? ` and ${r.captions} captions` : '') +
      ` into ${o.out}\n`,
  );
}

export function register(program: Command, ctx: CliContext = processContext): void {
  program
    .command('merge')
    .description('merge the shards of clipcap extract --shard into one feature file and captions sidecar')
    .argument('<files...>', 'feature files (.safetensors) or glob patterns; shards are put in shard order')
    .requiredOption('--out <FILE>', 'output .safetensors file (its .captions.jsonl is written beside it)')
    .action(async (files: string[], o: { out: string }) => {
      await runMerge(files, o, ctx.io());
    });
}
