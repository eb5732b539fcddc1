/**
 * `bundled:demo-clip`: a CLIP ViT image tower (Hugging Face CLIPVisionModelWithProjection layout, run by the
 * ordinary CLIP code) whose weights are built by rule, not trained, so that the demo world's attributes are
 * recoverable from its embedding: shape, colour, horizontal position and size.
 *
 * Input 48x48 (the demo's 96-pixel pictures, halved by CLIP's preprocessing), 8-pixel patches (6x6 = 36
 * tokens + the class token), width 216, four layers. Per patch, the patch convolution reads each 2x2-pixel
 * sub-block's ink (1 - intensity, summed over channels, and per channel); layer 0's MLP turns ink into a
 * foreground mask (saturating) and the L1 distance of each sub-block's colour to each palette colour; layer 1's
 * MLP makes per-patch counts: palette colours (cells within a small distance), signed edge energies in four
 * directions inside the patch (a shape signature that does not depend on where the shape is), the foreground
 * area and the foreground per third of the picture (left / middle / right, from the position embedding);
 * layer 2's attention averages those counts over every token into the class token (queries and keys are zero,
 * so attention is uniform); layer 3's MLP adds the (piecewise-linear) log of the edge energies and the area, so
 * that shape, a matter of their ratios, is a linear read-out. The embedding (27-d) is the scaled sums and logs.
 *
 * LayerNorm is made (nearly) the identity: every token carries +B and -B in two dimensions (from the position
 * embedding) and a balance dimension keeps each token's sum at zero, so a LayerNorm's mean is 0 and its
 * standard deviation ~B*sqrt(2/W) whatever the features; its gain undoes that factor. ReLU-like units are
 * quick_gelu(k z) / k with a large k.
 */
import type { StateDict } from './host.js';

/** CLIP's normalization (OpenAI's mean and std), which the tower sees its pixels through. */
const MEAN = [0.48145466, 0.4578275, 0.40821073];
const STD = [0.26862954, 0.26130258, 0.27577711];

/** Palette inks (1 - rgb/255) the colour units match: the demo world's colours, in its order. */
export const DEMO_PALETTE_RGB: ReadonlyArray<readonly [number, number, number]> = [
  [215, 35, 35], // red
  [35, 160, 50], // green
  [35, 70, 215], // blue
  [235, 215, 25], // yellow
  [140, 45, 175], // purple
  [245, 120, 25], // orange
];

const IMAGE = 48;
const PATCH = 8;
const GRID = IMAGE / PATCH; // 6
const SUB = 4; // 2x2-pixel sub-blocks per patch side
const NSUB = SUB * SUB; // 16
const NCOL = DEMO_PALETTE_RGB.length; // 6
const W = 216;
const INNER = 608;
const LAYERS = 4;
const HEADS = 4;
const B = 1000;
/** Sharpness of the ReLU-like units. */
const K = 20;
/** Colour match radius (L1 distance of inks over the three channels). */
const TAU = 0.3;

// Residual-stream layout.
const INK = 0; // [16] summed ink per sub-block
const RGB = INK + NSUB; // [16 x 3] ink per sub-block and channel
const COL = RGB + NSUB * 3; // [3] which third of the picture the patch is in
const CPLUS = COL + 3;
const CMINUS = CPLUS + 1;
const BAL = CMINUS + 1;
const FG = BAL + 1; // [16] foreground mask
const DIST = FG + NSUB; // [16 x 6] colour distance
const HIST = DIST + NSUB * NCOL; // [6] palette colour counts
const ORI = HIST + NCOL; // [8] signed edge energies: right, down, down-right, down-left; each + / -
const AREA = ORI + 8; // [1]
const OCC = AREA + 1; // [3] foreground per third
const LOG = OCC + 3; // [9] log of the edge energies and the area (after pooling)
const USED = LOG + 9;
/** Knots of the piecewise-linear log (in pooled-count units) and its offset: log(x + LOG_EPS). */
const LOG_KNOTS = [0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2];
const LOG_EPS = 0.1;

/** The embedding: which residual dimensions, and the scale each is read at. */
const OUTPUT: Array<[number, number]> = [
  ...Array.from({ length: NCOL }, (_, c): [number, number] => [HIST + c, 0.2]),
  ...Array.from({ length: 8 }, (_, d): [number, number] => [ORI + d, 0.2]),
  [AREA, 0.03],
  ...Array.from({ length: 3 }, (_, c): [number, number] => [OCC + c, 0.05]),
  ...Array.from({ length: 9 }, (_, i): [number, number] => [LOG + i, 0.5]),
];
export const DEMO_CLIP_DIM = OUTPUT.length;

