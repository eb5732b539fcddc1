/**
 * clipcap: ClipCap image captioning for Node.js.
 *
 * @example
 * ```ts
 * import { ClipCap } from 'clipcap';
 * const model = await ClipCap.fromPretrained('coco');
 * const results = await model.caption(['photo.jpg']);
 * console.log(results[0].caption);
 * model.dispose();
 * ```
 */
export * from './engine/index.js';
export { UserError, UsageError } from './util/errors.js';

// ---- captioning ----
export {
  ClipCap,
  type CaptionerParts,
  type ImageEncoder,
  type PrefixModel,
  type TokenDecoder,
} from './pipeline/caption.js';
export type {
  CaptionCandidate,
  CaptionFailure,
  CaptionInput,
  CaptionOptions,
  CaptionResult,
  CaptionSuccess,
  EmbeddingInput,
} from './pipeline/types.js';
export {
  DEFAULT_CLIP,
  DEFAULT_GPT2,
  PRETRAINED,
  loadImageEncoder,
  type ClipCapLoadOptions,
  type PretrainedName,
} from './pipeline/load.js';
export {
  extractEmbeddings,
  matchCaptions,
  readCaptions,
  writeCaptionsSidecar,
  writeEmbeddings,
  type EmbeddingsMetadata,
  type ExtractOptions,
  type ExtractedRow,
} from './pipeline/extract.js';
export {
  EMBEDDING_TENSOR,
  readEmbeddings,
  readEmbeddingsFile,
  type EmbeddingsFile,
} from './data/embeddings.js';
export { expandInputs, IMAGE_EXTENSIONS, type ExpandedInput } from './pipeline/inputs.js';
export {
  ClipCapWorker,
  type ClipCapWorkerOptions,
  type WorkerModelInfo,
  type WorkerModelSpec,
} from './pipeline/worker.js';
export { syntheticClipCap, type SyntheticClipCapSpec } from './pipeline/synthetic.js';

// ---- training ----
export {
  train,
  trainClipcap,
  type TrainControl,
  type TrainEvent,
  type TrainHooks,
  type TrainOptions,
  type TrainResult,
} from './pipeline/train.js';

// ---- decoding (any CausalLM) ----
export {
  DEFAULT_DECODE_OPTIONS,
  EOS_TOKEN_ID,
  PERIOD_TOKEN_ID,
  beamDecode,
  generate,
  greedyDecode,
  nucleusDecode,
  resolveDecodeOptions,
  resolveStopToken,
  type CausalLM,
  type DecodeMethod,
  type DecodeOptions,
  type GeneratedSequence,
  type GenerationResult,
  type KvCache,
  type ResolvedDecodeOptions,
  type StopSpec,
} from './generate/index.js';

// ---- text and images ----
export { Gpt2Tokenizer, type EncodeOptions } from './text/index.js';
export {
  DEFAULT_PIXEL_LIMIT,
  decodeToRgb,
  preprocessImage,
  type PreprocessOptions,
  type PreprocessedImage,
  type RgbImage,
} from './image/index.js';

// ---- weights ----
export {
  hubFile,
  loadPickle,
  loadSafetensors,
  loadTorchCheckpoint,
  loadTorchScript,
  loadOpenAIClip,
  loadOpenAIClipVision,
  openaiClipFile,
  OPENAI_CLIP_MODELS,
  readSafetensors,
  saveSafetensors,
  type HostTensor,
  type HubFileOptions,
  type OpenAIClipVision,
  type SafetensorsFile,
  type StateDict,
} from './weights/index.js';

// ---- models ----
export {
  ClipCapModel,
  ClipResNetVisionModel,
  ClipTextModel,
  ClipVisionModel,
  Gpt2Model,
} from './models/index.js';
export type {
  ClipCapConfig,
  ClipResNetConfig,
  ClipVisionConfig,
  ClipTextConfig,
  Gpt2Config,
  MapperConfig,
} from './models/index.js';

// ---- evaluation ----
export {
  evaluateCaptions,
  readReferences,
  readPredictions,
  ptbTokenize,
  ptbTokenizeBatch,
  type EvalResult,
  type EvaluateOptions,
} from './eval/index.js';
export {
  captionEvalSplit,
  type CaptionSplitOptions,
  type CaptionSplitResult,
} from './pipeline/eval-split.js';

// ---- HTTP server ----
export {
  createServer,
  DEFAULT_LIMITS,
  DEFAULT_TIMEOUTS,
  type CaptionModel,
  type CaptionServer,
  type ServerLimits,
  type ServerOptions,
  type ServerTimeouts,
} from './server/index.js';
