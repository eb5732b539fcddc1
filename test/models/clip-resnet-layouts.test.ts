/**
 * OpenAI's CLIP zoo layouts without their weights: state dicts with each published model's key structure,
 * written out here the way openai/CLIP clip/model.py names its modules (independently of the loader's own key
 * spec), checked to give build_model's architecture.
 * - ResNets (RN50, RN101, RN50x4, RN50x16, RN50x64): only shapes are needed, so the real sizes are used.
 * - ViTs (ViT-B/16, ViT-L/14, ViT-L/14@336px): real patch sizes and grids, a narrow width (64, one head) to
 *   stay small; their Hugging Face versions (HF names + config.json fields) load to the same config, and they
 *   run one image at their resolution.
 */
import { describe, expect, it } from 'vitest';
import { getBackend } from '../../src/engine/index.js';
import { ClipVisionModel } from '../../src/models/clip.js';
import {
  inferClipResNetConfig,
  openaiClipResNet,
  openaiClipVision,
} from '../../src/weights/families/openai-clip.js';
import { clipWeights } from '../../src/weights/families/clip.js';
import type { HostTensor, StateDict } from '../../src/weights/host.js';

/** ModifiedResNet's parameter names and shapes, as the PyTorch modules would list them. */
function resnetShapes(layers: number[], width: number, resolution: number, embedDim: number) {
  const out = new Map<string, number[]>();
  const conv = (n: string, o: number, i: number, k: number) => out.set(`visual.${n}.weight`, [o, i, k, k]);
  const bn = (n: string, c: number) => {
    for (const p of ['weight', 'bias', 'running_mean', 'running_var']) out.set(`visual.${n}.${p}`, [c]);
    out.set(`visual.${n}.num_batches_tracked`, []);
  };
  conv('conv1', width / 2, 3, 3);
  bn('bn1', width / 2);
  conv('conv2', width / 2, width / 2, 3);
  bn('bn2', width / 2);
  conv('conv3', width, width / 2, 3);
  bn('bn3', width);
  let inplanes = width;
  for (let s = 0; s < 4; s++) {
    const planes = width * 2 ** s;
    for (let b = 0; b < layers[s]; b++) {
      const p = `layer${s + 1}.${b}`;
      conv(`${p}.conv1`, planes, inplanes, 1);
      bn(`${p}.bn1`, planes);
      conv(`${p}.conv2`, planes, planes, 3);
      bn(`${p}.bn2`, planes);
      conv(`${p}.conv3`, planes * 4, planes, 1);
      bn(`${p}.bn3`, planes * 4);
      if ((s > 0 && b === 0) || inplanes !== planes * 4) {
        conv(`${p}.downsample.0`, planes * 4, inplanes, 1);
        bn(`${p}.downsample.1`, planes * 4);
      }
      inplanes = planes * 4;
    }
  }
  const embed = width * 32;
  out.set('visual.attnpool.positional_embedding', [(resolution / 32) ** 2 + 1, embed]);
  for (const n of ['k_proj', 'q_proj', 'v_proj']) {
    out.set(`visual.attnpool.${n}.weight`, [embed, embed]);
    out.set(`visual.attnpool.${n}.bias`, [embed]);
  }
  out.set('visual.attnpool.c_proj.weight', [embedDim, embed]);
  out.set('visual.attnpool.c_proj.bias', [embedDim]);
  // the text tower is in the same file and must be ignored
  out.set('text_projection', [512, embedDim]);
  return out;
}

// name, layers, width, resolution, embed_dim (openai/CLIP's published models)
const RESNETS: [string, number[], number, number, number][] = [
  ['RN50', [3, 4, 6, 3], 64, 224, 1024],
  ['RN101', [3, 4, 23, 3], 64, 224, 512],
  ['RN50x4', [4, 6, 10, 6], 80, 288, 640],
  ['RN50x16', [6, 8, 18, 8], 96, 384, 768],
  ['RN50x64', [3, 15, 36, 10], 128, 448, 1024],
];

