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
 * Horizontal pass over one row: src holds input columns [srcCol, ...) of the row from byte `at`; writes the
 * resized columns coeffs describes (coeffs.first..) to dst from byte `to`.
 */
function resampleRow(
  src: Uint8Array,
  at: number,
  srcCol: number,
  coeffs: ResampleCoeffs,
  dst: Uint8Array,
  to: number,
): void {
  const { ksize, bounds, weights } = coeffs;
  const cols = bounds.length / 2;
  let o = to;
  for (let c = 0; c < cols; c++) {
    const n = bounds[c * 2 + 1];
    const kBase = c * ksize;
    let s0 = HALF;
    let s1 = HALF;
    let s2 = HALF;
    let p = at + (bounds[c * 2] - srcCol) * 3;
    for (let t = 0; t < n; t++, p += 3) {
      const w = weights[kBase + t];
      s0 += src[p] * w;
      s1 += src[p + 1] * w;
      s2 += src[p + 2] * w;
    }
    dst[o++] = clip8(s0);
    dst[o++] = clip8(s1);
    dst[o++] = clip8(s2);
  }
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

function checkRegion(w: number, h: number, outW: number, outH: number, region: Region): void {
  if (![w, h].every(Number.isInteger) || w < 1 || h < 1) {
    throw new RangeError(`resizeBicubicPil: image size must be positive integers, got ${w}x${h}`);
  }
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
}

/**
 * `Image.resize((outW, outH), BICUBIC).crop(region)` of a w x h image whose rows arrive one at a time, in order
 * (a decoder streaming them): it keeps only the rows the vertical filter still needs, horizontally resampled
 * (at most its taps x region.width pixels), so memory follows the region whatever the input's size. Pillow's
 * order of operations: each needed input row is resampled horizontally (rounded to uint8), then each output row
 * vertically from those rows; every output pixel depends only on its own window, so the bytes equal resizing the
 * whole image and cropping.
 *
 * Feed input rows [rowFirst, rowEnd) (others are ignored), columns [colFirst, colEnd) of each, then take result().
 */
export class StreamingResize {
  /** The input rows and columns the region reads. */
  readonly rowFirst: number;
  readonly rowEnd: number;
  readonly colFirst: number;
  readonly colEnd: number;
  private readonly horizontal: ResampleCoeffs | null;
  private readonly vertical: ResampleCoeffs | null;
  private readonly stride: number;
  /** Horizontally resampled rows, row y in slot (y - rowFirst) % slots. */
  private readonly ring: Uint8Array;
  private readonly slots: number;
  private readonly out: Uint8Array;
  /** One output row's fixed-point sums. */
  private readonly acc: Float64Array;
  private next: number;
  private nextOut = 0;

  constructor(
    w: number,
    h: number,
    outW: number,
    outH: number,
    private readonly region: Region,
  ) {
    checkRegion(w, h, outW, outH, region);
    const { x, y, width, height } = region;
    this.stride = width * 3;
    this.out = new Uint8Array(height * this.stride);
    this.acc = new Float64Array(this.stride);
    // Weights for the region's rows and columns only (memory follows the region, not outW x outH).
    this.horizontal = outW !== w ? precomputeCoeffs(w, outW, x, width) : null;
    this.vertical = outH !== h ? precomputeCoeffs(h, outH, y, height) : null;
    const span = (c: ResampleCoeffs | null, first: number, count: number): [number, number] => {
      if (!c) return [first, first + count];
      const last = count - 1;
      return [c.bounds[0], c.bounds[last * 2] + c.bounds[last * 2 + 1]];
    };
    [this.rowFirst, this.rowEnd] = span(this.vertical, y, height);
    [this.colFirst, this.colEnd] = span(this.horizontal, x, width);
    let taps = 1;
    if (this.vertical)
      for (let r = 0; r < height; r++) taps = Math.max(taps, this.vertical.bounds[r * 2 + 1]);
    this.slots = Math.min(taps, this.rowEnd - this.rowFirst);
    this.ring = new Uint8Array(this.vertical ? this.slots * this.stride : 0);
    this.next = this.rowFirst;
  }

  /** Input row y: columns [colFirst, colEnd) as RGB in src from byte `at`. Rows come in order. */
  push(y: number, src: Uint8Array, at = 0): void {
    if (y < this.rowFirst || y >= this.rowEnd) return;
    if (y !== this.next) throw new RangeError(`StreamingResize: expected input row ${this.next}, got ${y}`);
    this.next++;
    // Without a vertical pass the row is an output row; otherwise it goes to the ring.
    const dst = this.vertical ? this.ring : this.out;
    const to = this.vertical
      ? ((y - this.rowFirst) % this.slots) * this.stride
      : (y - this.rowFirst) * this.stride;
    if (this.horizontal) resampleRow(src, at, this.colFirst, this.horizontal, dst, to);
    else
      dst.set(
        src.subarray(
          at + (this.region.x - this.colFirst) * 3,
          at + (this.region.x - this.colFirst) * 3 + this.stride,
        ),
        to,
      );
    if (this.vertical) this.emitThrough(y);
  }

  /** Vertical pass for every output row whose window ends at or before input row y. */
  private emitThrough(y: number): void {
    const { ksize, bounds, weights } = this.vertical as ResampleCoeffs;
    const { stride, ring, out, slots, rowFirst } = this;
    // Row by row of the window (contiguous reads), summing in the tap order Pillow uses; the sums are exact
    // integers in float64, as in Pillow's 32-bit accumulator.
    const acc = this.acc;
    for (; this.nextOut < this.region.height; this.nextOut++) {
      const r = this.nextOut;
      const ymin = bounds[r * 2];
      const n = bounds[r * 2 + 1];
      if (ymin + n - 1 > y) return;
      acc.fill(HALF);
      for (let t = 0; t < n; t++) {
        const w = weights[r * ksize + t];
        const off = ((ymin + t - rowFirst) % slots) * stride;
        for (let i = 0; i < stride; i++) acc[i] += ring[off + i] * w;
      }
      const o = r * stride;
      for (let i = 0; i < stride; i++) out[o + i] = clip8(acc[i]);
    }
  }

  /** (region.height, region.width, 3) uint8, once every needed row was pushed. */
  result(): Uint8Array {
    if (this.next !== this.rowEnd)
      throw new RangeError(`StreamingResize: input rows ${this.next}..${this.rowEnd - 1} are missing`);
    return this.out;
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
  const sr = new StreamingResize(w, h, outW, outH, region);
  for (let y = sr.rowFirst; y < sr.rowEnd; y++) sr.push(y, rgb, (y * w + sr.colFirst) * 3);
  return sr.result();
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
