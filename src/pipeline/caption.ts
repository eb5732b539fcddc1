/**
 * The captioning library API: images (or CLIP embeddings) in, captions out, in bounded batches.
 *
 * Data flow per batch: decode + preprocess the images (sharp, concurrently) -> CLIP image tower (N, D) ->
 * mapper -> prefix (N, K, E) -> decoder over GPT-2 with a KV cache -> GPT-2 BPE decode. CLIP is loaded only
 * when an image input arrives, so captioning embeddings never touches CLIP's weights.
 *
 * @example
 * ```ts
 * import { ClipCap } from 'clipcap';
 * const model = await ClipCap.fromPretrained('coco');
 * const [r] = await model.caption(['photo.jpg']);
 * console.log(r.error ?? r.caption);
 * model.dispose();
 * ```
 */
import type { Backend } from '../engine/backend.js';
import type { Tensor } from '../engine/tensor.js';
import { generate } from '../generate/index.js';
import { resolveDecodeOptions, type ResolvedDecodeOptions } from '../generate/options.js';
import { inputStream } from '../util/random.js';
import type { GenerationResult } from '../generate/types.js';
import { preprocessImage, type RgbImage } from '../image/index.js';
import { UserError } from '../util/errors.js';
import { checkOptionKeys, optionKeys } from '../util/options.js';
import { loadCaptionerParts, PRETRAINED, type ClipCapLoadOptions, type PretrainedName } from './load.js';
import type {
  CaptionCandidate,
  CaptionInput,
  CaptionOptions,
  CaptionResult,
  EmbeddingInput,
} from './types.js';

import type { CaptionerParts, ImageEncoder } from './parts.js';
export type { CaptionerParts, ImageEncoder, PrefixModel, TokenDecoder } from './parts.js';

const DEFAULT_BATCH_SIZE = 8;

/** Every key of the option objects, for the run-time check of JavaScript callers. */
const LOAD_KEYS = optionKeys<ClipCapLoadOptions>({
  model: true,
  clipcap: true,
  clip: true,
  gpt2: true,
  backend: true,
  offline: true,
  revision: true,
  normalizePrefix: true,
  weights: true,
});
const CAPTION_KEYS = optionKeys<CaptionOptions>({
  method: true,
  beamSize: true,
  maxTokens: true,
  stop: true,
  temperature: true,
  topP: true,
  seed: true,
  numCaptions: true,
  batchSize: true,
  limitInputPixels: true,
  applyExif: true,
  onProgress: true,
});

interface Prepared {
  index: number;
  image?: string;
  /** CLIP embedding (D) or preprocessed pixels (3, S, S); exactly one unless failed. */
  embedding?: Float32Array;
  pixels?: Float32Array;
  error?: string;
}

function isEmbeddingInput(x: CaptionInput): x is EmbeddingInput {
  return typeof x === 'object' && x !== null && !(x instanceof Uint8Array) && 'embedding' in x;
}

function isRgbImage(x: CaptionInput): x is RgbImage {
  return typeof x === 'object' && x !== null && !(x instanceof Uint8Array) && 'data' in x && 'width' in x;
}

function describe(input: CaptionInput, index: number): string {
  if (typeof input === 'string') return input;
  if (isEmbeddingInput(input)) return input.name ?? `embedding ${index}`;
  return `input ${index}`;
}

export class ClipCap {
  private clip: Promise<ImageEncoder> | null = null;
  private disposed = false;

  /** Use ClipCap.load / fromPretrained; this assembles already-loaded parts. */
  constructor(readonly parts: CaptionerParts) {}

  /**
   * Load a captioner from files or hub repos (see ClipCapLoadOptions). CLIP is loaded on the first image.
   *
   * @example
   * ```ts
   * const model = await ClipCap.load({ clipcap: 'coco_weights.pt', clip: 'openai/clip-vit-base-patch32' });
   * ```
   */
  static async load(options: ClipCapLoadOptions = {}): Promise<ClipCap> {
    checkOptionKeys(options, LOAD_KEYS, 'ClipCap.load options');
    return new ClipCap(await loadCaptionerParts(options));
  }

  /**
   * One of the published checkpoints (COCO or Conceptual Captions MLP + fine-tuned GPT-2), with CLIP
   * ViT-B/32, through the Hugging Face cache (downloaded on first use unless `offline`).
   *
   * @example
   * ```ts
   * const model = await ClipCap.fromPretrained('coco');
   * const [r] = await model.caption(['photo.jpg']);
   * ```
   */
  static async fromPretrained(
    name: PretrainedName,
    options: Omit<ClipCapLoadOptions, 'model' | 'clipcap'> = {},
  ): Promise<ClipCap> {
    checkOptionKeys(
      options,
      LOAD_KEYS.filter((k) => k !== 'model' && k !== 'clipcap'),
      'ClipCap.fromPretrained options',
    );
    if (!(name in PRETRAINED))
      throw new UserError(`unknown pretrained model "${String(name)}": use coco or conceptual`);
    return ClipCap.load({ ...options, model: name });
  }

