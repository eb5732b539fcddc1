export { decodeToRgb, DEFAULT_PIXEL_LIMIT, MAX_ASPECT_RATIO } from './decode.js';
export type { DecodeOptions, ImageInput, RgbImage } from './decode.js';
export {
  centerCrop,
  centerCropOffsets,
  precomputeCoeffs,
  resizeAndCenterCrop,
  resizeBicubicPil,
  resizeBicubicPilRegion,
  resizedSize,
} from './resize.js';
export type { Region, ResampleCoeffs } from './resize.js';
export { CLIP_MEAN, CLIP_STD, normalizeClip, preprocessImage } from './preprocess.js';
export type { PreprocessOptions, PreprocessedImage } from './preprocess.js';
