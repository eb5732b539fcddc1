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

import { loadTorchCheckpoint } from '../../src/weights/torch.js';
import type { MapperConfig } from '../../src/models/config.js';

export async function tinyClipcap(kind: 'mlp' | 'transformer'): Promise<{
  mapper: MapperConfig;
  mapperWeights: StateDict;
  gpt2: { config: Gpt2Config; weights: StateDict };
}> {
  const sd = await loadTorchCheckpoint(fixture(`clipcap_${kind}_tiny.pt`));
  const mapperWeights: StateDict = new Map();
  const gw: StateDict = new Map();
  for (const [k, v] of sd) {
    if (k.startsWith('clip_project.')) mapperWeights.set(k, v);
    else if (k.startsWith('gpt.transformer.')) gw.set(k.slice('gpt.transformer.'.length), v);
    else if (k.startsWith('gpt.')) gw.set(k.slice('gpt.'.length), v);
  }
  const { config } = await tinyGpt2();
  const mapper: MapperConfig =
    kind === 'mlp'
      ? { kind: 'mlp', prefix_size: 24, prefix_length: 10, sizes: [24, 160, 320] }
      : {
          kind: 'transformer',
          prefix_size: 24,
          prefix_length: 10,
          clip_length: 10,
          num_layers: 2,
          num_heads: 8,
        };
  return { mapper, mapperWeights, gpt2: { config, weights: gw } };
}