  get backend(): Backend {
    return this.parts.backend;
  }

  /** Width D of the CLIP embeddings the mapper takes. */
  get embeddingSize(): number {
    return this.parts.mapper.prefixSize;
  }

  /** The CLIP image encoder, loaded on first call. */
  async imageEncoder(): Promise<ImageEncoder> {
    this.checkAlive();
    const load = this.parts.loadClip;
    if (!load)
      throw new UserError(
        `${this.parts.description}: no CLIP model was given, so only embeddings can be captioned`,
      );
    if (!this.clip) {
      this.clip = load().then((enc) => {
        if (enc.projectionDim !== this.embeddingSize)
          throw new UserError(
            `CLIP makes ${enc.projectionDim}-d embeddings but ${this.parts.description} expects ${this.embeddingSize}-d: ` +
              `use the CLIP model it was trained with (--clip)`,
          );
        return enc;
      });
      this.clip.catch(() => {
        this.clip = null; // a later call may retry (e.g. after the network comes back)
      });
    }
    return this.clip;
  }

  /**
   * Caption every input; one result per input, in order. A bad input gets `error` and the rest continue.
   *
   * @example
   * ```ts
   * const results = await model.caption(['a.jpg', fs.readFileSync('b.png')], { method: 'greedy' });
   * for (const r of results) console.log(r.index, r.error ?? r.caption);
   * ```
   */
  async caption(inputs: readonly CaptionInput[], options: CaptionOptions = {}): Promise<CaptionResult[]> {
    checkOptionKeys(options, CAPTION_KEYS, 'caption options');
    const out: CaptionResult[] = [];
    for await (const r of this.captionStream(inputs, options)) out.push(r);
    return out;
  }

  /**
   * Caption a (possibly long or lazily produced) sequence of inputs in bounded batches, yielding results in
   * input order as each batch finishes. The next batch's images are decoded while the current one runs.
   *
   * @example
   * ```ts
   * for await (const r of model.captionStream(paths, { batchSize: 16 })) console.log(r.image, r.caption);
   * ```
   */
  async *captionStream(
    inputs: Iterable<CaptionInput> | AsyncIterable<CaptionInput>,
    options: CaptionOptions = {},
  ): AsyncGenerator<CaptionResult> {
    this.checkAlive();
    checkOptionKeys(options, CAPTION_KEYS, 'captionStream options');
    const decode = resolveDecodeOptions(options, this.parts.lm.vocabSize);
    const batchSize = options.batchSize ?? DEFAULT_BATCH_SIZE;
    if (!Number.isInteger(batchSize) || batchSize < 1)
      throw new UserError(`batch size must be a positive integer, got ${batchSize}`);
    const total = Array.isArray(inputs) ? inputs.length : undefined;
    let done = 0;
    let next: Promise<Prepared[]> | null = null;
    const batches = batchesOf(inputs, batchSize);
    let start = 0;
    const prepareNext = async (): Promise<Prepared[] | null> => {
      const b = await batches.next();
      if (b.done) return null;
      const first = start;
      start += b.value.length;
      return this.prepare(b.value, first, options);
    };
    let current = await prepareNext();
    while (current) {
      // Decode the next batch's images (sharp's thread pool) while this one computes.
      next = prepareNext().then((p) => p ?? []);
      next.catch(() => undefined);
      const results = await this.run(current, decode);
      for (const r of results) yield r;
      done += results.length;
      options.onProgress?.(done, total);
      const n: Prepared[] = await next;
      current = n.length > 0 ? n : null;
    }
  }

  /** Preprocess one batch: images decoded concurrently; each failure stays with its entry. */
  private async prepare(batch: CaptionInput[], first: number, options: CaptionOptions): Promise<Prepared[]> {
    // A CLIP that cannot load (missing weights, no network) would fail every image alike: that is one fatal
    // error, raised here, not a per-image one.
    const enc = batch.some((x) => !isEmbeddingInput(x)) ? await this.imageEncoder() : null;
    return Promise.all(
      batch.map(async (input, j): Promise<Prepared> => {
        const index = first + j;
        const image = typeof input === 'string' ? input : isEmbeddingInput(input) ? input.name : undefined;
        try {
          if (isEmbeddingInput(input)) {
            const e = Float32Array.from(input.embedding);
            if (e.length !== this.embeddingSize)
              throw new UserError(
                `${describe(input, index)}: the embedding has ${e.length} values but the model expects ${this.embeddingSize}`,
              );
            if (!e.every(Number.isFinite))
              throw new UserError(`${describe(input, index)}: the embedding holds NaN or infinite values`);
            return { index, image, embedding: e };
          }
          if (typeof input !== 'string' && !(input instanceof Uint8Array) && !isRgbImage(input))
            throw new UserError(`input ${index}: not a path, image bytes, RGB pixels or { embedding }`);
          const p = await preprocessImage(input, {
            size: (enc as ImageEncoder).imageSize,
            limitInputPixels: options.limitInputPixels,
            applyExif: options.applyExif,
            name: describe(input, index),
          });
          return { index, image, pixels: p.pixelValues };
        } catch (e) {
          if (!(e instanceof UserError)) throw e;
          return { index, image, error: e.message };
        }
      }),
    );
  }

