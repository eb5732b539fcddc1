/**
 * The one interface every compute backend implements (see DESIGN.md, "Engine").
 *
 * Model code only ever calls these methods: it never indexes activation storage, so a backend that keeps
 * tensors resident on a device (CUDA, WebGPU) can be added without touching the models. Host data crosses
 * the boundary only through `upload` / `download` (inputs, weights, final logits, scalar losses), and reads
 * are asynchronous (a WebGPU backend cannot read synchronously; the CPU backends resolve at once).
 *
 * Every backend is a `DeviceBackend` (checked.ts): one storage-agnostic layer that checks every argument and
 * shape, counts live memory and resolves each op into the sizes a `Device` (device.ts) computes with. A new
 * backend implements `Device` only; test/engine/async-backend.ts is one written against that alone.
 *
 * Conventions:
 * - Shapes are row-major; the last axis is contiguous. "Rows" means all leading axes flattened.
 * - Ops return new tensors unless they say "in place". `out` + `accumulate` exist where gradients need them.
 * - Integer tensors (`i32`) hold token ids / indices only.
 * - Unsupported combinations throw `UnsupportedOpError`; bad shapes throw `ShapeError` before any work.
 */
import type { Tensor, DType } from './tensor.js';

export class UnsupportedOpError extends Error {
  constructor(backend: string, op: string, why: string) {
    super(`${backend} backend: ${op} is not supported (${why})`);
    this.name = 'UnsupportedOpError';
  }
}

export class ShapeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ShapeError';
  }
}

export interface MatmulOptions {
  /** Use Aᵀ: A is stored (..., K, M). */
  transA?: boolean;
  /** Use Bᵀ: B is stored (..., N, K) (the PyTorch nn.Linear weight layout). */
  transB?: boolean;
  /** Bias of shape (N), added to every output row. */
  bias?: Tensor;
  /** Write into this tensor (shape (..., M, N)) instead of allocating. */
  out?: Tensor;
  /** With `out`: out += A·B instead of out = A·B (gradient accumulation). */
  accumulate?: boolean;
  /** Scale of the product: out = alpha·A·B (+ bias). Default 1. */
  alpha?: number;
  /**
   * An activation applied to every output after the bias: out = f(alpha·A·B + bias), the values of
   * activation(kind, matmul(...)) in one pass (not with accumulate). A device may decline it
   * (supports('matmulActivation')): models then call activation after matmul.
   */
  activation?: ActivationKind;
}

export interface AttentionOptions {
  /** Number of heads; q/k/v channels C = nHead · headDim, heads interleaved as GPT-2 / CLIP store them. */
  nHead: number;
  /**
   * Causal: query i (absolute position pastLength + i, where pastLength = kvLength - Tq) may attend
   * keys 0..pastLength + i. This also serves incremental decoding against a KV cache.
   */
  causal?: boolean;
  /** Key padding mask (B, Tk) as f32: 1 = attend, 0 = masked. Rows with every key masked give zeros. */
  keyMask?: Tensor;
  /** Use only the first kvLength rows of k/v along the sequence axis (a preallocated KV cache). */
  kvLength?: number;
  /** Score scale; default 1/sqrt(headDim). */
  scale?: number;
  /**
   * Train-mode dropout on the softmax probabilities (Hugging Face GPT2Attention's attn_dropout), applied
   * before they multiply V: p'[i] = p[i] · keep(i) / (1 - p) with keep(i) = mulberry32At(seed, i) >= p
   * (util/random.ts, the generator of the `dropout` op), where i = ((b·nHead + h)·Tq + query)·Tk + key
   * is the flat index into (B, nHead, Tq, Tk) with Tk the stored rows of k/v (not kvLength). The mask is a
   * pure function of (seed, i), so it is identical on every backend and thread count; attentionBackward gets
   * the same option and regenerates it (the one dropout rule: masks are regenerated, never returned).
   * p in [0, 1), seed an integer (only its low 32 bits matter); absent or p = 0: no dropout.
   */
  dropout?: { p: number; seed: number };
}

/**
 * What a recorded attention forward keeps for its backward: opaque, chosen by the backend (the host
 * backends keep the softmax probabilities; a fused flash-style kernel would keep per-row log-sum-exps).
 * Its tensors are counted and scoped like any other; `free()` releases them.
 */
export class AttentionSaved {
  /** @internal Use the backend's attention(…, { record: true }). */
  constructor(readonly tensors: readonly Tensor[]) {}

