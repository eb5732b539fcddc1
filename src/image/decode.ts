/**
 * Image file -> 8-bit RGB pixels the way the reference does it: `PIL.Image.open(f).convert("RGB")`.
 *
 * sharp (libvips) decodes; the channel conversion is ours, so that it follows Pillow rather than libvips:
 * - alpha is dropped, not composited onto a background (Pillow's RGBA -> RGB conversion just discards it);
 * - grayscale is replicated into R, G and B;
 * - 16-bit: RGB(A) and gray+alpha PNGs keep the high byte (Pillow unpacks them with `RGB;16B` / `LA;16B`), while a
 *   plain 16-bit gray PNG opens in Pillow as mode `I;16`, whose conversion to RGB clips values above 255;
 * - CMYK uses Pillow's `cmyk2rgb` formula, not an ICC transform; embedded ICC profiles are ignored (Pillow does
 *   not apply them either);
 * - palette images come out as their palette colours (libvips expands them; a palette's transparency becomes an
 *   alpha channel, which is dropped);
 * - GIF and other multi-frame formats: the first frame; a GIF's transparent pixels get the colour of the
 *   transparent palette index, as in Pillow (see gif.ts);
 * - EXIF orientation is ignored unless `applyExif` is set, as `Image.open` ignores it (CLIP never calls
 *   `ImageOps.exif_transpose`).
 * Bad input fails with a one-line UserError that names the file and says what to do.
 */
import { mkdtemp, open as fsOpen, readFile, rm, type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { errorMessage, UserError } from '../util/errors.js';
import { safeText } from '../util/text.js';
import { fillTransparent, gifTransparentColour } from './gif.js';

/** 8-bit RGB pixels: data is (height, width, 3), row-major, interleaved. */
export interface RgbImage {
  data: Uint8Array;
  width: number;
  height: number;
}

/** A file path, the encoded bytes of an image file, or pixels already decoded to RGB. */
export type ImageInput = string | Uint8Array | RgbImage;

export interface DecodeOptions {
  /**
   * Refuse images with more pixels than this (width x height), which protects against decompression bombs
   * (a small file that expands to gigabytes). Default 100 million.
   */
  limitInputPixels?: number;
  /**
   * Refuse images whose long side is more than this many times the short side, checked from the header before
   * decoding (a 400 KB PNG of 1x20,000,000 pixels takes libvips 20 s to decode). Default MAX_ASPECT_RATIO.
   */
  maxAspectRatio?: number;
  /** Rotate/flip as the EXIF Orientation tag says. Default false, as Pillow's `Image.open` (and CLIP). */
  applyExif?: boolean;
  /** How errors name an input given as bytes or pixels (a path names itself). */
  name?: string;
}

export const DEFAULT_PIXEL_LIMIT = 100_000_000;

/**
 * Images whose long side is more than this many times the short side are refused: CLIP would see a sliver
 * blown up to a square, and the reference itself would first resize a 1x1,000,000 strip to 224x224,000,000.
 */
export const MAX_ASPECT_RATIO = 10_000;

function checkAspect(name: string, width: number, height: number, opts: DecodeOptions): void {
  const max = opts.maxAspectRatio ?? MAX_ASPECT_RATIO;
  if (!(max >= 1)) throw new UserError(`maxAspectRatio must be at least 1, got ${max}`);
  if (Math.max(width, height) > max * Math.min(width, height)) {
    throw new UserError(
      `${name}: a ${width}x${height} image is too elongated (the long side is more than ${max} times the short side); crop it first`,
    );
  }
}

/** sharp's format ids we accept ('heif' covers AVIF). */
const RASTER_FORMATS: ReadonlySet<string> = new Set(['jpeg', 'png', 'webp', 'gif', 'tiff', 'heif']);

const ADVICE = 'check that it is a valid JPEG, PNG, WebP, GIF, TIFF or AVIF image';

/**
 * How messages name an input: its path, or `opts.name`, with control characters escaped (file names found by a
 * directory walk are as untrusted as file contents).
 */
export function describeInput(input: ImageInput, opts: DecodeOptions): string {
  if (typeof input === 'string') return safeText(input, 1000);
  return safeText(opts.name ?? (input instanceof Uint8Array ? 'image data' : 'RGB pixel input'), 1000);
}

function pixelLimit(opts: DecodeOptions): number {
  const limit = opts.limitInputPixels ?? DEFAULT_PIXEL_LIMIT;
  if (!Number.isInteger(limit) || limit < 1) {
    throw new UserError(`limitInputPixels must be a positive integer, got ${limit}`);
  }
  return limit;
}

function overLimit(name: string, width: number, height: number, limit: number): UserError {
  return new UserError(
    `${name}: ${width}x${height} = ${width * height} pixels is over the limit of ${limit}; ` +
      'raise it with --max-pixels (limitInputPixels in the library) if you trust this file',
  );
}

async function readImageFile(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UserError(`${path}: no such file; check the path`, { cause: e });
    if (code === 'EISDIR') {
      throw new UserError(`${path}: is a directory, not an image file; pass the image files in it`, {
        cause: e,
      });
    }
    if (code === 'EACCES' || code === 'EPERM') {
      throw new UserError(`${path}: permission denied; make the file readable`, { cause: e });
    }
    throw new UserError(`${path}: cannot read the file (${code ?? (e as Error).message})`, { cause: e });
  }
}

