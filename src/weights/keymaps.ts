/** Per-family key maps (one file per family under families/): names, shapes and configs of checkpoints. */
export { checkKeys, type KeySpec, type ConfigSource } from './families/common.js';
export {
  gpt2Weights,
  gpt2KeySpec,
  gpt2ConfigFor,
  canonicalGpt2,
  GPT2_STANDARD_HEADS,
  type Gpt2Weights,
} from './families/gpt2.js';
export { clipWeights, clipVisionKeySpec, clipTextKeySpec, type ClipWeights } from './families/clip.js';
export {
  clipcapCheckpoint,
  mapperKeySpec,
  saveClipcapDir,
  loadClipcapDir,
  OFFICIAL_MAPPER_HEADS,
  CLIPCAP_FORMAT,
  CLIPCAP_FORMAT_VERSION,
  CLIPCAP_CONFIG_FILE,
  CLIPCAP_WEIGHTS_FILE,
  type ClipcapCheckpoint,
  type ClipcapCheckpointOptions,
  type ClipcapDir,
  type ClipcapDirConfig,
} from './families/clipcap.js';
