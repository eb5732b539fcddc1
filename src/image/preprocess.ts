/**
 * OpenAI CLIP's image preprocessing (`clip.load(...)[1]`): RGB conversion, `Resize(224, BICUBIC)`,
 * `CenterCrop(224)`, `ToTensor()`, `Normalize(mean, std)`.
 *
 * We convert to RGB first, then resize, which is what this project's reference fixtures define
 * (`Image.open(f).convert("RGB")` then resize and crop). For RGB and grayscale files this equals CLIP's own
 * order (resize first, convert after the crop). It differs for files Pillow opens in other modes: CLIP's order
 * would resize RGBA/LA with premultiplied alpha, palette ("P") and 1-bit images with nearest neighbour, and CMYK
 * per ink channel before converting.
 */
import { UserError } from '../util/errors.js';
import { decodeRows, describeInput, type DecodeOptions, type ImageInput } from './decode.js';
import { centerCropOffsets, resizedSize, StreamingResize } from './resize.js';

/** CLIP's normalization constants, as float32 (torch keeps them as float32 tensors). */
export const CLIP_MEAN: readonly number[] = [0.48145466, 0.4578275, 0.40821073].map(Math.fround);
export const CLIP_STD: readonly number[] = [0.26862954, 0.26130258, 0.27577711].map(Math.fround);

export interface PreprocessOptions extends DecodeOptions {
  /** Side of the square model input: 224 for ViT-B/32 (the default), 288 for RN50x4, 336 for ViT-L/14@336px. */
  size?: number;
  /**
   * Images whose decoded samples take more bytes than this are not held in memory: libvips writes them row by
   * row to a temporary file, from which only the rows and columns under the crop are read, a strip at a time
   * (same pixels). Default WHOLE_DECODE_CROPS crops' worth (size x size x 3 bytes each).
   */
  wholeDecodeBytes?: number;
}

/** Default wholeDecodeBytes, in crops: a 640x480 photo (the COCO size) decodes in memory at 224 and 288. */
export const WHOLE_DECODE_CROPS = 16;

export interface PreprocessedImage {
  /** (3, size, size) float32, CHW, normalized with CLIP's mean and std: the vision tower's input. */
  pixelValues: Float32Array;
  /** (size, size, 3) uint8: the resized and cropped RGB pixels before normalization. */
  uint8: Uint8Array;
  /** Size of the decoded image before resizing. */
  width: number;
  height: number;
}

/**
 * uint8 (size, size, 3) HWC -> float32 (3, size, size) CHW: `ToTensor` (x / 255) then `Normalize` ((x - mean) /
 * std), each step rounded to float32 as torch computes it.
 */
export function normalizeClip(
  uint8: Uint8Array,
  size: number,
  mean: readonly number[] = CLIP_MEAN,
  std: readonly number[] = CLIP_STD,
): Float32Array {
  const plane = size * size;
  if (uint8.length !== plane * 3) {
    throw new RangeError(
      `normalizeClip: expected ${size}x${size}x3 = ${plane * 3} bytes, got ${uint8.length}`,
    );
  }
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    const m = Math.fround(mean[c]);
    const s = Math.fround(std[c]);
    // 256 possible values per channel: tabulate them.
    const table = new Float32Array(256);
    for (let v = 0; v < 256; v++) table[v] = Math.fround(Math.fround(v / 255) - m) / s;
    const base = c * plane;
    for (let i = 0; i < plane; i++) out[base + i] = table[uint8[i * 3 + c]];
  }
  return out;
}

/**
 * Decode, resize (short side to `size`, Pillow bicubic), center-crop and normalize one image, exactly as CLIP's
 * own preprocessing does.
 *
 * @example
 * const { pixelValues } = await preprocessImage('cat.jpg'); // Float32Array(3 * 224 * 224)
 */
export async function preprocessImage(
  input: ImageInput,
  opts: PreprocessOptions = {},
): Promise<PreprocessedImage> {
  const size = opts.size ?? 224;
  if (!Number.isInteger(size) || size < 1)
    throw new RangeError(`preprocessImage: size must be a positive integer`);
  const wholeBytes = opts.wholeDecodeBytes ?? WHOLE_DECODE_CROPS * size * size * 3;
  const name = describeInput(input, opts);
  // (Absurd aspect ratios were refused by decodeRows, from the header.)
  let uint8: Uint8Array;
  let width: number;
  let height: number;
  try {
    // Only the crop is computed, from the input rows under it as they are decoded: memory follows
    // size x size plus the resampling window, not the input or the resized image.
    const done = await decodeRows(input, opts, wholeBytes, (w, h) => {
      const resized = resizedSize(w, h, size);
      const { x, y } = centerCropOffsets(resized.width, resized.height, size, size);
      return new StreamingResize(w, h, resized.width, resized.height, { x, y, width: size, height: size });
    });
    uint8 = done.consumer.result();
    width = done.width;
    height = done.height;
  } catch (e) {
    // An allocation failure is this image's problem, not the batch's.
    if (e instanceof RangeError)
      throw new UserError(`${name}: cannot resize the image (${e.message})`, { cause: e });
    throw e;
  }
  return { pixelValues: normalizeClip(uint8, size), uint8, width, height };
}
