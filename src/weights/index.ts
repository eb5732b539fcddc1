/** Weights: file formats (safetensors, torch checkpoints, pickles), per-family key maps, the hub cache. */
export type { FileDType, HostTensor, StateDict } from './host.js';
export { DTYPE_BYTES, checkedNumel, decodeElements, halfToFloat } from './dtype.js';
export {
  MAX_HEADER_SIZE,
  loadSafetensors,
  readSafetensors,
  parseSafetensors,
  parseSafetensorsHeader,
  saveSafetensors,
  serializeSafetensors,
  safetensorsHeader,
} from './safetensors.js';
export type { SafetensorsFile, SafetensorsInfo, TensorToSave, TensorsToSave } from './safetensors.js';
export { loadPickle, loadTorchCheckpoint, stateDictFrom, isHostTensor } from './torch.js';
export type { PickleValue, PickleObject } from './torch.js';
export { loadTorchScript, type TorchScriptModule, type TorchScriptOptions } from './torchscript.js';
export {
  clipResNetKeySpec,
  inferClipResNetConfig,
  loadOpenAIClip,
  loadOpenAIClipVision,
  openaiClipResNet,
  openaiClipVision,
  type OpenAIClipVision,
} from './families/openai-clip.js';
export {
  OPENAI_CLIP_MODELS,
  isOpenAIClipName,
  openaiClipCacheDir,
  openaiClipFile,
  type OpenAIClipFileOptions,
} from './openai-clip-hub.js';
export * from './keymaps.js';
export { convertClipcap, readGpt2ConfigSpec, type ConvertOptions, type ConvertResult } from './convert.js';
export {
  hubFile,
  cachedHubFile,
  hubCacheDir,
  repoCacheDir,
  DEFAULT_ENDPOINT,
  type HubFileOptions,
  type RepoType,
} from './hub.js';
