/** The tiny fixture models, read through the weights layer's key maps (as the library loads real ones). */
import type { Backend } from '../../src/engine/backend.js';
import { ClipCapModel } from '../../src/models/clipcap.js';
import type { ClipTextConfig, ClipVisionConfig, Gpt2Config } from '../../src/config/models.js';
import type { StateDict } from '../../src/weights/host.js';
import { clipcapCheckpoint, clipWeights, gpt2Weights, type ConfigSource } from '../../src/weights/keymaps.js';
import { loadTorchCheckpoint } from '../../src/weights/torch.js';
import { fixture, readAll, readJson } from './helpers.js';

export async function tinyGpt2(): Promise<{ config: Gpt2Config; weights: StateDict }> {
  const sd = await readAll(fixture('gpt2_tiny', 'model.safetensors'));
  return gpt2Weights(sd, await readJson<ConfigSource>(fixture('gpt2_tiny', 'config.json')), 'gpt2_tiny');
}

export async function tinyClip(): Promise<{
  vision: { config: ClipVisionConfig; weights: StateDict };
  text: { config: ClipTextConfig; weights: StateDict };
}> {
  const sd = await readAll(fixture('clip_tiny', 'model.safetensors'));
  const w = clipWeights(sd, await readJson<ConfigSource>(fixture('clip_tiny', 'config.json')), 'clip_tiny');
  if (!w.vision || !w.text) throw new Error('clip_tiny: expected both towers');
  return { vision: w.vision, text: w.text };
}

/** clipcap_{mlp,transformer}_tiny.pt through clipcapCheckpoint, GPT-2's config from gpt2_tiny/config.json. */
export async function tinyClipcap(backend: Backend, kind: 'mlp' | 'transformer'): Promise<ClipCapModel> {
  const file = `clipcap_${kind}_tiny.pt`;
  const sd = await loadTorchCheckpoint(fixture(file));
  const gpt2Config = await readJson<ConfigSource>(fixture('gpt2_tiny', 'config.json'));
  return ClipCapModel.fromCheckpoint(backend, clipcapCheckpoint(sd, { gpt2Config, what: file }), {
    source: file,
  });
}

/** The GPT-2 weights stored in a tiny ClipCap checkpoint (canonical names). */
export async function tinyClipcapGpt2Weights(kind: 'mlp' | 'transformer'): Promise<StateDict> {
  const file = `clipcap_${kind}_tiny.pt`;
  const gpt2Config = await readJson<ConfigSource>(fixture('gpt2_tiny', 'config.json'));
  const ck = clipcapCheckpoint(await loadTorchCheckpoint(fixture(file)), { gpt2Config, what: file });
  if (!ck.gpt2) throw new Error(`${file}: no GPT-2 weights`);
  return ck.gpt2;
}