/** File signatures: what a file says it is, to name it when libvips cannot read it. */
const SIGNATURES: ReadonlyArray<[string, boolean, (b: Uint8Array) => boolean]> = [
  ['PNG', true, (b) => b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47],
  ['JPEG', true, (b) => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff],
  ['GIF', true, (b) => ascii(b, 0, 4) === 'GIF8'],
  ['WebP', true, (b) => ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 12) === 'WEBP'],
  ['TIFF', true, (b) => ascii(b, 0, 4) === 'II*\0' || ascii(b, 0, 4) === 'MM\0*'],
  ['AVIF/HEIF', true, (b) => ascii(b, 4, 8) === 'ftyp'],
  ['BMP', false, (b) => ascii(b, 0, 2) === 'BM'],
  ['PDF', false, (b) => ascii(b, 0, 5) === '%PDF-'],
  ['Photoshop', false, (b) => ascii(b, 0, 4) === '8BPS'],
  ['ICO', false, (b) => b[0] === 0 && b[1] === 0 && b[2] === 1 && b[3] === 0],
  ['JPEG 2000', false, (b) => ascii(b, 4, 8) === 'jP  ' || (b[0] === 0xff && b[1] === 0x4f && b[2] === 0xff)],
  ['JPEG XL', false, (b) => (b[0] === 0xff && b[1] === 0x0a) || ascii(b, 4, 8) === 'JXL '],
  ['SVG', false, (b) => /^\s*(<\?xml|<svg)/i.test(ascii(b, 0, 64))],
];

function ascii(b: Uint8Array, from: number, to: number): string {
  return Buffer.from(b.subarray(from, to)).toString('latin1');
}

/** The format a file's first bytes announce, and whether we read it. */
function sniff(bytes: Uint8Array): { format: string; supported: boolean } | undefined {
  for (const [format, supported, test] of SIGNATURES)
    if (bytes.length >= 4 && test(bytes)) return { format, supported };
  return undefined;
}

/** libvips words for data it could not read: a damaged or cut file, not an unsupported one. */
const CORRUPT =
  /premature end|truncated|unexpected end|end of stream|end of (file|data)|corrupt|invalid|read error|bad |bogus|stream error|unable to (read|parse)|not defined|damaged|out of data|unsupported marker|not yet in table/i;

/**
 * sharp says "Unknown error" when libvips failed with warnings only (its error buffer is empty) and drops the
 * warnings; decoding again with failOn 'warning' makes sharp put them in the message.
 */
async function warningsOf(bytes: Uint8Array, options: sharp.SharpOptions): Promise<string | undefined> {
  try {
    await sharp(bytes, { ...options, failOn: 'warning' })
      .raw()
      .toBuffer();
  } catch (e) {
    const lines = errorMessage(e)
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !/^warning treated as error|^unknown error$/i.test(l));
    if (lines.length) return lines.join('; ');
  }
  return undefined;
}

