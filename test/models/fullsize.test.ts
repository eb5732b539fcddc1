/**
 * Full-size parity (GPT-2 small, CLIP ViT-B/32, the ClipCap MLP mapper) with weights rebuilt by the rule of
 * fullsize_goldens.json, against float64 references. Native backend only: the reference backend would take
 * minutes at these sizes.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { availableBackends, nativeLoadError } from '../../src/engine/index.js';
import type { Backend } from '../../src/engine/backend.js';
import { ClipVisionModel } from '../../src/models/clip.js';
import { Gpt2Model } from '../../src/models/gpt2.js';
import { createMapper, type Mapper } from '../../src/models/mapper.js';
import type { StateDict } from '../../src/weights/host.js';
import { expectClose, expectLogits, f32, fixture, get, i32, loadGoldens, readAll } from './helpers.js';
import { normalizeCrops } from './pixels.js';
import {
  syntheticClipVisionYielding,
  syntheticGpt2Yielding,
  syntheticMapperYielding,
} from './synthetic-yielding.js';
import { yieldToLoop } from '../yield.js';

const native = availableBackends().filter((b) => b.name !== 'reference');

describe.each(native.map((b) => [b.name, b] as const))('full size on %s', (_n, backend: Backend) => {
  let fg: StateDict;
  let gpt2: Gpt2Model;
  let mapper: Mapper;
  beforeAll(async () => {
    fg = await readAll(fixture('fullsize_goldens.safetensors'));
    // Yield between the heavy synchronous steps (see test/yield.ts).
    const g = await syntheticGpt2Yielding();
    gpt2 = Gpt2Model.fromWeights(backend, g.config, g.weights, 'synthetic GPT-2 small');
    await yieldToLoop();
    const m = await syntheticMapperYielding();
    mapper = createMapper(backend, m.config, m.weights, gpt2.width, 'synthetic MLP mapper');
  }, 120_000);
  afterAll(() => {
    gpt2?.dispose();
    mapper?.dispose();
  });

  it('GPT-2 small logits', async () => {
    const ids = get(fg, 'gpt2.input_ids');
    const { logits } = gpt2.forward({ ids: backend.upload(ids.data as Int32Array, ids.shape) });
    expectLogits(
      `${backend.name} full-size gpt2.logits`,
      (await logits!.read()) as Float32Array,
      50257,
      fg,
      'gpt2.logits',
    );
  });

  it('CLIP ViT-B/32 image embeddings of the two photos', async () => {
    const g = await loadGoldens();
    const v = await syntheticClipVisionYielding();
    await yieldToLoop();
    const clip = ClipVisionModel.fromWeights(backend, v.config, v.weights, 'synthetic CLIP ViT-B/32');
    // clip.images lists indices into the sorted images: the golden crops of the tiny fixtures cover them.
    const which = [...i32(fg, 'clip.images')];
    const crops = get(g, 'clip.preprocessed_uint8');
    const px = crops.data as Uint8Array;
    const per = 224 * 224 * 3;
    const sel = new Uint8Array(which.length * per);
    which.forEach((k, i) => sel.set(px.subarray(k * per, (k + 1) * per), i * per));
    const e = clip.encodeImages(normalizeCrops(sel, which.length, 224));
    expect(e.shape).toEqual([2, 512]);
    expectClose(`${backend.name} full-size clip.image_embeds`, await e.read(), f32(fg, 'clip.image_embeds'));
    clip.dispose();
  }, 60_000);

  it('MLP mapper prefix embeddings and ten greedy tokens from each prefix (KV cache)', async () => {
    const prefix = backend.upload(f32(fg, 'clip.image_embeds'), [2, 512]);
    const pre = mapper.forward(prefix);
    expectClose(
      `${backend.name} full-size clipcap.prefix_embeds`,
      await pre.read(),
      f32(fg, 'clipcap.prefix_embeds'),
    );
    const cache = gpt2.createCache(2, 20);
    let logits = gpt2.step(pre, cache);
    const tokens: number[][] = [[], []];
    for (let s = 0; s < 10; s++) {
      await yieldToLoop();
      const l = (await logits.read()) as Float32Array;
      const next = [0, 1].map((r) => {
        let best = 0;
        for (let j = 1; j < 50257; j++) if (l[r * 50257 + j] > l[r * 50257 + best]) best = j;
        return best;
      });
      next.forEach((t, r) => tokens[r].push(t));
      if (s < 9) logits = gpt2.step(gpt2.embed(backend.upload(Int32Array.from(next), [2, 1])), cache);
    }
    cache.dispose();
    const ref = [...i32(fg, 'clipcap.greedy10')];
    console.log(`${backend.name} full-size greedy10: ${JSON.stringify(tokens)}`);
    expect(tokens.flat()).toEqual(ref);
  });
});

if (native.length === 0) {
  describe('full size', () => {
    it('needs the native backend (reported, not skipped)', () => {
      const why = nativeLoadError();
      console.log(`full-size parity not run: the native backend does not load (${why})`);
      expect(why).not.toBeNull();
    });
  });
}
