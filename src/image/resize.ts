/**
 * Pillow's antialiased bicubic resampling (`Image.resize(size, Image.BICUBIC)`), bit for bit, plus torchvision's
 * size rule and center crop: the geometry of OpenAI CLIP's preprocessing.
 *
 * This follows Pillow's `libImaging/Resample.c` for 8-bit images:
 * - `precompute_coeffs`: for each output index, a window [xmin, xmin + n) of input indices and weights
 *   `bicubic((i - center + 0.5) / filterscale)` (a = -0.5), normalized to sum 1 in float64; when downscaling the
 *   filter is stretched by the scale (support 2 * scale), which is what makes the resize antialiased.
 * - `normalize_coeffs_8bpc`: weights become fixed point with PRECISION_BITS = 32 - 8 - 2 = 22, rounded half away
 *   from zero.
 * - `ImagingResampleInner`: the horizontal pass first (only over the input rows the vertical pass will read),
 *   rounded and clipped to uint8, then the vertical pass, again rounded and clipped; a pass is skipped when its
 *   size does not change.
 * Every output pixel depends only on its own window, so computing just the pixels inside a crop gives the same
 * numbers as resizing everything and cropping afterwards (which is how `resizeAndCenterCrop` saves work on
 * very elongated images).
 *
 * Pixels are interleaved RGB, row-major: rgb is (H, W, 3) uint8.
 */

const PRECISION_BITS = 32 - 8 - 2;
/** 0.5 in fixed point: the rounding offset every accumulator starts from. */
const HALF = 1 << (PRECISION_BITS - 1);
/** 255.0 in fixed point: accumulators at or above it clip to 255. */
const MAX_FIXED = 255 * (1 << PRECISION_BITS);
const BICUBIC_SUPPORT = 2.0;

/** Pillow's `bicubic_filter` (Keys cubic with a = -0.5), same operation order. */
function bicubicFilter(x: number): number {
  const a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/** Fixed-point resampling weights for a window of output indices on one axis. */
export interface ResampleCoeffs {
  /** The first output index described (the window is [first, first + bounds.length / 2)). */
  readonly first: number;
  /** Taps per output index (the row stride of `weights`). */
  readonly ksize: number;
  /** bounds[2i] = first input index, bounds[2i + 1] = number of taps for output index first + i. */
  readonly bounds: Int32Array;
  /** weights[i * ksize + t]: fixed-point weight of input index bounds[2i] + t. */
  readonly weights: Int32Array;
}

/**
 * Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box [0, inSize) mapped onto outSize pixels, for
 * the output indices [first, first + count) only (default all): each index's weights depend on nothing else, so
 * a crop of a hugely elongated image needs weights for the crop, not for the whole resized axis.
 */
export function precomputeCoeffs(
  inSize: number,
  outSize: number,
  first = 0,
  count: number = outSize - first,
): ResampleCoeffs {
  if (![inSize, outSize, first, count].every(Number.isSafeInteger) || inSize < 1 || outSize < 1) {
    throw new RangeError(`precomputeCoeffs: sizes must be positive integers, got ${inSize} -> ${outSize}`);
  }
  if (first < 0 || count < 0 || first + count > outSize) {
    throw new RangeError(
      `precomputeCoeffs: window [${first}, ${first + count}) is not inside [0, ${outSize})`,
    );
  }
  const in0 = 0;
  const in1 = inSize;
  const scale = (in1 - in0) / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = BICUBIC_SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(count * 2);
  const weights = new Int32Array(count * ksize);
  const k = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let i = 0; i < count; i++) {
    const xx = first + i;
    const center = in0 + (xx + 0.5) * scale;
    // C's (int) cast truncates toward zero.
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = bicubicFilter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? k[x] / ww : k[x];
      const scaled = v * (1 << PRECISION_BITS);
      weights[i * ksize + x] = Math.trunc(v < 0 ? scaled - 0.5 : scaled + 0.5);
    }
    bounds[i * 2] = xmin;
    bounds[i * 2 + 1] = xmax;
  }
  return { first, ksize, bounds, weights };
}

/** Pillow's `clip8`: a fixed-point accumulator back to uint8. */
function clip8(acc: number): number {
  if (acc >= MAX_FIXED) return 255;
  if (acc <= 0) return 0;
  return acc >> PRECISION_BITS;
}

