/**
 * `clipcap convert IN.pt OUT_DIR [--gpt2 DIR|HUB_ID] [--normalize-prefix] [--overwrite] [--offline]
 * [--format text|json]`:
 * an official ClipCap checkpoint -> clipcap's checkpoint directory (config.json + model.safetensors),
 * written atomically. The work is convertClipcap in src/weights/convert.ts.
 */
import { stat } from 'node:fs/promises';
import { Option, type Command } from 'commander';
import { convertClipcap, type ConvertResult } from '../../weights/convert.js';
import { hubFile } from '../../weights/hub.js';
import { UserError } from '../../util/errors.js';
import { offlineOption } from '../options.js';

export interface ConvertCliOptions {
  gpt2?: string;
  normalizePrefix?: boolean;
  overwrite?: boolean;
  offline?: boolean;
  format?: 'text' | 'json';
}

export interface ConvertIO {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
}

function describe(r: ConvertResult): string {
  const m = r.config.mapper;
  const mapper =
    m.kind === 'mlp'
      ? `MLP mapper ${m.sizes.join(' -> ')}`
      : `Transformer mapper (${m.num_layers} layers, ${m.num_heads} heads, clip_length ${m.clip_length})`;
  const g = r.config.gpt2;
  const gpt2 = `GPT-2 ${g.n_layer} layers x ${g.n_embd} (${g.n_head} heads)${r.gpt2Weights ? '' : ', weights not included'}`;
  return `wrote ${r.outDir}: ${mapper}, prefix_length ${m.prefix_length}, prefix_size ${m.prefix_size}; ${gpt2}; ${r.tensors} tensors\n`;
}

/** The command's action (exported for tests). */
export async function runConvert(
  input: string,
  outDir: string,
  o: ConvertCliOptions,
  io: ConvertIO,
): Promise<ConvertResult> {
  // Checked before the (possibly large) checkpoint is read; convertClipcap refuses it too.
  if (o.overwrite !== true && (await stat(outDir).catch(() => null)) !== null)
    throw new UserError(
      `${outDir} already exists; pass --overwrite to replace it, or choose a new output directory`,
    );
  const r = await convertClipcap(input, outDir, {
    gpt2: o.gpt2,
    normalizePrefix: o.normalizePrefix,
    overwrite: o.overwrite,
    resolveHub: (repo, file) => hubFile({ repo, file, offline: o.offline }),
  });
  if (o.format === 'json')
    io.stdout(
      `${JSON.stringify({ out: r.outDir, ...r.config, gpt2_weights: r.gpt2Weights, tensors: r.tensors })}\n`,
    );
  else io.stdout(describe(r));
  return r;
}

export function register(program: Command): void {
  program
    .command('convert')
    .description(
      "convert an official ClipCap checkpoint (.pt) into clipcap's checkpoint directory (config.json + model.safetensors)",
    )
    .argument(
      '<input>',
      'official checkpoint: torch.save(model.state_dict()) .pt (or .safetensors with the same names)',
    )
    .argument('<out_dir>', 'output directory (must not exist unless --overwrite; written atomically)')
    .option(
      '--gpt2 <DIR|HUB_ID>',
      "GPT-2 config.json source, needed when GPT-2's width is not a standard size",
    )
    .option('--normalize-prefix', 'record that the model was trained with --normalize_prefix')
    .option('--overwrite', 'replace an existing output directory')
    .addOption(offlineOption())
    .addOption(new Option('--format <format>', 'output format').choices(['text', 'json']).default('text'))
    .action(async (input: string, outDir: string, o: ConvertCliOptions) => {
      await runConvert(input, outDir, o, {
        stdout: (s) => process.stdout.write(s),
        stderr: (s) => process.stderr.write(s),
      });
    });
}
