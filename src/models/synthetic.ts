/**
 * Full-size models without shipping weights: every weight is a pure function of (tensor name, element index),
 * the rule of test/fixtures/fullsize_goldens.json, so GPT-2 small, CLIP ViT-B/32 and the ClipCap MLP mapper
 * can be rebuilt anywhere (parity tests at real shapes, benchmarks):
 *
 *   h(x)   = lowbias32 integer hash (Chris Wellons), all arithmetic mod 2^32
 *   seed   = fnv1a32(utf8(name))
 *   u[i]   = h((i * 0x9E3779B9 + seed) mod 2^32) / 2^32            in [0, 1)
 *   w[i]   = float32(center + (2 u[i] - 1) * half_width)
 *   center = 1 for LayerNorm weights, else 0
 *   half_width = 0.1 for LayerNorm weights, 0.02 for biases, 0.2 for 'wte.weight', 0.05 otherwise
 *   exception: tensors whose name ends in 'attn.bias' (GPT-2's c_attn.bias) are all zero
 */
import { clipVisionKeySpec } from '../weights/families/clip.js';
import type { KeySpec } from '../weights/families/common.js';
import { gpt2KeySpec } from '../weights/families/gpt2.js';
import type { StateDict } from '../weights/host.js';
import {
  CLIP_VIT_B32_VISION,
  GPT2_SMALL,
  type ClipVisionConfig,
  type Gpt2Config,
  type MapperConfig,
} from '../config/models.js';
import { mapperWeightSpec } from './mapper.js';

/** Chris Wellons' lowbias32 integer hash. */
export function lowbias32(x: number): number {
  x >>>= 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** 32-bit FNV-1a of the UTF-8 bytes of s. */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(s)) {
    h ^= byte;
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function isLayerNormWeight(name: string): boolean {
  return /ln_|layer_norm|layernorm|layrnorm/.test(name) && name.endsWith('.weight');
}

/** The rule's values of tensor `name` with `count` elements. */
export function syntheticValues(
  name: string,
  count: number,
  opts: { zeroAttnBias?: boolean } = {},
): Float32Array {
  const out = new Float32Array(count);
  if ((opts.zeroAttnBias ?? true) && name.endsWith('attn.bias')) return out;
  const ln = isLayerNormWeight(name);
  const center = ln ? 1 : 0;
  const half = ln ? 0.1 : name.endsWith('.bias') ? 0.02 : name.endsWith('wte.weight') ? 0.2 : 0.05;
  const seed = fnv1a32(name);
  for (let i = 0; i < count; i++) {
    const u = lowbias32((Math.imul(i, 0x9e3779b9) + seed) >>> 0) / 4294967296;
    out[i] = center + (2 * u - 1) * half;
  }
  return out;
}

/** A state dict of every tensor in `spec`, built by the rule. */
export function syntheticStateDict(spec: KeySpec): StateDict {
  const sd: StateDict = new Map();
  for (const [name, shape] of spec) {
    const n = shape.reduce((a, d) => a * d, 1);
    sd.set(name, { dtype: 'f32', shape: [...shape], data: syntheticValues(name, n) });
  }
  return sd;
}

/** GPT-2 (default: small, 124M) with hub names (no `transformer.` prefix). */
export function syntheticGpt2(config: Gpt2Config = GPT2_SMALL): { config: Gpt2Config; weights: StateDict } {
  return { config, weights: syntheticStateDict(gpt2KeySpec(config)) };
}

/** CLIP vision tower + visual_projection (default: ViT-B/32), HF names. */
export function syntheticClipVision(config: ClipVisionConfig = CLIP_VIT_B32_VISION): {
  config: ClipVisionConfig;
  weights: StateDict;
} {
  return { config, weights: syntheticStateDict(clipVisionKeySpec(config)) };
}

/** The official MLP mapper for GPT-2 small and ViT-B/32: 512 -> 3840 -> 7680 (K = 10, E = 768). */
export const FULLSIZE_MLP_MAPPER: MapperConfig = {
  kind: 'mlp',
  prefix_size: 512,
  prefix_length: 10,
  sizes: [512, 3840, 7680],
};

/** Mapper weights (clip_project.*) by the rule; `width` is GPT-2's E. */
export function syntheticMapper(
  config: MapperConfig = FULLSIZE_MLP_MAPPER,
  width = GPT2_SMALL.n_embd,
): { config: MapperConfig; weights: StateDict } {
  return { config, weights: syntheticStateDict(mapperWeightSpec(config, width)) };
}