/** Turn a sharp/libvips error into a one-line UserError naming the input and, when known, what was wrong. */
function decodeError(name: string, e: unknown, limit: number, bytes: Uint8Array, detail?: string): UserError {
  const raw = detail ?? errorMessage(e);
  const msg = safeText(raw.replace(/\s*\n\s*/g, '; ').trim(), 200);
  const kind = sniff(bytes);
  if (/exceeds pixel limit/i.test(raw)) {
    return new UserError(
      `${name}: the image has more than ${limit} pixels; raise it with --max-pixels (limitInputPixels in the library) if you trust this file`,
      { cause: e },
    );
  }
  if (/unsupported image format/i.test(raw)) {
    if (kind && !kind.supported) {
      return new UserError(`${name}: ${kind.format} images are not supported; convert it to JPEG or PNG`, {
        cause: e,
      });
    }
    if (kind) {
      // The signature says PNG, TIFF...; libvips could not even read the header: cut short or damaged.
      return new UserError(
        `${name}: a ${kind.format} file that is truncated or damaged (its header cannot be read); re-download or re-export it`,
        { cause: e },
      );
    }
    return new UserError(`${name}: not an image in a supported format; ${ADVICE}`, { cause: e });
  }
  const what = kind ? `${kind.format} ` : '';
  if (CORRUPT.test(raw)) {
    return new UserError(
      `${name}: the ${what}image data is corrupt or truncated (${msg}); re-download or re-export it`,
      { cause: e },
    );
  }
  return new UserError(`${name}: cannot decode the ${what}image (${msg}); ${ADVICE}`, { cause: e });
}

/** Pillow's `cmyk2rgb`: R = (255 - K) - C * (255 - K) / 255 with its rounded integer division. */
function cmykToRgb(src: Uint8Array, channels: number, pixels: number): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  for (let i = 0, p = 0, o = 0; i < pixels; i++, p += channels, o += 3) {
    const nk = 255 - src[p + 3];
    for (let c = 0; c < 3; c++) {
      // MULDIV255(a, b) = ((t >> 8) + t) >> 8 with t = a * b + 128: a * b / 255 rounded.
      const t = src[p + c] * nk + 128;
      const v = nk - (((t >> 8) + t) >> 8);
      out[o + c] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  return out;
}

/** Keep the first three channels of each pixel (drops alpha, not composited). */
function firstThree(src: Uint8Array, channels: number, pixels: number): Uint8Array {
  if (channels === 3) return src;
  const out = new Uint8Array(pixels * 3);
  for (let i = 0, p = 0, o = 0; i < pixels; i++, p += channels, o += 3) {
    out[o] = src[p];
    out[o + 1] = src[p + 1];
    out[o + 2] = src[p + 2];
  }
  return out;
}

/** Replicate the first channel (gray) into R, G, B. */
function grayToRgb(src: Uint8Array, channels: number, pixels: number): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  for (let i = 0, p = 0, o = 0; i < pixels; i++, p += channels, o += 3) {
    const v = src[p];
    out[o] = v;
    out[o + 1] = v;
    out[o + 2] = v;
  }
  return out;
}

/**
 * 16-bit samples to 8-bit RGB. `gray`: the first channel replicated; `clip`: values above 255 become 255 (Pillow's
 * I;16 -> RGB), otherwise the high byte is kept (Pillow's `;16B` unpackers).
 */
function sixteenToRgb(
  src: Uint16Array,
  channels: number,
  pixels: number,
  gray: boolean,
  clip: boolean,
): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  for (let i = 0, p = 0, o = 0; i < pixels; i++, p += channels, o += 3) {
    for (let c = 0; c < 3; c++) {
      const v = src[p + (gray ? 0 : c)];
      out[o + c] = clip ? (v > 255 ? 255 : v) : v >> 8;
    }
  }
  return out;
}

function checkRaw(input: RgbImage, name: string, limit: number, opts: DecodeOptions): RgbImage {
  const { data, width, height } = input;
  if (!(data instanceof Uint8Array))
    throw new UserError(`${name}: pixel data must be a Uint8Array of RGB bytes`);
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new UserError(`${name}: width and height must be positive integers, got ${width}x${height}`);
  }
  if (width * height > limit) throw overLimit(name, width, height, limit);
  checkAspect(name, width, height, opts);
  if (data.length !== width * height * 3) {
    throw new UserError(
      `${name}: ${width}x${height} RGB needs ${width * height * 3} bytes, got ${data.length}; pass interleaved 8-bit RGB`,
    );
  }
  return { data, width, height };
}

