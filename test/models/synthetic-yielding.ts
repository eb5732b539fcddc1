/**
 * The synthetic full-size weights of src/models/synthetic.ts built tensor by tensor with a turn of the event
 * loop in between: GPT-2 small alone is 124M values, seconds of synchronous work on a loaded CI machine, and a
 * worker whose loop stays blocked past vitest's 60 s RPC timeout fails the run. Same names, shapes and values
 * (syntheticValues is the rule; test/models/synthetic.test.ts compares them with the one-shot builders, and the
 * full-size tests with the goldens).
 */
import { CLIP_VIT_B32_VISION, GPT2_SMALL } from '../../src/config/models.js';
import type { ClipVisionConfig, Gpt2Config, MapperConfig } from '../../src/config/models.js';
import { mapperWeightSpec } from '../../src/models/mapper.js';
import { FULLSIZE_MLP_MAPPER, syntheticValues } from '../../src/models/synthetic.js';
import { clipVisionKeySpec } from '../../src/weights/families/clip.js';
import type { KeySpec } from '../../src/weights/families/common.js';
import { gpt2KeySpec } from '../../src/weights/families/gpt2.js';
import type { StateDict } from '../../src/weights/host.js';
import { yieldEvery } from '../yield.js';

export async function syntheticStateDictYielding(spec: KeySpec): Promise<StateDict> {
  const slice = yieldEvery();
  const sd: StateDict = new Map();
  for (const [name, shape] of spec) {
    await slice();
    const n = shape.reduce((a, d) => a * d, 1);
    sd.set(name, { dtype: 'f32', shape: [...shape], data: syntheticValues(name, n) });
  }
  return sd;
}

export async function syntheticGpt2Yielding(
  config: Gpt2Config = GPT2_SMALL,
): Promise<{ config: Gpt2Config; weights: StateDict }> {
  return { config, weights: await syntheticStateDictYielding(gpt2KeySpec(config)) };
}

export async function syntheticClipVisionYielding(
  config: ClipVisionConfig = CLIP_VIT_B32_VISION,
): Promise<{ config: ClipVisionConfig; weights: StateDict }> {
  return { config, weights: await syntheticStateDictYielding(clipVisionKeySpec(config)) };
}

export async function syntheticMapperYielding(
  config: MapperConfig = FULLSIZE_MLP_MAPPER,
  width = GPT2_SMALL.n_embd,
): Promise<{ config: MapperConfig; weights: StateDict }> {
  return { config, weights: await syntheticStateDictYielding(mapperWeightSpec(config, width)) };
}