  free(): void {
    for (const t of this.tensors) t.free();
  }
}

export interface AttentionResult {
  /** (B, Tq, C) */
  out: Tensor;
  /** With `record`: what attentionBackward needs besides q, k, v (opaque). */
  saved?: AttentionSaved;
}

export interface AttentionGrads {
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
}

export interface LayerNormResult {
  /** (rows, C) same shape as x */
  y: Tensor;
  /** (rows) per-row mean and 1/sqrt(var + eps), kept for backward */
  mean: Tensor;
  rstd: Tensor;
}

export interface AdamWOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step number, for bias correction. */
  step: number;
}

/** logSoftmaxTopK's result: per row, the k largest log-probabilities, best first. */
export interface TopKResult {
  /** (rows, k) f32 log-probabilities, descending; equal values keep the lower vocabulary index first. */
  values: Tensor;
  /** (rows, k) i32 vocabulary indices of `values`. */
  indices: Tensor;
}

/** Weight-only reduced precision (quantizeWeight): bf16, or int8 with one scale per output channel. */
export type WeightFormat = 'bf16' | 'int8';

/** packWeight options. */
export interface PackWeightOptions {
  /** The transB of the products that will read the weight (true: w is (N, K), nn.Linear's layout). */
  transB: boolean;
}

/** conv2d options. Pairs are (height, width); a single number applies to both. */
export interface Conv2dOptions {
  /** Default 1. */
  stride?: number | readonly [number, number];
  /** Zero padding on each side; default 0. */
  padding?: number | readonly [number, number];
  /** Bias (O), added to every output pixel. */
  bias?: Tensor;
  /** Added to the result before the ReLU: (B, Ho, Wo, O), the residual branch of a ResNet block. */
  residual?: Tensor;
  /** Apply ReLU to the result (conv + bias (+ residual) + ReLU in one pass, the ResNet pattern). */
  relu?: boolean;
}

/** avgPool2d options (PyTorch's nn.AvgPool2d with count_include_pad=True, ceil_mode=False). */
export interface Pool2dOptions {
  kernel: number | readonly [number, number];
  /** Default: the kernel size (as nn.AvgPool2d). */
  stride?: number | readonly [number, number];
  /** Zero padding on each side, counted in the mean (count_include_pad); default 0. */
  padding?: number | readonly [number, number];
}

/** Elementwise activations; each backward takes the forward's input, except tanh's (its output). */
export type ActivationKind = 'gelu' | 'quickGelu' | 'relu' | 'tanh';

/** Elementwise binary ops; b broadcasts over a when b's shape is a suffix of a's. */
export type BinaryKind = 'add' | 'mul';

/** Every op of the interface, for `supports`. */
export const OPS = [
  'matmul',
  // matmul with MatmulOptions.activation
  'matmulActivation',
  'binary',
  'addInPlace',
  'sumRows',
  'activation',
  'activationBackward',
  'layerNorm',
  'layerNormBackward',
  'attention',
  'attentionBackward',
  'attentionQkv',
  'embedding',
  'embeddingBackward',
  'crossEntropy',
  'crossEntropyBackward',
  'adamw',
  'dropout',
  'concat',
  'slice',
  'writeSlice',
  'indexSelect',
  'logSoftmaxTopK',
  'copyRows',
  'quantizeWeight',
  'packWeight',
  'conv2d',
  'avgPool2d',
] as const;
export type OpName = (typeof OPS)[number];

/** Live memory a backend holds: tensors allocated and not yet freed (views not counted). */
export interface MemoryInfo {
  tensors: number;
  bytes: number;
}

export interface Backend {
  readonly name: string;
  /** Whether this backend implements `op` (ops it lacks throw UnsupportedOpError). */
  supports(op: OpName): boolean;

  // ---- memory ----
  /** A new zero-filled tensor. */
  zeros(shape: readonly number[], dtype?: DType): Tensor;
  /** Copy host data into a new tensor. data.length must equal the shape's size. */
  upload(data: Float32Array | Int32Array, shape: readonly number[]): Tensor;
  /** Copy a tensor's contents to the host; resolves once the backend's queued work has produced them. */
  download(t: Tensor): Promise<Float32Array | Int32Array>;
  /**
   * Release a tensor's storage now. Freeing a view (Tensor.view) releases nothing: its base owns the storage.
   * Freeing twice is safe; using a freed tensor (or a view of one) throws.
   */
  free(t: Tensor): void;
  /** Fill in place with a constant. */
  fill(x: Tensor, value: number): void;
  /** Tensors and bytes allocated and not yet freed (explicitly or by a scope). */
  memory(): MemoryInfo;