/** How the samples a pipeline outputs become Pillow's RGB (see the file comment). */
interface Conversion {
  kind: 'cmyk' | 'sixteen' | 'gray' | 'rgb';
  /** sixteen: gray replicated (else RGB); clip above 255 (else the high byte). */
  gray: boolean;
  clip: boolean;
  /** A GIF's transparent palette colour, for 4-band output. */
  gifColour?: readonly number[];
}

/** `pixels` pixels of `channels` samples (bytes, or native-endian 16-bit for 'sixteen') -> (pixels, 3) RGB. */
function toRgb(conv: Conversion, data: Uint8Array, channels: number, pixels: number): Uint8Array {
  switch (conv.kind) {
    case 'cmyk':
      return cmykToRgb(data, channels, pixels);
    case 'sixteen': {
      // Native-endian 16-bit samples; copy first if the buffer is not 2-byte aligned.
      const aligned = data.byteOffset % 2 === 0 ? data : new Uint8Array(data);
      const samples = new Uint16Array(aligned.buffer, aligned.byteOffset, pixels * channels);
      return sixteenToRgb(samples, channels, pixels, conv.gray, conv.clip && channels === 1);
    }
    case 'gray':
      return grayToRgb(data, channels, pixels);
    case 'rgb':
      if (conv.gifColour && channels === 4) return fillTransparent(data, pixels, conv.gifColour);
      if (channels < 3) return grayToRgb(data, channels, pixels);
      return firstThree(data, channels, pixels);
  }
}

interface Opened {
  name: string;
  limit: number;
  bytes: Uint8Array;
  sharpOptions: sharp.SharpOptions;
  width: number;
  height: number;
  /** Samples per pixel and bytes per sample of the pipeline's output. */
  bands: number;
  sampleBytes: number;
  pipeline: sharp.Sharp;
  conv: Conversion;
}

/** Reads the header, checks the size, and sets up the decode (nothing is decoded yet). */
async function open(
  input: string | Uint8Array,
  opts: DecodeOptions,
  name: string,
  limit: number,
): Promise<Opened> {
  const bytes = typeof input === 'string' ? await readImageFile(input) : input;
  if (bytes.length === 0) {
    throw new UserError(`${name}: the file is empty (0 bytes); re-download or re-export the image`);
  }
  const sharpOptions: sharp.SharpOptions = {
    limitInputPixels: limit,
    ignoreIcc: true,
    autoOrient: opts.applyExif ?? false,
    // Pillow refuses truncated files but decodes through libjpeg's warnings; 'error' is the closest level.
    failOn: 'error',
    // Rows are decoded top to bottom and dropped once written: libvips holds a few rows, not the image.
    sequentialRead: true,
  };
  try {
    // metadata() only reads the header, so it runs without the limit; we check the size ourselves to give a
    // message with the numbers (libvips would only say "exceeds pixel limit"), and decode with the limit on.
    const meta = await sharp(bytes, { ...sharpOptions, limitInputPixels: false }).metadata();
    // Raster formats that Pillow also reads. sharp would render SVG too, at a size of its choosing; refuse it.
    if (meta.format === undefined || !RASTER_FORMATS.has(meta.format)) {
      throw new UserError(
        `${name}: ${meta.format ?? 'unknown'} images are not supported; convert it to JPEG or PNG`,
      );
    }
    if (meta.width === undefined || meta.height === undefined) {
      throw new UserError(`${name}: the image has no size; ${ADVICE}`);
    }
    const frameHeight = meta.pageHeight ?? meta.height;
    if (meta.width * frameHeight > limit) throw overLimit(name, meta.width, frameHeight, limit);
    // From the header, before decoding: libvips' cost per row makes a tall strip slow to decode however small.
    checkAspect(name, meta.width, frameHeight, opts);

    let pipeline = sharp(bytes, sharpOptions);
    const space = meta.space ?? 'srgb';
    const sixteen = meta.depth === 'ushort' || space === 'rgb16' || space === 'grey16';
    const inBands = meta.channels ?? 3;
    const alpha = meta.hasAlpha === true ? 1 : 0;
    let conv: Conversion;
    let bands: number;
    if (space === 'cmyk') {
      // Keep the decoded CMYK samples (libvips, like Pillow, undoes Adobe's inverted CMYK) and convert below.
      pipeline = pipeline.pipelineColourspace('cmyk').toColourspace('cmyk');
      conv = { kind: 'cmyk', gray: false, clip: false };
      bands = inBands;
    } else if (sixteen) {
      const gray = inBands <= 2;
      pipeline = pipeline.toColourspace(gray ? 'grey16' : 'rgb16');
      conv = { kind: 'sixteen', gray, clip: gray };
      bands = (gray ? 1 : 3) + alpha;
    } else if (space === 'b-w') {
      pipeline = pipeline.toColourspace('b-w');
      conv = { kind: 'gray', gray: true, clip: false };
      bands = inBands;
    } else {
      pipeline = pipeline.toColourspace('srgb');
      const gifColour = meta.format === 'gif' ? gifTransparentColour(bytes) : undefined;
      conv = { kind: 'rgb', gray: false, clip: false, ...(gifColour ? { gifColour } : {}) };
      bands = inBands < 3 ? inBands : 3 + alpha;
    }
    return {
      name,
      limit,
      bytes,
      sharpOptions,
      width: meta.width,
      height: frameHeight,
      bands,
      sampleBytes: sixteen ? 2 : 1,
      pipeline,
      conv,
    };
  } catch (e) {
    throw await asUserError(e, name, limit, bytes, sharpOptions);
  }
}

