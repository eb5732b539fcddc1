// TEMPORARY: stands in for src/weights key maps until they land (deleted afterwards).
import type { StateDict } from '../../src/weights/host.js';
import type { Gpt2Config } from '../../src/models/config.js';
import { fixture, readAll, readJson } from './helpers.js';

export async function tinyGpt2(): Promise<{ config: Gpt2Config; weights: StateDict }> {
  const sd = await readAll(fixture('gpt2_tiny', 'model.safetensors'));
  const weights: StateDict = new Map();
  for (const [k, v] of sd) weights.set(k.replace(/^transformer\./, ''), v);
  const config = await readJson<Gpt2Config>(fixture('gpt2_tiny', 'config.json'));
  return { config, weights };
}

import type { ClipTextConfig, ClipVisionConfig } from '../../src/models/config.js';

interface HfClipConfig {
  projection_dim: number;
  vision_config: Omit<ClipVisionConfig, 'projection_dim'>;
  text_config: Omit<ClipTextConfig, 'projection_dim'>;
}

export async function tinyClip(): Promise<{
  vision: { config: ClipVisionConfig; weights: StateDict };
  text: { config: ClipTextConfig; weights: StateDict };
}> {
  const sd = await readAll(fixture('clip_tiny', 'model.safetensors'));
  const cfg = await readJson<HfClipConfig>(fixture('clip_tiny', 'config.json'));
  const pick = (f: (k: string) => boolean): StateDict => new Map([...sd].filter(([k]) => f(k)));
  return {
    vision: {
      config: { ...cfg.vision_config, projection_dim: cfg.projection_dim },
      weights: pick((k) => k.startsWith('vision_model.') || k === 'visual_projection.weight'),
    },
    text: {
      config: { ...cfg.text_config, projection_dim: cfg.projection_dim },
      weights: pick((k) => k.startsWith('text_model.') || k === 'text_projection.weight'),
    },
  };
}
