/**
 * Run clipcap subcommands in-process with buffered output, mapping errors to exit codes as src/cli/main.ts
 * does (UserError -> 1 with one line, UsageError / commander usage errors -> 2).
 */
import { Command, CommanderError } from 'commander';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { register as registerCaption, type CliContext, type CliIO } from '../../src/cli/commands/caption.js';
import { register as registerDemo } from '../../src/cli/commands/demo.js';
import { register as registerExtract } from '../../src/cli/commands/extract.js';
import { register as registerMerge } from '../../src/cli/commands/merge.js';
import { register as registerEval } from '../../src/cli/commands/eval.js';
import { UsageError, UserError } from '../../src/util/errors.js';
import { startHub, type HubServer } from './hub-server.js';

export const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
export const fixture = (...p: string[]): string => path.join(FIX, ...p);

export interface CliRun {
  code: number;
  out: string;
  err: string;
}

export async function cli(args: string[]): Promise<CliRun> {
  const run: CliRun = { code: 0, out: '', err: '' };
  const io: CliIO = {
    stdout: (s) => void (run.out += s),
    stderr: (s) => void (run.err += s),
    progress: false,
  };
  const ctx: CliContext = { io: () => io, exit: (c) => void (run.code = c) };
  const program = new Command()
    .name('clipcap')
    .exitOverride()
    .configureOutput({ writeErr: (s) => void (run.err += s), writeOut: (s) => void (run.out += s) });
  registerCaption(program, ctx);
  registerExtract(program, ctx);
  registerMerge(program, ctx);
  registerDemo(program, ctx);
  registerEval(program, ctx);
  try {
    await program.parseAsync(args, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) run.code = e.exitCode === 0 ? 0 : 2;
    else if (e instanceof UsageError) {
      run.err += `clipcap: ${e.message}\n`;
      run.code = 2;
    } else if (e instanceof UserError) {
      run.err += `clipcap: ${e.message}\n`;
      run.code = 1;
    } else throw e;
  }
  return run;
}

/** The published repos, served from the tiny fixtures. */
export function fixtureRepos(): Record<string, Record<string, string>> {
  return {
    'akhaliq/CLIP-prefix-captioning-COCO-weights': { 'coco_weights.pt': fixture('clipcap_mlp_tiny.pt') },
    'akhaliq/CLIP-prefix-captioning-conceptual-weights': {
      'conceptual_weights.pt': fixture('clipcap_transformer_tiny.pt'),
    },
    'openai/clip-vit-base-patch32': {
      'config.json': fixture('clip_tiny', 'config.json'),
      'model.safetensors': fixture('clip_tiny', 'model.safetensors'),
    },
    'openai-community/gpt2': {
      'config.json': fixture('gpt2_tiny', 'config.json'),
      'model.safetensors': fixture('gpt2_tiny', 'model.safetensors'),
    },
  };
}

/** A hub server plus a fresh cache, installed in the environment (HF_ENDPOINT, HF_HUB_CACHE). */
export async function withHub(): Promise<{
  hub: HubServer;
  cache: string;
  tmp: string;
  restore(): Promise<void>;
}> {
  const saved = { ...process.env };
  const hub = await startHub(fixtureRepos());
  const tmp = mkdtempSync(path.join(tmpdir(), 'clipcap-cli-'));
  const cache = path.join(tmp, 'hf-cache');
  process.env.HF_ENDPOINT = hub.endpoint;
  process.env.HF_HUB_CACHE = cache;
  delete process.env.HF_HUB_OFFLINE;
  delete process.env.HF_TOKEN;
  return {
    hub,
    cache,
    tmp,
    restore: async () => {
      await hub.close();
      for (const k of ['HF_ENDPOINT', 'HF_HUB_CACHE', 'HF_HUB_OFFLINE', 'HF_TOKEN']) {
        if (saved[k] === undefined) delete process.env[k];
        else process.env[k] = saved[k];
      }
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}