async function asUserError(
  e: unknown,
  name: string,
  limit: number,
  bytes: Uint8Array,
  sharpOptions: sharp.SharpOptions,
): Promise<UserError> {
  if (e instanceof UserError) return e;
  const detail = /^\s*unknown error\s*$/i.test(errorMessage(e))
    ? await warningsOf(bytes, sharpOptions)
    : undefined;
  return decodeError(name, e, limit, bytes, detail);
}

/** The whole image, decoded in memory. */
async function decodeWhole(o: Opened): Promise<RgbImage> {
  try {
    const out = o.conv.kind === 'sixteen' ? o.pipeline.raw({ depth: 'ushort' }) : o.pipeline.raw();
    const { data, info } = await out.toBuffer({ resolveWithObject: true });
    return {
      data: toRgb(o.conv, data, info.channels, info.width * info.height),
      width: info.width,
      height: info.height,
    };
  } catch (e) {
    throw await asUserError(e, o.name, o.limit, o.bytes, o.sharpOptions);
  }
}

/**
 * Decode an image to 8-bit RGB as `PIL.Image.open(input).convert("RGB")` does (see the file comment).
 * Raw RGB input is validated and returned as is (not copied).
 */
export async function decodeToRgb(input: ImageInput, opts: DecodeOptions = {}): Promise<RgbImage> {
  const name = describeInput(input, opts);
  const limit = pixelLimit(opts);
  if (typeof input !== 'string' && !(input instanceof Uint8Array)) return checkRaw(input, name, limit, opts);
  return decodeWhole(await open(input, opts, name, limit));
}

/** What decodeRows feeds: the rows and columns it wants, then those rows in order (RGB, from byte `at`). */
export interface RowConsumer {
  readonly rowFirst: number;
  readonly rowEnd: number;
  readonly colFirst: number;
  readonly colEnd: number;
  push(y: number, rgb: Uint8Array, at: number): void;
}

/** Reads `length` bytes at `position` into the start of buf (a short read means the file was cut). */
async function readFully(fh: FileHandle, buf: Uint8Array, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) throw new Error('the decoded temporary file is shorter than its header says');
    done += bytesRead;
  }
}

/** Bytes read from the temporary file per step (a strip of rows). */
const STRIP_BYTES = 1 << 20;

/**
 * Decodes an image and feeds the rows and columns `consumer(width, height)` asks for, top to bottom, in bounded
 * memory: images whose decoded samples take at most `wholeBytes` are decoded in memory; larger ones are written
 * by libvips, row by row, to an uncompressed temporary file (libvips' own .v format, deleted afterwards), from
 * which only the wanted window is read, a strip at a time. Either way the pixels are the same as decodeToRgb's.
 */
