/**
 * The ResNet case of `clipcap bench clip --model rn50x4`: OpenAI's RN50x4 image tower (the CLIP of the published
 * Transformer COCO model: 288 px, 640-d) with synthetic weights, or real ones with --clip.
 *
 * Weights: every `visual.*` tensor of RN50x4's layout by the fixture rule (models/synthetic.ts), adjusted so the
 * activations neither explode nor vanish through 26 blocks (bench/pytorch_clip_resnet.py builds the same):
 * - convolution weights (rank 4) are scaled by 1 / (0.05·√fan_in), i.e. uniform in ±1/√fan_in;
 * - BatchNorm `weight` and `running_var` are 1 + the rule's value (in [0.95, 1.05]).
 * Each value is computed in float64 from the rule's float32 value and rounded to float32 once.
 */
import type { Backend } from '../engine/backend.js';
import { ClipResNetVisionModel } from '../models/clip-resnet.js';
import type { ClipResNetConfig } from '../config/models.js';
import { syntheticValues } from '../models/synthetic.js';
import type { ImageEncoder } from '../pipeline/parts.js';
import { clipResNetKeySpec } from '../weights/families/openai-clip.js';
import type { StateDict } from '../weights/host.js';

/** RN50x4 as clip.load("RN50x4") builds it. */
export const CLIP_RN50X4: ClipResNetConfig = {
  layers: [4, 6, 10, 6],
  width: 80,
  image_size: 288,
  heads: 40,
  output_dim: 640,
  bn_eps: 1e-5,
};

/** The --smoke model: RN50x4's structure at clip_rn_tiny's widths. */
export const SMOKE_RN: ClipResNetConfig = {
  ...CLIP_RN50X4,
  layers: [1, 1, 2, 1],
  width: 8,
  heads: 4,
  output_dim: 24,
};

function isBatchNorm(name: string): boolean {
  return /\.bn\d\.|\.downsample\.1\./.test(name) || /^visual\.bn\d\./.test(name);
}

/** `visual.*` weights of a ResNet CLIP by the rule above. */
export function syntheticClipResNet(config: ClipResNetConfig = CLIP_RN50X4): StateDict {
  const sd: StateDict = new Map();
  for (const [name, shape] of clipResNetKeySpec(config)) {
    const n = shape.reduce((a, d) => a * d, 1);
    const v = syntheticValues(name, n);
    if (shape.length === 4) {
      const scale = 1 / (0.05 * Math.sqrt(shape[1] * shape[2] * shape[3]));
      for (let i = 0; i < n; i++) v[i] = v[i] * scale;
    } else if (isBatchNorm(name) && (name.endsWith('.weight') || name.endsWith('.running_var'))) {
      for (let i = 0; i < n; i++) v[i] = 1 + v[i];
    }
    sd.set(name, { dtype: 'f32', shape: [...shape], data: v });
  }
  return sd;
}

/** RN50x4 (or the smoke model) with synthetic weights as an image encoder. */
export function syntheticResNetEncoder(
  backend: Backend,
  smoke: boolean,
): { enc: ImageEncoder; what: string } {
  const config = smoke ? SMOKE_RN : CLIP_RN50X4;
  const what = smoke
    ? 'tiny ResNet CLIP (rule, --smoke)'
    : 'RN50x4, synthetic weights (rule, bench/clip-resnet.ts)';
  const model = ClipResNetVisionModel.fromWeights(backend, config, syntheticClipResNet(config), what);
  return {
    enc: {
      projectionDim: model.embedDim,
      imageSize: model.imageSize,
      encodeImages: (px) => model.encodeImages(px),
      dispose: () => model.dispose(),
    },
    what,
  };
}
