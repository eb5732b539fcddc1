/**
 * Models that ship with clipcap, named `bundled:NAME` wherever a CLIP or GPT-2 is taken (`--clip`, `--gpt2`,
 * and the sources a checkpoint records), so that a checkpoint trained on them loads with no other flag:
 * - `bundled:demo-clip`: the demo's CLIP ViT image tower, weights built by rule (bundled-demo-clip.ts);
 * - `bundled:demo-gpt2`: the demo's GPT-2 (architecture and initial weights, with its own small byte-level BPE
 *   vocabulary as vocab.json + merges.txt), a Hugging Face GPT-2 directory under assets/models/.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from '../util/errors.js';
import { demoClipWeights, DEMO_CLIP_CONFIG } from './bundled-demo-clip.js';
import type { StateDict } from './host.js';

export const BUNDLED_PREFIX = 'bundled:';

const CLIPS: Record<string, () => { config: Record<string, unknown>; weights: StateDict }> = {
  'demo-clip': () => {
    const { config, weights } = demoClipWeights();
    return { config: { ...config } as Record<string, unknown>, weights };
  },
};
const GPT2S = ['demo-gpt2'] as const;

export function isBundled(spec: string): boolean {
  return spec.startsWith(BUNDLED_PREFIX);
}

function names(): string {
  return [...Object.keys(CLIPS), ...GPT2S].map((n) => BUNDLED_PREFIX + n).join(', ');
}

/** A bundled CLIP image tower's config.json (as an object) and weights. */
export function bundledClip(spec: string): { config: Record<string, unknown>; weights: StateDict } {
  const build = CLIPS[spec.slice(BUNDLED_PREFIX.length)];
  if (!build)
    throw new UserError(`CLIP ${spec}: no such bundled model (clipcap bundles ${names()}); check the name`);
  return build();
}

/** The width of a bundled CLIP's embeddings, without building it. */
export function bundledClipDim(spec: string): number | undefined {
  return spec === `${BUNDLED_PREFIX}demo-clip` ? DEMO_CLIP_CONFIG.projection_dim : undefined;
}

/** assets/models, found by walking up from this file (src/weights or dist/src/weights). */
export function bundledModelsDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = path.join(dir, 'assets', 'models');
    if (existsSync(candidate)) return candidate;
    dir = path.dirname(dir);
  }
  throw new UserError(
    'the bundled models (assets/models) are missing from this installation; reinstall clipcap',
  );
}

/** A bundled GPT-2's directory (config.json, model.safetensors, vocab.json, merges.txt). */
export function bundledGpt2Dir(spec: string): string {
  const name = spec.slice(BUNDLED_PREFIX.length);
  if (!(GPT2S as readonly string[]).includes(name))
    throw new UserError(`GPT-2 ${spec}: no such bundled model (clipcap bundles ${names()}); check the name`);
  const dir = path.join(bundledModelsDir(), name);
  if (!existsSync(path.join(dir, 'config.json')))
    throw new UserError(`GPT-2 ${spec}: ${dir} is missing from this installation; reinstall clipcap`);
  return dir;
}