export const DEMO_CLIP_CONFIG = {
  architectures: ['CLIPVisionModelWithProjection'],
  model_type: 'clip_vision_model',
  hidden_act: 'quick_gelu',
  hidden_size: W,
  intermediate_size: INNER,
  num_hidden_layers: LAYERS,
  num_attention_heads: HEADS,
  image_size: IMAGE,
  patch_size: PATCH,
  num_channels: 3,
  layer_norm_eps: 1e-5,
  projection_dim: DEMO_CLIP_DIM,
} as const;

function t(shape: number[], data?: Float32Array): { dtype: 'f32'; shape: number[]; data: Float32Array } {
  return { dtype: 'f32', shape, data: data ?? new Float32Array(shape.reduce((a, b) => a * b, 1)) };
}

/** Rows of a (out, in) matrix whose sums must be balanced: BAL row = -(sum of the other rows). */
function balanceRows(m: Float32Array, cols: number): void {
  for (let j = 0; j < cols; j++) {
    let s = 0;
    for (let i = 0; i < W; i++) if (i !== BAL) s += m[i * cols + j];
    m[BAL * cols + j] = -s;
  }
}

function balanceVector(v: Float32Array): void {
  let s = 0;
  for (let i = 0; i < W; i++) if (i !== BAL) s += v[i];
  v[BAL] = -s;
}