  // ---- GEMM ----
  /**
   * C = alpha·op(A)·op(B) (+ bias). A: (M,K) or batched (Bt,M,K); B: (K,N), or (Bt,K,N) batched
   * (a 2-D B is shared by every batch). Leading axes of a 2+-D A with a 2-D B are flattened into M.
   */
  matmul(a: Tensor, b: Tensor, opts?: MatmulOptions): Tensor;

  // ---- elementwise ----
  /** a + b or a·b, b broadcast over a's leading axes (b's shape is a suffix of a's). */
  binary(kind: BinaryKind, a: Tensor, b: Tensor): Tensor;
  /** a += alpha·b in place (same shapes). */
  addInPlace(a: Tensor, b: Tensor, alpha?: number): void;
  /** Sum over rows: x (rows, C) -> (C); into `out` (accumulating when asked) for bias gradients. */
  sumRows(x: Tensor, out?: Tensor, accumulate?: boolean): Tensor;
  /**
   * y = f(x): gelu (tanh approximation, GPT-2 gelu_new), quickGelu (x·sigmoid(1.702x), CLIP), relu, tanh.
   */
  activation(kind: ActivationKind, x: Tensor): Tensor;
  /** dx = dy ⊙ f'(saved), saved being the forward's input (tanh: its output y). */
  activationBackward(kind: ActivationKind, dy: Tensor, saved: Tensor): Tensor;