/**
 * Horizontal pass. src: (srcH, srcW, 3); returns (rows, cols, 3) where output row r is input row rowFirst + r and
 * output column c is resized column coeffs.first + c (cols = the columns coeffs describe).
 */
function resampleHorizontal(
  src: Uint8Array,
  srcW: number,
  rowFirst: number,
  rows: number,
  coeffs: ResampleCoeffs,
): Uint8Array {
  const { ksize, bounds, weights } = coeffs;
  const cols = bounds.length / 2;
  const out = new Uint8Array(rows * cols * 3);
  for (let r = 0; r < rows; r++) {
    const rowBase = (rowFirst + r) * srcW * 3;
    let o = r * cols * 3;
    for (let c = 0; c < cols; c++) {
      const xmin = bounds[c * 2];
      const n = bounds[c * 2 + 1];
      const kBase = c * ksize;
      let s0 = HALF;
      let s1 = HALF;
      let s2 = HALF;
      let p = rowBase + xmin * 3;
      for (let t = 0; t < n; t++, p += 3) {
        const w = weights[kBase + t];
        s0 += src[p] * w;
        s1 += src[p + 1] * w;
        s2 += src[p + 2] * w;
      }
      out[o++] = clip8(s0);
      out[o++] = clip8(s1);
      out[o++] = clip8(s2);
    }
  }
  return out;
}

/**
 * Vertical pass. src: (srcRows, w, 3) holding input rows rowOffset.. ; returns (rows, w, 3) for the resized rows
 * coeffs describes (coeffs.first..).
 */
function resampleVertical(src: Uint8Array, w: number, rowOffset: number, coeffs: ResampleCoeffs): Uint8Array {
  const { ksize, bounds, weights } = coeffs;
  const rows = bounds.length / 2;
  const stride = w * 3;
  const out = new Uint8Array(rows * stride);
  for (let r = 0; r < rows; r++) {
    const ymin = bounds[r * 2] - rowOffset;
    const n = bounds[r * 2 + 1];
    const kBase = r * ksize;
    const o = r * stride;
    for (let i = 0; i < stride; i++) {
      let s = HALF;
      let p = ymin * stride + i;
      for (let t = 0; t < n; t++, p += stride) s += src[p] * weights[kBase + t];
      out[o + i] = clip8(s);
    }
  }
  return out;
}

/** A rectangle of the resized image: columns [x, x + width), rows [y, y + height). */
export interface Region {
  x: number;
  y: number;
  width: number;
  height: number;
}

function checkRgb(rgb: Uint8Array, w: number, h: number, what: string): void {
  if (!Number.isInteger(w) || !Number.isInteger(h) || w < 1 || h < 1) {
    throw new RangeError(`${what}: image size must be positive integers, got ${w}x${h}`);
  }
  if (rgb.length !== w * h * 3) {
    throw new RangeError(`${what}: expected ${w}x${h}x3 = ${w * h * 3} bytes of RGB, got ${rgb.length}`);
  }
}

/**
 * The pixels in `region` of `rgb` (w x h) resized to outW x outH with Pillow's bicubic filter: exactly
 * `Image.resize((outW, outH), BICUBIC).crop(region)`, without computing the pixels outside the region.
 * Returns (region.height, region.width, 3) uint8.
 */
