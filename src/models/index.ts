/** Model families: typed configs, GPT-2, CLIP towers, ClipCap mappers and the ClipCap model. */
export * from '../config/models.js';
export {
  Gpt2Model,
  Gpt2KvCache,
  isGpt2IgnoredKey,
  type Gpt2ForwardOptions,
  type Gpt2Output,
} from './gpt2.js';
export { ClipVisionModel, ClipTextModel, type ClipVisionOutput, type ClipTextOutput } from './clip.js';
export { ClipResNetVisionModel, type ClipResNetOptions, type ClipResNetTaps } from './clip-resnet.js';
export { createMapper, mapperWeightSpec, MlpMapper, TransformerMapper, type Mapper } from './mapper.js';
export {
  ClipCapModel,
  l2Normalize,
  type ClipCapBatch,
  type ClipCapLoss,
  type ClipCapLossMode,
  type ClipCapMode,
  type ClipCapParts,
  type ClipCapStepOptions,
} from './clipcap.js';
// The synthetic weights of the full-size tests and benches (the fixture hash rule) are internal:
// import them from './synthetic.js'.
export { checkWeights, paramsToStateDict } from './weights.js';