export async function decodeRows<C extends RowConsumer>(
  input: ImageInput,
  opts: DecodeOptions,
  wholeBytes: number,
  consumer: (width: number, height: number) => C,
): Promise<{ consumer: C; width: number; height: number }> {
  const name = describeInput(input, opts);
  const limit = pixelLimit(opts);
  const feedWhole = (rgb: RgbImage) => {
    const c = consumer(rgb.width, rgb.height);
    for (let y = c.rowFirst; y < c.rowEnd; y++) c.push(y, rgb.data, (y * rgb.width + c.colFirst) * 3);
    return { consumer: c, width: rgb.width, height: rgb.height };
  };
  if (typeof input !== 'string' && !(input instanceof Uint8Array))
    return feedWhole(checkRaw(input, name, limit, opts));
  const o = await open(input, opts, name, limit);
  if (o.width * o.height * o.bands * o.sampleBytes <= wholeBytes) return feedWhole(await decodeWhole(o));

  // A private directory (mode 0700): the decoded pixels are as private as the image.
  let dir: string;
  try {
    dir = await mkdtemp(path.join(os.tmpdir(), 'clipcap-decode-'));
  } catch (e) {
    throw new UserError(
      `${name}: cannot create a temporary directory in ${safeText(os.tmpdir(), 200)} (${safeText(errorMessage(e), 200)}); point TMPDIR at a writable folder`,
      { cause: e },
    );
  }
  const file = path.join(dir, 'pixels.v');
  try {
    let info: sharp.OutputInfo;
    try {
      info = await o.pipeline.toFile(file);
    } catch (e) {
      throw await asUserError(e, o.name, o.limit, o.bytes, o.sharpOptions);
    }
    const c = consumer(info.width, info.height);
    const fh = await fsOpen(file, 'r');
    try {
      // libvips' .v file: a 64-byte header (band format at byte 20: 0 uchar, 2 ushort), then the samples,
      // row-major and band-interleaved, in this machine's byte order.
      const header = new Uint8Array(64);
      await fh.read(header, 0, 64, 0);
      const view = new DataView(header.buffer);
      const bands = view.getUint32(12, true);
      const sampleBytes = view.getUint32(20, true) === 2 ? 2 : 1;
      if (sampleBytes !== o.sampleBytes || bands < 1 || view.getUint32(4, true) !== info.width)
        throw new Error(`unexpected decoded layout (${bands} bands of ${sampleBytes} bytes)`);
      const pixel = bands * sampleBytes;
      const cols = c.colEnd - c.colFirst;
      // Whole rows when the window is most of the row (one read per strip), else the window of each row.
      const whole = cols * 2 >= info.width;
      const rowBytes = (whole ? info.width : cols) * pixel;
      const stripRows = Math.max(1, Math.floor(STRIP_BYTES / rowBytes));
      const buf = new Uint8Array(Math.min(stripRows, c.rowEnd - c.rowFirst) * rowBytes);
      for (let y0 = c.rowFirst; y0 < c.rowEnd; y0 += stripRows) {
        const n = Math.min(stripRows, c.rowEnd - y0);
        if (whole) {
          await readFully(fh, buf, n * rowBytes, 64 + y0 * info.width * pixel);
        } else {
          for (let r = 0; r < n; r++)
            await readFully(
              fh,
              buf.subarray(r * rowBytes),
              rowBytes,
              64 + ((y0 + r) * info.width + c.colFirst) * pixel,
            );
        }
        const rgb = toRgb(o.conv, buf, bands, n * (whole ? info.width : cols));
        for (let r = 0; r < n; r++)
          c.push(y0 + r, rgb, (r * (whole ? info.width : cols) + (whole ? c.colFirst : 0)) * 3);
      }
    } finally {
      await fh.close();
    }
    return { consumer: c, width: info.width, height: info.height };
  } catch (e) {
    if (e instanceof UserError || e instanceof RangeError) throw e;
    throw new UserError(
      `${name}: cannot stage the decoded image in ${safeText(os.tmpdir(), 200)} (${safeText(errorMessage(e), 200)}); free space there or point TMPDIR elsewhere`,
      { cause: e },
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