export function resizeBicubicPilRegion(
  rgb: Uint8Array,
  w: number,
  h: number,
  outW: number,
  outH: number,
  region: Region,
): Uint8Array {
  checkRgb(rgb, w, h, 'resizeBicubicPil');
  if (!Number.isInteger(outW) || !Number.isInteger(outH) || outW < 1 || outH < 1) {
    throw new RangeError(`resizeBicubicPil: output size must be positive integers, got ${outW}x${outH}`);
  }
  const { x, y, width, height } = region;
  if (
    ![x, y, width, height].every(Number.isInteger) ||
    x < 0 ||
    y < 0 ||
    width < 1 ||
    height < 1 ||
    x + width > outW ||
    y + height > outH
  ) {
    throw new RangeError(
      `resizeBicubicPil: region ${width}x${height}+${x}+${y} is not inside ${outW}x${outH}`,
    );
  }
  const needHorizontal = outW !== w;
  const needVertical = outH !== h;

  // Which input rows the horizontal pass must produce: the ones the region's output rows read.
  let vert: ResampleCoeffs | undefined;
  let rowFirst = y;
  let rowEnd = y + height;
  if (needVertical) {
    // Weights for the region's rows only (memory follows the region, not outH).
    vert = precomputeCoeffs(h, outH, y, height);
    rowFirst = vert.bounds[0];
    const last = height - 1;
    rowEnd = vert.bounds[last * 2] + vert.bounds[last * 2 + 1];
  }

  // tmp: (rowEnd - rowFirst, width, 3), input rows rowFirst.. with the region's columns already resampled.
  let tmp: Uint8Array;
  if (needHorizontal) {
    tmp = resampleHorizontal(rgb, w, rowFirst, rowEnd - rowFirst, precomputeCoeffs(w, outW, x, width));
  } else {
    tmp = new Uint8Array((rowEnd - rowFirst) * width * 3);
    for (let r = rowFirst; r < rowEnd; r++) {
      tmp.set(rgb.subarray((r * w + x) * 3, (r * w + x + width) * 3), (r - rowFirst) * width * 3);
    }
  }
  if (!vert) return tmp;
  return resampleVertical(tmp, width, rowFirst, vert);
}

/** rgb (h, w, 3) resized to (outH, outW, 3) exactly as Pillow's `Image.resize((outW, outH), Image.BICUBIC)`. */
export function resizeBicubicPil(
  rgb: Uint8Array,
  w: number,
  h: number,
  outW: number,
  outH: number,
): Uint8Array {
  return resizeBicubicPilRegion(rgb, w, h, outW, outH, { x: 0, y: 0, width: outW, height: outH });
}

/**
 * torchvision `Resize(size)` with an int size: the short side becomes `size`, the long side
 * `int(size * long / short)` (float division, truncated), keeping which side is which.
 */
export function resizedSize(w: number, h: number, size: number): { width: number; height: number } {
  if (w <= h) return { width: size, height: Math.trunc((size * h) / w) };
  return { width: Math.trunc((size * w) / h), height: size };
}

/** Python's round() on a float: halves go to the even neighbour. */
function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const diff = v - f;
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** torchvision `CenterCrop` offsets: `int(round((n - crop) / 2))` on each axis (Python rounds halves to even). */
export function centerCropOffsets(
  w: number,
  h: number,
  cropW: number,
  cropH: number,
): { x: number; y: number } {
  if (cropW > w || cropH > h) {
    // torchvision would pad; the CLIP pipeline never needs it since the short side already equals the crop.
    throw new RangeError(`centerCrop: crop ${cropW}x${cropH} is larger than the image ${w}x${h}`);
  }
  return { x: roundHalfEven((w - cropW) / 2), y: roundHalfEven((h - cropH) / 2) };
}

/** torchvision `CenterCrop((cropH, cropW))` of rgb (h, w, 3): returns (cropH, cropW, 3). */
export function centerCrop(
  rgb: Uint8Array,
  w: number,
  h: number,
  cropW: number,
  cropH: number = cropW,
): Uint8Array {
  checkRgb(rgb, w, h, 'centerCrop');
  const { x, y } = centerCropOffsets(w, h, cropW, cropH);
  const out = new Uint8Array(cropW * cropH * 3);
  for (let r = 0; r < cropH; r++) {
    const start = ((y + r) * w + x) * 3;
    out.set(rgb.subarray(start, start + cropW * 3), r * cropW * 3);
  }
  return out;
}

/**
 * CLIP's geometry in one step: torchvision `Resize(size, BICUBIC)` then `CenterCrop(size)`, computing only the
 * pixels that survive the crop. Returns (size, size, 3) uint8.
 */
export function resizeAndCenterCrop(rgb: Uint8Array, w: number, h: number, size: number): Uint8Array {
  const resized = resizedSize(w, h, size);
  const { x, y } = centerCropOffsets(resized.width, resized.height, size, size);
  return resizeBicubicPilRegion(rgb, w, h, resized.width, resized.height, {
    x,
    y,
    width: size,
    height: size,
  });
}