  /** Encode, map and decode one prepared batch. */
  private async run(batch: Prepared[], decode: ResolvedDecodeOptions): Promise<CaptionResult[]> {
    const ok = batch.filter((p) => !p.error);
    const results = new Map<number, CaptionResult>();
    for (const p of batch)
      if (p.error) results.set(p.index, { index: p.index, image: p.image, error: p.error });
    if (ok.length > 0) {
      const embeds = await this.embed(ok);
      const b = this.parts.backend;
      let prefix: Tensor | undefined;
      let generated: GenerationResult[];
      try {
        prefix = await this.parts.mapper.prefixEmbeddings(embeds); // (N, K, E)
        // Sampling streams come from each input's content (its preprocessed pixels or its embedding), so a
        // sampled caption does not depend on the input's position or on what else shares its batch.
        const streams =
          decode.method === 'nucleus'
            ? ok.map((p) => inputStream((p.pixels ?? p.embedding) as Float32Array))
            : undefined;
        generated = await generate(this.parts.lm, prefix, decode, { streams });
      } finally {
        b.free(embeds);
        if (prefix) b.free(prefix);
      }
      ok.forEach((p, j) => results.set(p.index, this.toResult(p, generated[j], decode)));
    }
    return batch.map((p) => results.get(p.index) as CaptionResult);
  }

  /** (N, D) CLIP embeddings of a batch: images through CLIP, embeddings as given, in batch order. */
  private async embed(ok: Prepared[]): Promise<Tensor> {
    const b = this.parts.backend;
    const D = this.embeddingSize;
    const host = new Float32Array(ok.length * D);
    const images = ok.filter((p) => p.pixels);
    if (images.length > 0) {
      const enc = await this.imageEncoder();
      const S = enc.imageSize;
      const plane = 3 * S * S;
      const pix = new Float32Array(images.length * plane);
      images.forEach((p, i) => pix.set(p.pixels as Float32Array, i * plane));
      let e: Tensor | undefined;
      try {
        e = enc.encodeImages(pix); // (n, D)
        if (images.length === ok.length) return e;
        const data = (await e.read()) as Float32Array;
        let i = 0;
        ok.forEach((p, j) => {
          if (p.pixels) host.set(data.subarray(i * D, ++i * D), j * D);
        });
      } finally {
        if (e && images.length !== ok.length) b.free(e);
      }
    }
    ok.forEach((p, j) => {
      if (p.embedding) host.set(p.embedding, j * D);
    });
    return b.upload(host, [ok.length, D]);
  }

  private toResult(p: Prepared, g: GenerationResult, decode: ResolvedDecodeOptions): CaptionResult {
    const tok = this.parts.tokenizer;
    const candidates: CaptionCandidate[] = g.sequences.map((s) => ({
      caption: tok.decode(s.tokens),
      tokens: s.tokens,
      ...(s.score !== undefined ? { score: s.score } : {}),
    }));
    const best = candidates[0];
    return {
      index: p.index,
      ...(p.image !== undefined ? { image: p.image } : {}),
      caption: best.caption,
      tokens: best.tokens,
      ...(decode.method === 'greedy' ? {} : { candidates }),
    };
  }

  /** Release every weight (CLIP too, when it was loaded). The instance cannot be used afterwards. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.parts.dispose();
    const clip = this.clip;
    this.clip = null;
    clip?.then(
      (c) => c.dispose(),
      () => undefined,
    );
  }

  /** `using model = await ClipCap.load(...)` disposes the model when the block ends. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  private checkAlive(): void {
    if (this.disposed) throw new Error('ClipCap: used after dispose()');
  }
}

/** Group an (async) iterable into arrays of at most n items, without reading ahead further. */
async function* batchesOf<T>(items: Iterable<T> | AsyncIterable<T>, n: number): AsyncGenerator<T[]> {
  let batch: T[] = [];
  for await (const x of items) {
    batch.push(x);
    if (batch.length === n) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}