  // ---- normalization ----
  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number): LayerNormResult;
  /** Returns dx; accumulates into dweight and dbias. */
  layerNormBackward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    mean: Tensor,
    rstd: Tensor,
    dweight: Tensor,
    dbias: Tensor,
  ): Tensor;

  // ---- attention: q (B,Tq,C), k/v (B,Tk,C) ----
  /** With `record`, also returns the opaque state attentionBackward needs. */
  attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions & { record?: boolean }): AttentionResult;
  /** The forward's q, k, v, options and saved state; dk/dv have k/v's stored shape (zero past kvLength). */
  attentionBackward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    saved: AttentionSaved,
    opts: AttentionOptions,
  ): AttentionGrads;

  /**
   * Self-attention from one fused projection, forward only (inference): qkv (B, T, 3C) holds [q | k | v]
   * per row (channels [0, C), [C, 2C), [2C, 3C)), read in place instead of sliced into three tensors.
   * Returns (B, T, C) with the values of attention(q, k, v, opts) for those three blocks. opts.kvLength is
   * not allowed (T keys, all in use). A device may decline it (supports('attentionQkv')): models then slice.
   */
  attentionQkv(qkv: Tensor, opts: AttentionOptions): Tensor;

  // ---- embeddings ----
  /** ids (…) i32, table (V, C) -> (…, C). Out-of-range ids throw. */
  embedding(ids: Tensor, table: Tensor): Tensor;
  /** dtable[ids[i]] += dy[i] (scatter-add). */
  embeddingBackward(dy: Tensor, ids: Tensor, dtable: Tensor): void;

  // ---- loss ----
  /**
   * logits (N, V), targets (N) i32. Mean cross-entropy over targets != ignoreIndex (NaN when none counts),
   * read asynchronously (as a double: the sum over rows is not rounded to float32).
   */
  crossEntropy(logits: Tensor, targets: Tensor, ignoreIndex: number): Promise<number>;
  /**
   * d(loss·lossScale)/dlogits for the mean loss above: (softmax - onehot) / count · lossScale on counted
   * rows, 0 on ignored rows (all zero when no row counts). (N, V).
   */
  crossEntropyBackward(logits: Tensor, targets: Tensor, ignoreIndex: number, lossScale?: number): Tensor;

  // ---- optimizer ----
  /** One AdamW step in place (PyTorch semantics: decoupled weight decay p -= lr·wd·p first). */
  adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, opts: AdamWOptions): void;

  // ---- dropout ----
  /**
   * Inverted dropout: y = x·keep, keep(i) = 1/(1-p) when mulberry32At(seed, i) >= p, else 0. The mask is a
   * pure function of (seed, i) and is never returned: the backward is the same op on dy with the same seed.
   */
  dropout(x: Tensor, p: number, seed: number): Tensor;

  // ---- layout ----
  /** Concatenate along `axis` (all other axes equal). */
  concat(xs: readonly Tensor[], axis: number): Tensor;
  /** x[..., start:end, ...] along `axis`, as a new tensor. */
  slice(x: Tensor, axis: number, start: number, end: number): Tensor;
  /** Write src into dst[..., offset:offset+len, ...] along `axis`, in place (KV caches). */
  writeSlice(dst: Tensor, src: Tensor, axis: number, offset: number): void;
  /** Rows of x along axis 0 picked by host indices (beam reordering). */
  indexSelect(x: Tensor, indices: readonly number[]): Tensor;

  // ---- decoding (beam search's per-step work on the backend; reference: reference-decoding.ts) ----
  /**
   * The k largest of log(softmax(x / T)) per row of logits x (rows, V), best first, ties to the lower index:
   * with s = float32(x / T) (T = temperature when > 0, else 1) and lse = log Σ exp(s) over the row computed
   * in float64 in index order, value = float32(s - lse): the numbers the official beam search's
   * `logits.softmax(-1).log()` approximates, correctly rounded (what generate/logits.ts logSoftmaxRow makes).
   * 1 <= k <= V. NaN never ranks: a row holding NaN (its lse is NaN) gives -Infinity at index 0. Only (rows, k)
   * values cross to the host instead of every logit.
   */
  logSoftmaxTopK(logits: Tensor, k: number, temperature: number): TopKResult;
  /**
   * dst[i, 0:length] = src[indices[i], 0:length] along axis 1, for every row i of dst (rank >= 2, equal
   * trailing axes, dst's axis 0 of indices.length); positions from `length` on are left as they are. A KV
   * cache reorders its beams into a second buffer with it, copying only the filled positions.
   */
  copyRows(dst: Tensor, src: Tensor, indices: readonly number[], length: number): void;
  /**
   * Weight-only reduced precision for inference: a new f32 tensor holding w (rank 2) rounded to `format`,
   * which is the weight every op then sees (it is defined by its f32 values, so every backend computes with
   * the same numbers):
   * - 'bf16': each value rounded to the nearest bfloat16 (ties to even; NaN stays NaN);
   * - 'int8': per output channel c (the rows of w for channelAxis 0, its columns for 1) scale =
   *   fround(max|w_c| / 127), q = round-half-even(fround(w / scale)) in [-127, 127], value = fround(q · scale)
   *   (a channel of zeros stays zero); every value must be finite.
   * A backend may also keep the compact values and read them where a product streams the weight (decoding
   * steps of a few rows), accumulating in f32: the result is the f32 product with the rounded weight up to
   * the order of the sums. The tensor (and every view of it) is read-only on every backend: an op that would
   * write to it throws ShapeError (use it as matmul's b, an embedding table, or download it).
   */
  quantizeWeight(w: Tensor, format: WeightFormat, channelAxis: 0 | 1): Tensor;
  /**
   * A constant weight w (rank 2) handed to the device for products: a new read-only tensor with w's shape
   * and values whose storage the device lays out as its GEMM reads B (native: the blocked GEMM's panels,
   * so products stop repacking the weight on every call; reference: a plain copy). It may only be used as
   * matmul's b with the given transB (2-D, not a view of another shape) and downloaded (which gives w's
   * values); every other use throws ShapeError. Products give the same values as with w, up to the order
   * of the sums. The caller may free w afterwards (inference models do, so memory does not double).
   */
  packWeight(w: Tensor, opts: PackWeightOptions): Tensor;
  // ---- convolution and pooling (image towers: OpenAI's ModifiedResNet CLIP); forward only ----
  // Images are NHWC (channels last), so a 1x1 convolution is one GEMM over pixels and per-channel vectors
  // broadcast as suffixes (binary).
  /**
   * 2-D cross-correlation (PyTorch's Conv2d, groups 1, dilation 1): x (B, H, W, C), weight (O, kh, kw, C)
   * ("OHWI": PyTorch's (O, C, kh, kw) permuted, once, at load time) -> (B, Ho, Wo, O) with
   * Ho = floor((H + 2·padH - kh) / strideH) + 1 (likewise Wo); + bias; + residual; then ReLU when asked.
   */
  conv2d(x: Tensor, weight: Tensor, opts?: Conv2dOptions): Tensor;
  /** Mean over each window of x (B, H, W, C) -> (B, Ho, Wo, C); padding counts as zeros in the mean. */
  avgPool2d(x: Tensor, opts: Pool2dOptions): Tensor;
}
