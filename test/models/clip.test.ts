import { describe, it, expect, beforeAll } from 'vitest';
import { availableBackends } from '../../src/engine/index.js';
import type { Backend } from '../../src/engine/backend.js';
import { ClipTextModel, ClipVisionModel } from '../../src/models/clip.js';
import type { StateDict } from '../../src/weights/host.js';
import { expectClose, f32, fixture, get, i32, loadGoldens } from './helpers.js';
import { normalizeCrops } from './pixels.js';
import { tinyClip } from './loaders.js';
import { preprocessImage } from '../../src/image/index.js';
import { readdir } from 'node:fs/promises';

describe.each(availableBackends().map((b) => [b.name, b] as const))(
  'CLIP tiny on %s',
  (_n, backend: Backend) => {
    let g: StateDict;
    let vision: ClipVisionModel;
    let text: ClipTextModel;
    beforeAll(async () => {
      g = await loadGoldens();
      const m = await tinyClip();
      vision = ClipVisionModel.fromWeights(backend, m.vision.config, m.vision.weights, 'clip_tiny');
      text = ClipTextModel.fromWeights(backend, m.text.config, m.text.weights, 'clip_tiny');
    });

    it('vision last hidden state and embeddings of clip.pixel_values_0', async () => {
      const r = vision.forward(f32(g, 'clip.pixel_values_0'));
      expect(r.lastHidden.shape).toEqual([2, 50, 32]);
      expectClose(
        `${backend.name} clip.vision_last_hidden_0`,
        await r.lastHidden.read(),
        f32(g, 'clip.vision_last_hidden_0'),
      );
      expectClose(
        `${backend.name} clip.image_embeds[0:2] from pixel_values_0`,
        await r.embeds.read(),
        f32(g, 'clip.image_embeds').subarray(0, 2 * 24),
      );
    });

    it('the golden crops normalized by CLIP mean/std agree with clip.pixel_values_0', () => {
      const px = normalizeCrops(get(g, 'clip.preprocessed_uint8').data as Uint8Array, 2, 224);
      expectClose('normalized crops vs clip.pixel_values_0', px, f32(g, 'clip.pixel_values_0'), 1e-6);
    });

    it('image embeddings of all 12 golden crops match clip.image_embeds (batched)', async () => {
      const px = normalizeCrops(get(g, 'clip.preprocessed_uint8').data as Uint8Array, 12, 224);
      const e = vision.encodeImages(px);
      expect(e.shape).toEqual([12, 24]);
      expectClose(
        `${backend.name} clip.image_embeds (12 images)`,
        await e.read(),
        f32(g, 'clip.image_embeds'),
      );
    });

    it('image embeddings from our own preprocessing of images/ match clip.image_embeds', async () => {
      const files = (await readdir(fixture('images'))).filter((f) => f.endsWith('.jpg')).sort();
      expect(files.length).toBe(12);
      const px = new Float32Array(12 * 3 * 224 * 224);
      for (const [i, f] of files.entries())
        px.set((await preprocessImage(fixture('images', f))).pixelValues, i * 3 * 224 * 224);
      const e = vision.encodeImages(px);
      expectClose(
        `${backend.name} clip.image_embeds from images/ (own preprocessing)`,
        await e.read(),
        f32(g, 'clip.image_embeds'),
      );
    });

    it('stateDict() gives back every checkpoint key and value, q/k/v split from the fused qkv_proj', async () => {
      const m = await tinyClip();
      for (const [model, weights] of [
        [vision, m.vision.weights],
        [text, m.text.weights],
      ] as const) {
        // the separate q/k/v tensors are not held next to the fused ones
        const held = model.parameters().map((p) => p.name);
        expect(held.some((n) => /\.[qkv]_proj\./.test(n))).toBe(false);
        expect(held.filter((n) => n.includes('.qkv_proj.')).length).toBeGreaterThan(0);
        const sd = await model.stateDict();
        const prefix = model === vision ? 'vision_model.' : 'text_model.';
        const expected = [...weights.keys()].filter(
          (k) => k.startsWith(prefix) || /_projection\.weight$/.test(k),
        );
        expect([...sd.keys()].sort()).toEqual(expected.sort());
        for (const [k, t] of sd) {
          const w = weights.get(k);
          expect(t.shape, k).toEqual(w?.shape);
          // bit-exact (toEqual is slow on the 1.6M-value token embedding)
          const [a, e] = [t.data, w?.data ?? new Float32Array()];
          expect(a.length, k).toBe(e.length);
          let mismatches = 0;
          for (let i = 0; i < a.length; i++) if (!Object.is(a[i], e[i])) mismatches++;
          expect(mismatches, k).toBe(0);
        }
      }
    });

    it('text embeddings match clip.text_embeds', async () => {
      const ids = i32(g, 'clip.text_input_ids');
      const shape = get(g, 'clip.text_input_ids').shape as [number, number];
      const e = text.encodeText(ids, shape, i32(g, 'clip.text_attention_mask'));
      expectClose(`${backend.name} clip.text_embeds`, await e.read(), f32(g, 'clip.text_embeds'));
    });
  },
);