describe('ResNet CLIP layouts: build_model inference', () => {
  it.each(RESNETS)('%s', (_name, layers, width, resolution, embedDim) => {
    const shapes = resnetShapes(layers, width, resolution, embedDim);
    expect(inferClipResNetConfig(shapes, 'x.pt')).toEqual({
      layers,
      width,
      image_size: resolution,
      heads: (width * 32) / 64,
      output_dim: embedDim,
      bn_eps: 1e-5,
    });
  });

  it('a wrong shape or a missing block is named (a small model with real data)', () => {
    const shapes = resnetShapes([1, 1, 1, 1], 8, 64, 16);
    const sd: StateDict = new Map();
    for (const [k, s] of shapes) {
      const n = s.reduce((a, b) => a * b, 1);
      sd.set(k, { dtype: k.endsWith('tracked') ? 'i64' : 'f16', shape: s, data: new Float32Array(n) });
    }
    expect(openaiClipResNet(sd, 'ok.pt').config.layers).toEqual([1, 1, 1, 1]);
    const bad = new Map(sd);
    bad.set('visual.layer2.0.conv2.weight', {
      dtype: 'f16',
      shape: [16, 16, 1, 1],
      data: new Float32Array(256),
    });
    expect(() => openaiClipResNet(bad, 'bad.pt')).toThrow(
      /bad\.pt: wrong shape: visual\.layer2\.0\.conv2\.weight is \[16, 16, 1, 1\], expected \[16, 16, 3, 3\]/,
    );
    const missing = new Map([...sd].filter(([k]) => !k.startsWith('visual.layer3.')));
    expect(() => openaiClipResNet(missing, 'm.pt')).toThrow(/m\.pt: no visual\.layer3\.\* weights/);
    const odd = new Map(sd);
    odd.set('visual.attnpool.positional_embedding', {
      dtype: 'f32',
      shape: [6, 256],
      data: new Float32Array(1536),
    });
    expect(() => openaiClipResNet(odd, 'o.pt')).toThrow(/not a square grid plus one/);
  });
});

/** VisionTransformer's `visual.*` names at width 64 (one head), with a given patch and grid. */
function vitStateDict(patch: number, grid: number, layers: number, embedDim: number): StateDict {
  const W = 64;
  const sd: StateDict = new Map();
  const put = (k: string, shape: number[]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    // small deterministic values: the forward must run, not match anything
    const data = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + k.length) * 0.05);
    sd.set(`visual.${k}`, { dtype: 'f16', shape, data } satisfies HostTensor);
  };
  put('class_embedding', [W]);
  put('positional_embedding', [grid * grid + 1, W]);
  put('proj', [W, embedDim]);
  put('conv1.weight', [W, 3, patch, patch]);
  for (const ln of ['ln_pre', 'ln_post']) {
    put(`${ln}.weight`, [W]);
    put(`${ln}.bias`, [W]);
  }
  for (let i = 0; i < layers; i++) {
    const p = `transformer.resblocks.${i}.`;
    put(`${p}attn.in_proj_weight`, [3 * W, W]);
    put(`${p}attn.in_proj_bias`, [3 * W]);
    put(`${p}attn.out_proj.weight`, [W, W]);
    put(`${p}attn.out_proj.bias`, [W]);
    put(`${p}mlp.c_fc.weight`, [4 * W, W]);
    put(`${p}mlp.c_fc.bias`, [4 * W]);
    put(`${p}mlp.c_proj.weight`, [W, 4 * W]);
    put(`${p}mlp.c_proj.bias`, [W]);
    for (const ln of ['ln_1', 'ln_2']) {
      put(`${p}${ln}.weight`, [W]);
      put(`${p}${ln}.bias`, [W]);
    }
  }
  return sd;
}

describe('ViT CLIP layouts (plain state dicts and their Hugging Face versions): patch, grid and resolution', () => {
  // name, patch, resolution (the published models' values)
  it.each([
    ['ViT-B/16', 16, 224],
    ['ViT-L/14', 14, 224],
    ['ViT-L/14@336px', 14, 336],
  ] as const)('%s', async (name, patch, resolution) => {
    const sd = vitStateDict(patch, resolution / patch, 2, 32);
    const m = { className: '', tensors: sd, classes: new Map<string, string>(), attributes: new Map() };
    const { config, weights } = openaiClipVision(m, name);
    expect(config).toMatchObject({
      patch_size: patch,
      image_size: resolution,
      hidden_size: 64,
      num_attention_heads: 1,
      num_hidden_layers: 2,
      intermediate_size: 256,
      projection_dim: 32,
      hidden_act: 'quick_gelu',
    });
    // the Hugging Face version of the same model (openai/clip-vit-large-patch14-336's config.json fields,
    // at this width): the same names and shapes load, and its image_size must agree with the weights
    const hf = clipWeights(weights, {
      vision_config: {
        hidden_size: 64,
        intermediate_size: 256,
        num_hidden_layers: 2,
        num_attention_heads: 1,
        patch_size: patch,
        image_size: resolution,
        projection_dim: 32,
        hidden_act: 'quick_gelu',
      },
    });
    expect(hf.vision?.config).toEqual(config);
    expect(() =>
      clipWeights(weights, { vision_config: { patch_size: patch, image_size: resolution + patch } }, 'hf'),
    ).toThrow(/hf/);
    const model = ClipVisionModel.fromWeights(getBackend(), config, weights, name);
    const e = model.encodeImages(new Float32Array(3 * resolution * resolution).fill(0.5));
    expect(e.shape).toEqual([1, 32]);
    expect([...(await e.read())].every(Number.isFinite)).toBe(true);
    model.dispose();
  });
});
