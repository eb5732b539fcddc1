/**
 * Full size (GPT-2 small + the 512 -> 3840 -> 7680 MLP mapper, weights by the fixture rule): the greedy
 * decoder, called through the library API with the two golden CLIP embeddings as inputs, must give the ten
 * reference tokens of `clipcap.greedy10` for each (stop token off, 10 tokens). Runs on the native backend when
 * it loads, else on the reference backend (slower).
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { availableBackends } from '../../src/engine/index.js';
import { ClipCapModel } from '../../src/models/clipcap.js';
import { GPT2_SMALL } from '../../src/config/models.js';
import { ClipCap } from '../../src/pipeline/caption.js';
import { captionerParts } from '../../src/pipeline/load.js';
import type { CaptionSuccess } from '../../src/pipeline/types.js';
import { loadSafetensors } from '../../src/weights/safetensors.js';
import { syntheticGpt2Yielding, syntheticMapperYielding } from '../models/synthetic-yielding.js';
import { yieldToLoop } from '../yield.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));

describe('full-size greedy decoding', () => {
  const backends = availableBackends();
  const backend = backends.find((b) => b.name === 'native') ?? backends[0];

  it(`reproduces clipcap.greedy10 through ClipCap.caption on ${backend.name}`, async () => {
    const f = await loadSafetensors(path.join(FIX, 'fullsize_goldens.safetensors'));
    const embeds = (await f.tensor('clip.image_embeds')).data as Float32Array; // (2, 512)
    const greedy10 = (await f.tensor('clipcap.greedy10')).data as Int32Array; // (2, 10)
    await f.close();
    // Yield between the heavy synchronous steps (see test/yield.ts).
    const g = await syntheticGpt2Yielding(GPT2_SMALL);
    const m = await syntheticMapperYielding();
    await yieldToLoop();
    const model = ClipCapModel.create(backend, { mapper: m.config, mapperWeights: m.weights, gpt2: g });
    await yieldToLoop();
    const captioner = new ClipCap(
      await captionerParts(model, { description: 'synthetic full-size ClipCap' }),
    );
    try {
      const res = await captioner.caption(
        [0, 1].map((i) => ({ embedding: embeds.subarray(i * 512, (i + 1) * 512) })),
        { method: 'greedy', maxTokens: 10, stop: 'none' },
      );
      const tokens = res.map((r) => (r as CaptionSuccess).tokens);
      console.log(`${backend.name} full-size greedy10 via ClipCap.caption: ${JSON.stringify(tokens)}`);
      expect(tokens.flat()).toEqual([...greedy10]);
    } finally {
      captioner.dispose();
    }
  }, 600_000);
});
