/**
 * OpenAI's ResNet CLIP tower (ModifiedResNet) against test/fixtures/clip_rn_tiny/ (see its README section):
 * a tiny RN CLIP made with openai/CLIP's own classes (width 8, layers 1,1,2,1, 288 px, 24-d output), as a
 * traced TorchScript archive with OpenAI's dtypes and as a plain state dict, and goldens computed in float64
 * on the fp16-stored weights: the 12 photos preprocessed at 288, the stem and stage outputs of photo 0 and the
 * image embeddings of all 12.
 *
 * Tolerance 1e-4 relative to each tensor's scale (our float32 against a float64 reference); every worst
 * difference is logged. The folded-BatchNorm path (what clipcap runs) and the unfolded one (BatchNorm as its
 * own ops, PyTorch's order) are both compared with the goldens and with each other.
 */
import { readdir } from 'node:fs/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/engine/backend.js';
import { availableBackends } from '../../src/engine/index.js';
import type { Tensor } from '../../src/engine/tensor.js';
import { preprocessImage } from '../../src/image/index.js';
import { ClipResNetVisionModel } from '../../src/models/clip-resnet.js';
import type { ClipResNetConfig } from '../../src/config/models.js';
import { loadOpenAIClip } from '../../src/weights/families/openai-clip.js';
import type { StateDict } from '../../src/weights/host.js';
import { expectClose, f32, fixture, get, readAll, readJson } from './helpers.js';
import { normalizeCrops } from './pixels.js';

const DIR = 'clip_rn_tiny';
const S = 288;

interface RnGoldensJson {
  config: {
    embed_dim: number;
    image_resolution: number;
    vision_layers: number[];
    vision_width: number;
  };
  images: string[];
}

/** (1, C, H, W) golden -> (1, H, W, C), our layout. */
function nchwToNhwc(x: Float32Array, shape: readonly number[]): Float32Array {
  const [n, c, h, w] = shape;
  const out = new Float32Array(x.length);
  for (let i = 0; i < n; i++)
    for (let ch = 0; ch < c; ch++)
      for (let p = 0; p < h * w; p++) out[(i * h * w + p) * c + ch] = x[(i * c + ch) * h * w + p];
  return out;
}

let goldens: StateDict;
let meta: RnGoldensJson;
let archive: { config: ClipResNetConfig; weights: StateDict };
let pixels: Float32Array;

beforeAll(async () => {
  goldens = await readAll(fixture(DIR, 'rn_goldens.safetensors'));
  meta = await readJson<RnGoldensJson>(fixture(DIR, 'rn_goldens.json'));
  const a = await loadOpenAIClip(fixture(DIR, 'clip_rn_tiny.pt'));
  if (a.kind !== 'resnet') throw new Error('clip_rn_tiny.pt was not read as a ResNet CLIP');
  archive = a;
  pixels = normalizeCrops(get(goldens, 'preprocessed_uint8').data as Uint8Array, 12, S);
});

describe('clip_rn_tiny files', () => {
  it('the TorchScript archive: architecture inferred from the keys as build_model does', () => {
    const c = meta.config;
    expect(archive.config).toEqual({
      layers: c.vision_layers,
      width: c.vision_width,
      image_size: c.image_resolution,
      heads: (c.vision_width * 32) / 64,
      output_dim: c.embed_dim,
      bn_eps: 1e-5,
    });
    // fp16 conv weights and fp32 BatchNorm all arrive as f32; counters are dropped, the text tower unread
    const names = [...archive.weights.keys()];
    expect(names.every((k) => k.startsWith('visual.') && !k.endsWith('num_batches_tracked'))).toBe(true);
    expect(archive.weights.get('visual.layer1.0.conv2.weight')?.data).toBeInstanceOf(Float32Array);
  });

  it('the plain state dict gives the same config and identical weights', async () => {
    const plain = await loadOpenAIClip(fixture(DIR, 'clip_rn_tiny_state.pt'));
    expect(plain.kind).toBe('resnet');
    expect(plain.config).toEqual(archive.config);
    expect([...plain.weights.keys()]).toEqual([...archive.weights.keys()]);
    for (const [k, t] of archive.weights) expect(plain.weights.get(k)?.data, k).toEqual(t.data);
  });

  it('our preprocessing of the 12 photos at 288 equals preprocessed_uint8 byte for byte', async () => {
    const files = (await readdir(fixture('images'))).filter((f) => f.endsWith('.jpg')).sort();
    expect(files).toEqual(meta.images);
    const golden = get(goldens, 'preprocessed_uint8').data as Uint8Array;
    const per = S * S * 3;
    for (const [i, f] of files.entries()) {
      const { uint8 } = await preprocessImage(fixture('images', f), { size: S });
      expect(Buffer.from(uint8).equals(Buffer.from(golden.subarray(i * per, (i + 1) * per))), f).toBe(true);
    }
  });
});

// The reference backend runs plain float64 loops (~80 M multiply-adds per photo here): it gets the first two
// photos, the native backend all 12. Stage outputs are compared for photo 0 of the same batched forward.
describe.each(availableBackends().map((b) => [b.name, b] as const))(
  'clip_rn_tiny on %s',
  (name, be: Backend) => {
    const n = name === 'reference' ? 2 : 12;
    const embeds = new Map<boolean, Float32Array>();

    for (const fold of [true, false]) {
      const path = fold ? 'folded BatchNorm' : 'unfolded BatchNorm (reference path)';
      it(`${path}: image_embeds of ${n} photos (batched), stem and stage outputs of photo 0`, () => {
        const m = ClipResNetVisionModel.fromWeights(be, archive.config, archive.weights, DIR, {
          foldBatchNorm: fold,
        });
        const r = m.forwardWithTaps(pixels.subarray(0, n * 3 * S * S));
        m.dispose();
        expect(r.embeds.shape).toEqual([n, 24]);
        const e = r.embeds.toArray() as Float32Array;
        embeds.set(fold, e);
        expectClose(
          `${name} ${path} image_embeds[0:${n}]`,
          e,
          f32(goldens, 'image_embeds').subarray(0, n * 24),
        );
        const outs: [string, Tensor][] = [
          ['stem_0', r.stem],
          ...r.layers.map((t, i): [string, Tensor] => [`layer${i + 1}_0`, t]),
        ];
        expect(outs.length).toBe(5);
        for (const [key, t] of outs) {
          const g = get(goldens, key);
          const [, c, h, w] = g.shape;
          expect(t.shape, key).toEqual([n, h, w, c]);
          const first = (t.toArray() as Float32Array).subarray(0, h * w * c);
          expectClose(`${name} ${path} ${key}`, first, nchwToNhwc(g.data as Float32Array, g.shape));
          be.free(t);
        }
        be.free(r.embeds);
      });
    }

    it('folded and unfolded paths agree (the difference folding BatchNorm into the convolutions makes)', () => {
      const a = embeds.get(true);
      const b = embeds.get(false);
      if (!a || !b) throw new Error('the two paths did not both run');
      expectClose(`${name} folded vs unfolded image_embeds`, a, b, 1e-5);
    });
  },
);