/** The tower's weights (Hugging Face names) and config. Pure: the same every call. */
export function demoClipWeights(): { config: typeof DEMO_CLIP_CONFIG; weights: StateDict } {
  if (USED > W) throw new Error(`demo CLIP layout needs ${USED} dims, has ${W}`);
  const sd: StateDict = new Map();
  const sigma = B * Math.sqrt(2 / W); // what every LayerNorm divides by
  const p = 'vision_model.';

  // Patch convolution (W, 3, 8, 8): sub-block inks as -std_c * normalized pixel (their constant part comes
  // from the position embedding).
  const conv = new Float32Array(W * 3 * PATCH * PATCH);
  const at = (o: number, c: number, y: number, x: number): number => ((o * 3 + c) * PATCH + y) * PATCH + x;
  for (let sy = 0; sy < SUB; sy++)
    for (let sx = 0; sx < SUB; sx++) {
      const s = sy * SUB + sx;
      for (let c = 0; c < 3; c++)
        for (let dy = 0; dy < 2; dy++)
          for (let dx = 0; dx < 2; dx++) {
            const y = sy * 2 + dy;
            const x = sx * 2 + dx;
            conv[at(INK + s, c, y, x)] = -STD[c] / 4;
            conv[at(RGB + s * 3 + c, c, y, x)] = -STD[c] / 4;
          }
    }
  balanceRows(conv, 3 * PATCH * PATCH);
  sd.set(`${p}embeddings.patch_embedding.weight`, t([W, 3, PATCH, PATCH], conv));
  sd.set(`${p}embeddings.class_embedding`, t([W]));

  const pos = new Float32Array((GRID * GRID + 1) * W);
  for (let tok = 0; tok <= GRID * GRID; tok++) {
    const v = pos.subarray(tok * W, (tok + 1) * W);
    v[CPLUS] = B;
    v[CMINUS] = -B;
    if (tok > 0) {
      const col = (tok - 1) % GRID;
      v[COL + Math.floor((col * 3) / GRID)] = 1;
      for (let s = 0; s < NSUB; s++) {
        for (let c = 0; c < 3; c++) {
          v[INK + s] += 1 - MEAN[c];
          v[RGB + s * 3 + c] = 1 - MEAN[c];
        }
      }
    }
    balanceVector(v);
  }
  sd.set(`${p}embeddings.position_embedding.weight`, t([GRID * GRID + 1, W], pos));

  const gain = (): Float32Array => new Float32Array(W).fill(sigma);
  sd.set(`${p}pre_layrnorm.weight`, t([W], gain()));
  sd.set(`${p}pre_layrnorm.bias`, t([W]));

  const palette = DEMO_PALETTE_RGB.map((rgb) => rgb.map((v) => 1 - v / 255));
  for (let l = 0; l < LAYERS; l++) {
    const q = `${p}encoder.layers.${l}.`;
    for (const ln of ['layer_norm1', 'layer_norm2']) {
      sd.set(`${q}${ln}.weight`, t([W], gain()));
      sd.set(`${q}${ln}.bias`, t([W]));
    }
    const vW = new Float32Array(W * W);
    const oW = new Float32Array(W * W);
    if (l === 2) {
      // Uniform attention (zero queries and keys); values carry the counts, the output sums them.
      const tokens = GRID * GRID + 1;
      for (let i = HIST; i < LOG; i++) {
        vW[i * W + i] = 1;
        oW[i * W + i] = tokens;
      }
      balanceRows(oW, W);
    }
    for (const [name, m] of [
      ['q_proj', new Float32Array(W * W)],
      ['k_proj', new Float32Array(W * W)],
      ['v_proj', vW],
      ['out_proj', oW],
    ] as const) {
      sd.set(`${q}self_attn.${name}.weight`, t([W, W], m));
      sd.set(`${q}self_attn.${name}.bias`, t([W]));
    }

    const fc1 = new Float32Array(INNER * W);
    const b1 = new Float32Array(INNER);
    const fc2 = new Float32Array(W * INNER);
    let u = 0;
    /** A unit relu(sum_i w_i x_i + b) (as quick_gelu(K z) / K) feeding `out` dims with weights. */
    const unit = (inputs: Array<[number, number]>, bias: number, outs: Array<[number, number]>): void => {
      for (const [i, w] of inputs) fc1[u * W + i] += K * w;
      b1[u] = K * bias;
      for (const [o, w] of outs) fc2[o * INNER + u] += w / K;
      u++;
    };
    if (l === 0) {
      for (let s = 0; s < NSUB; s++) {
        // Foreground: clamp((ink - 0.3) / 0.5, 0, 1).
        unit([[INK + s, 1]], -0.3, [[FG + s, 2]]);
        unit([[INK + s, 1]], -0.8, [[FG + s, -2]]);
        for (let c = 0; c < NCOL; c++)
          for (let ch = 0; ch < 3; ch++) {
            unit([[RGB + s * 3 + ch, 1]], -palette[c][ch], [[DIST + s * NCOL + c, 1]]);
            unit([[RGB + s * 3 + ch, -1]], palette[c][ch], [[DIST + s * NCOL + c, 1]]);
          }
      }
    } else if (l === 1) {
      for (let s = 0; s < NSUB; s++)
        for (let c = 0; c < NCOL; c++) unit([[DIST + s * NCOL + c, -1 / TAU]], 1, [[HIST + c, 1]]);
      const dirs: Array<[number, number]> = [
        [0, 1],
        [1, 0],
        [1, 1],
        [1, -1],
      ];
      dirs.forEach(([dy, dx], d) => {
        for (let y = 0; y < SUB; y++)
          for (let x = 0; x < SUB; x++) {
            const y2 = y + dy;
            const x2 = x + dx;
            if (y2 >= SUB || x2 < 0 || x2 >= SUB) continue;
            const a = FG + y * SUB + x;
            const b = FG + y2 * SUB + x2;
            unit(
              [
                [b, 1],
                [a, -1],
              ],
              0,
              [[ORI + 2 * d, 1]],
            );
            unit(
              [
                [a, 1],
                [b, -1],
              ],
              0,
              [[ORI + 2 * d + 1, 1]],
            );
          }
      });
      const allFg = Array.from({ length: NSUB }, (_, s): [number, number] => [FG + s, 1]);
      unit(allFg, 0, [[AREA, 1]]);
      for (let c = 0; c < 3; c++) unit([...allFg, [COL + c, 20]], -20, [[OCC + c, 1]]);
    } else if (l === 3) {
      // After pooling: log of each edge energy and of the area, piecewise linear between the knots, so that
      // shape (ratios of energies, whatever the size) is a linear read-out.
      const g = (x: number): number => Math.log(x + LOG_EPS);
      for (let f = 0; f < 9; f++) {
        const src = ORI + f; // ORI[0..7] then AREA
        let prevSlope = 0;
        for (let i = 0; i < LOG_KNOTS.length; i++) {
          const a = LOG_KNOTS[i];
          const b = i + 1 < LOG_KNOTS.length ? LOG_KNOTS[i + 1] : a * 2;
          const slope = (g(b) - g(a)) / (b - a);
          unit([[src, 1]], -a, [[LOG + f, slope - prevSlope]]);
          prevSlope = slope;
        }
      }
    }
    if (u > INNER) throw new Error(`demo CLIP layer ${l} needs ${u} units, has ${INNER}`);
    const b2 = new Float32Array(W);
    if (l === 3) for (let f = 0; f < 9; f++) b2[LOG + f] = Math.log(LOG_EPS);
    balanceRows(fc2, INNER);
    balanceVector(b2);
    sd.set(`${q}mlp.fc1.weight`, t([INNER, W], fc1));
    sd.set(`${q}mlp.fc1.bias`, t([INNER], b1));
    sd.set(`${q}mlp.fc2.weight`, t([W, INNER], fc2));
    sd.set(`${q}mlp.fc2.bias`, t([W], b2));
  }
  sd.set(`${p}post_layernorm.weight`, t([W], gain()));
  sd.set(`${p}post_layernorm.bias`, t([W]));
  const proj = new Float32Array(DEMO_CLIP_DIM * W);
  OUTPUT.forEach(([dim, scale], i) => (proj[i * W + dim] = scale));
  sd.set('visual_projection.weight', t([DEMO_CLIP_DIM, W], proj));
  return { config: DEMO_CLIP_CONFIG, weights: sd };
}
