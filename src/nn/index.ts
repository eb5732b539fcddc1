/** Layers with explicit forward/backward, built on the Backend interface only. */
export { Parameter, zeroGrads, parameterMap } from './parameter.js';
export { Linear, type LinearLayout } from './linear.js';
export { LayerNorm } from './layernorm.js';
export { Activation, activationKind, type ActivationKind } from './activation.js';
export { Dropout } from './dropout.js';
export { Embedding } from './embedding.js';
export { FeedForward } from './mlp.js';
export {
  SelfAttention,
  type AttentionProjections,
  type AttentionContext,
  type LayerKv,
} from './attention.js';
export { PreLnBlock, type BlockRun } from './block.js';
export { crossEntropyLoss, type CrossEntropyOutput } from './losses.js';
export { AdamW, CLIPCAP_ADAMW, type AdamWConfig } from './adamw.js';
export { SeedSequence } from '../util/random.js';
