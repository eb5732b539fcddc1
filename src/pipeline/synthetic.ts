/**
 * A ClipCap captioner whose weights follow the fixture rule (models/synthetic.ts): full size by default (GPT-2
 * small, the 512 -> 3840 -> 7680 MLP mapper, optionally CLIP ViT-B/32), so benchmarks, the serve tests and a
 * model worker can build real-size models anywhere without weight files. Captions are nonsense words.
 */
import type { Backend } from '../engine/backend.js';
import { getBackend, type BackendName } from '../engine/registry.js';
import { ClipVisionModel } from '../models/clip.js';
import { ClipCapModel } from '../models/clipcap.js';
import { syntheticClipVision, syntheticGpt2, syntheticMapper } from '../models/synthetic.js';
import {
  CLIP_VIT_B32_VISION,
  type ClipVisionConfig,
  type Gpt2Config,
  type MapperConfig,
} from '../config/models.js';
import { ClipCap } from './caption.js';
import { captionerParts } from './load.js';
import type { ImageEncoder } from './parts.js';

export interface SyntheticClipCapSpec {
  /** GPT-2 config (default: GPT-2 small). */
  gpt2?: Gpt2Config;
  /** Mapper config (default: the official MLP 512 -> 3840 -> 7680); its width must be GPT-2's. */
  mapper?: MapperConfig;
  /** CLIP vision config for image inputs (true: ViT-B/32); absent or false: embeddings only. */
  clip?: ClipVisionConfig | boolean;
  /** Says what the model is, in /health and messages. */
  description?: string;
}

/** Builds the captioner on `backend` (a registry name or a Backend; default: the preferred one that loads). */
export async function syntheticClipCap(
  spec: SyntheticClipCapSpec = {},
  backend?: BackendName | Backend,
): Promise<ClipCap> {
  const b = typeof backend === 'object' ? backend : getBackend(backend);
  const g = syntheticGpt2(spec.gpt2);
  const m = syntheticMapper(spec.mapper, g.config.n_embd);
  const clip = spec.clip === true ? CLIP_VIT_B32_VISION : spec.clip || null;
  const description =
    spec.description ??
    `synthetic ClipCap (fixture rule): GPT-2 ${g.config.n_layer}x${g.config.n_embd}, ${m.config.kind} mapper` +
      (clip ? `, CLIP ViT ${clip.hidden_size}` : '');
  const model = ClipCapModel.create(b, { mapper: m.config, mapperWeights: m.weights, gpt2: g }, description);
  const loadClip = clip
    ? async (): Promise<ImageEncoder> => {
        const v = syntheticClipVision(clip);
        const vision = ClipVisionModel.fromWeights(b, v.config, v.weights, description);
        return {
          projectionDim: vision.embedDim,
          imageSize: v.config.image_size,
          encodeImages: (px) => vision.encodeImages(px),
          dispose: () => vision.dispose(),
        };
      }
    : undefined;
  return new ClipCap(await captionerParts(model, { description, loadClip }));
}
