/**
 * The native backend: the Backend interface on top of the C++ addon (native/*.cc, built at install into
 * build/Release/clipcap_native.node by scripts/build-native.mjs).
 *
 * - Storage is the same as the reference backend's: one Float32Array / Int32Array per tensor, owned by the
 *   JS garbage collector and passed zero-copy to C++ (Node-API typed arrays). Kernels run synchronously on
 *   the addon's thread pool (CLIPCAP_THREADS threads, default: all cores).
 * - Every argument (backend, dtype, shape, range, aliasing) is checked before the native call by checked.ts,
 *   the same code and messages as every backend's, plus what only the addon needs (finite scalars, int32
 *   indices): the addon re-checks buffer lengths only as a last line of defence, and its errors arrive as
 *   JS exceptions, never a crash.
 * - Semantics are the reference backend's (src/engine/reference.ts, the oracle): test/engine/native.test.ts
 *   compares every kernel with it.
 * - The layout ops (concat, slice, writeSlice, indexSelect, copyRows) and fill are host-backend.ts's
 *   TypedArray copies, as fast in JS as in C++.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ShapeError } from './backend.js';
import type { Backend } from './backend.js';
import { HostBackend } from './host-backend.js';
import type {
  ActivationKind,
  AttentionDims,
  CompactWeight,
  Conv2dDims,
  GemmArgs,
  HostKernels,
} from './host-backend.js';
import { requireInteger } from './checks.js';

type F32 = Float32Array;
type I32 = Int32Array;

/** What the addon reports about itself. */
export interface NativeInfo {
  /** Threads in the kernel pool (the caller included). */
  threads: number;
  /** The GEMM micro-kernel in use. */
  gemmKernel: 'avx2' | 'portable';
  /** Whether this CPU has AVX2 and FMA. */
  avx2: boolean;
  /** The conv2d kernel in use: AVX-512 (native/conv_avx512.cc) or im2col on the GEMM. */
  convKernel: 'avx512' | 'gemm';
  /** Whether this CPU has AVX-512F (and AVX2 + FMA). */
  avx512: boolean;
}

/** The addon's exports (native/addon.cc). Sizes are element counts; every array is contiguous. */
interface NativeAddon extends Pick<
  HostKernels,
  'axpy' | 'sumRows' | 'layerNorm' | 'layerNormBackward' | 'embedding' | 'embeddingBackward'
> {
  /** The mask output is optional (null: only y). */
  dropout(x: F32, p: number, seed: number, y: F32, mask: F32 | null): void;
  info(): NativeInfo;
  /** native/decoding.cc */
  logSoftmaxTopK(x: F32, rows: number, V: number, k: number, t: number, values: F32, indices: I32): void;
  setThreads(threads: number): number;
  setGemmKernel(kernel: 'avx2' | 'portable'): boolean;
  setConvKernel(kernel: 'avx512' | 'gemm'): boolean;
  gemm(
    A: F32,
    B: F32,
    C: F32,
    bias: F32 | null,
    M: number,
    N: number,
    K: number,
    transA: boolean,
    transB: boolean,
    alpha: number,
    accumulate: boolean,
    batch: number,
    strideA: number,
    strideB: number,
    strideC: number,
    /** B is packB's layout of op(B), shared by every batch (strideB unused). */
    packedB: boolean,
    /** Optional: C = f(result), fused into the GEMM's epilogue. */
    activation?: Activation,
  ): void;
  /** native/gemm.cc: out (packedSize floats) = op(W) packed as the blocked GEMM reads B; W (rows, cols). */
  packB(W: F32, rows: number, cols: number, transB: boolean, out: F32): void;
  /** The inverse of packB: out (rows, cols). */
  unpackB(P: F32, rows: number, cols: number, transB: boolean, out: F32): void;
  /** native/quant.cc: C = alpha·A·dequant(W) (+ bias) (+ C), A (M <= 8, K); format 0 int8, 1 bf16. */
  gemmQuant(
    A: F32,
    W: Int8Array | Uint16Array,
    scales: F32 | null,
    C: F32,
    bias: F32 | null,
    M: number,
    N: number,
    K: number,
    transB: boolean,
    alpha: number,
    accumulate: boolean,
    format: 0 | 1,
  ): void;
  binary(op: BinaryOp, a: F32, b: F32, out: F32): void;
  activation(kind: Activation, x: F32, y: F32): void;
  activationBackward(kind: Activation, dy: F32, saved: F32, dx: F32): void;
  attention(
    q: F32,
    k: F32,
    v: F32,
    keyMask: F32 | null,
    out: F32,
    probs: F32 | null,
    ...geometry: AttentionGeometry
  ): void;
  attentionQkv(qkv: F32, keyMask: F32 | null, out: F32, ...geometry: AttentionGeometry): void;
  attentionBackward(
    dout: F32,
    q: F32,
    k: F32,
    v: F32,
    probs: F32,
    dq: F32,
    dk: F32,
    dv: F32,
    ...geometry: AttentionGeometry
  ): void;
  crossEntropy(logits: F32, targets: I32, N: number, V: number, ignoreIndex: number): [number, number];
  crossEntropyBackward(
    logits: F32,
    targets: I32,
    N: number,
    V: number,
    ignoreIndex: number,
    factor: number,
    dlogits: F32,
  ): void;
  // ---- convolution and pooling (native/conv.cc) ----
  conv2d(
    x: F32,
    w: F32,
    bias: F32 | null,
    residual: F32 | null,
    y: F32,
    ...geometryAndRelu: [...ConvGeometry, boolean]
  ): void;
  avgPool2d(x: F32, y: F32, B: number, H: number, W: number, C: number, ...window: ConvWindow): void;
  adamw(
    param: F32,
    grad: F32,
    m: F32,
    v: F32,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    stepSize: number,
    bc2Sqrt: number,
  ): void;
}

/** [B, Tq, Tk, kvLength, C, nHead, scale, causal, dropoutP, dropoutSeedUint32] */
type AttentionGeometry = [number, number, number, number, number, number, number, boolean, number, number];

/** [kh, kw, strideH, strideW, padH, padW] */
type ConvWindow = [number, number, number, number, number, number];
/** [B, H, W, C, O, ...ConvWindow] */
type ConvGeometry = [number, number, number, number, number, ...ConvWindow];

const enum BinaryOp {
  Add = 0,
  Mul = 1,
}

/** Activation kinds, as native/kernels.h numbers them. */
const enum Activation {
  Gelu = 0,
  QuickGelu = 1,
  Relu = 2,
  Tanh = 3,
}

const ADDON_FILE = 'clipcap_native.node';
const HOW_TO_FIX = 'run `npm rebuild clipcap` (needs g++, make and python3)';

let loaded: { backend: NativeBackend } | { error: string } | undefined;

/**
 * Loads the addon once. Returns the backend, or a one-line reason it is unavailable with how to fix it
 * (engine/index.ts then falls back to the reference backend).
 */
export function loadNativeBackend(): { backend: Backend } | { error: string } {
  if (loaded) return loaded;
  const file = findAddon();
  if (!file) {
    loaded = {
      error: `the native addon is not built (build/Release/${ADDON_FILE} is missing): ${HOW_TO_FIX}`,
    };
    return loaded;
  }
  try {
    const addon = createRequire(import.meta.url)(file) as NativeAddon;
    if (typeof addon.gemm !== 'function' || typeof addon.info !== 'function') {
      throw new Error('it does not export the expected functions (stale build?)');
    }
    loaded = { backend: new NativeBackend(addon) };
  } catch (e) {
    const why = (e instanceof Error ? e.message : String(e)).split('\n')[0];
    loaded = { error: `the native addon at ${file} failed to load (${why}): ${HOW_TO_FIX}` };
  }
  return loaded;
}

/** build/Release/clipcap_native.node of this package, from src/engine (tsx, vitest) or dist/src/engine. */
function findAddon(): string | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const up of ['../..', '../../..']) {
    const candidate = path.resolve(here, up, 'build', 'Release', ADDON_FILE);
    if (existsSync(candidate)) return candidate;
  }
  return null;
}

function requireFinite(op: string, what: string, value: number): void {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new ShapeError(`${op}: ${what} must be a finite number, got ${String(value)}`);
  }
}

/**
 * A generator seed as the addon takes it: mulberry32At adds the seed modulo 2^32 (JS `| 0`), so only its
 * low 32 bits matter; this is that residue in [0, 2^32).
 */
function uint32(seed: number): number {
  const low = seed % 2 ** 32;
  return low < 0 ? low + 2 ** 32 : low;
}

export class NativeBackend extends HostBackend {
  /** Use loadNativeBackend(): the addon is loaded once per process. */
  constructor(private readonly addon: NativeAddon) {
    super('native', nativeKernels(addon));
  }

  // ---------------------------------------------------------------- addon controls (not in Backend)

  info(): NativeInfo {
    return this.addon.info();
  }

  /** Resizes the kernel thread pool (benchmarks compare fixed thread counts). */
  setThreads(threads: number): void {
    requireInteger('setThreads', 'threads', threads, 1, 1024);
    this.addon.setThreads(threads);
  }

  /** Picks the GEMM micro-kernel (tests cover both); false when this CPU cannot run AVX2. */
  setGemmKernel(kernel: 'avx2' | 'portable'): boolean {
    if (kernel !== 'avx2' && kernel !== 'portable') {
      throw new ShapeError(`setGemmKernel: kernel must be 'avx2' or 'portable', got ${String(kernel)}`);
    }
    return this.addon.setGemmKernel(kernel);
  }

  /**
   * Picks the conv2d kernel (tests cover both): 'avx512' (used only while the GEMM kernel is AVX2) or 'gemm'
   * (im2col on the GEMM's kernel); false when this CPU cannot run AVX-512.
   */
  setConvKernel(kernel: 'avx512' | 'gemm'): boolean {
    if (kernel !== 'avx512' && kernel !== 'gemm') {
      throw new ShapeError(`setConvKernel: kernel must be 'avx512' or 'gemm', got ${String(kernel)}`);
    }
    return this.addon.setConvKernel(kernel);
  }
}

const ACTIVATION_IDS: Record<ActivationKind, Activation> = {
  gelu: Activation.Gelu,
  quickGelu: Activation.QuickGelu,
  relu: Activation.Relu,
  tanh: Activation.Tanh,
};

/** [B, Tq, Tk, kvLength, C, nHead, scale, causal, dropoutP, dropoutSeedUint32], as the addon takes them. */
function geometry(d: AttentionDims): AttentionGeometry {
  return [d.batch, d.tq, d.tk, d.kvLen, d.channels, d.nHead, d.scale, d.causal, d.dropP, uint32(d.dropSeed)];
}

function convWindow(d: Conv2dDims): ConvWindow {
  return [d.kh, d.kw, d.strideH, d.strideW, d.padH, d.padW];
}

/** Rows up to which products read a quantized weight's compact copy (native/gemm.h kSkinnyM). */
const SKINNY_ROWS = 8;

/**
 * The kernels as addon calls. checked.ts has checked shapes, dtypes, ranges and aliasing; what is checked
 * here is only what the C++ side needs beyond that: scalars it reads as finite doubles or int32.
 */
function nativeKernels(addon: NativeAddon): HostKernels {
  // Compact copies of quantized weights, by their f32 storage (read-only, so they cannot go stale).
  const compact = new WeakMap<F32, CompactWeight>();
  /** A product, with an activation fused into its epilogue when `act` is given. */
  const gemmWith = (g: GemmArgs<F32>, act?: ActivationKind): void => {
    const { A, B, C, bias, batches, M, N, K, transA, transB, sharedB, alpha, accumulate, packedB } = g;
    const q = sharedB && !transA && batches * M <= SKINNY_ROWS ? compact.get(B) : undefined;
    // A decoding step (a few rows) streams the compact weight; int8 needs its channels to be the outputs.
    if (q && (q.format === 'bf16' || q.channelAxis === (transB ? 0 : 1))) {
      const format = q.format === 'int8' ? 0 : 1;
      addon.gemmQuant(A, q.data, q.scales, C, bias, batches * M, N, K, transB, alpha, accumulate, format);
      // the quantized product has no epilogue: the activation in place (elementwise, the same values)
      if (act !== undefined) addon.activation(ACTIVATION_IDS[act], C, C);
      return;
    }
    const fused: [] | [Activation] = act === undefined ? [] : [ACTIVATION_IDS[act]];
    if (sharedB && !transA) {
      // A shared B: A's rows of every batch are one (batches·M, K) matrix, which blocks better.
      addon.gemm(
        A,
        B,
        C,
        bias,
        batches * M,
        N,
        K,
        false,
        transB,
        alpha,
        accumulate,
        1,
        0,
        0,
        0,
        packedB,
        ...fused,
      );
    } else {
      const strideB = sharedB ? 0 : K * N;
      const strides = [M * K, strideB, M * N] as const;
      addon.gemm(
        A,
        B,
        C,
        bias,
        M,
        N,
        K,
        transA,
        transB,
        alpha,
        accumulate,
        batches,
        ...strides,
        packedB,
        ...fused,
      );
    }
  };
  return {
    keepCompact(values, c) {
      compact.set(values, c);
    },
    dropCompact(values) {
      compact.delete(values);
    },
    checkScalar(op, what, value, kind) {
      if (kind === 'int32') requireInteger(op, what, value, -(2 ** 31), 2 ** 31 - 1);
      else requireFinite(op, what, value);
    },
    gemm(g) {
      gemmWith(g);
    },
    gemmActivation(g, kind) {
      gemmWith(g, kind);
    },
    // Prepacked weights: the blocked GEMM's B panels (native/gemm.h pack_b), N rounded up to 16 columns.
    packWeight(w, rows, cols, transB) {
      const [K, N] = transB ? [cols, rows] : [rows, cols];
      // + 15: the layout starts at the buffer's first 64-byte boundary (native/gemm.h packed_b_buffer_size)
      const out = new Float32Array(K * Math.ceil(N / 16) * 16 + 15);
      addon.packB(w, rows, cols, transB, out);
      return out;
    },
    unpackWeight: (p, rows, cols, transB, out) => addon.unpackB(p, rows, cols, transB, out),
    binary: (kind, a, b, y) => addon.binary(kind === 'add' ? BinaryOp.Add : BinaryOp.Mul, a, b, y),
    axpy: (a, b, alpha) => addon.axpy(a, b, alpha),
    sumRows: (x, rows, cols, out, accumulate) => addon.sumRows(x, rows, cols, out, accumulate),
    activation: (kind, x, y) => addon.activation(ACTIVATION_IDS[kind], x, y),
    activationBackward: (kind, dy, saved, dx) =>
      addon.activationBackward(ACTIVATION_IDS[kind], dy, saved, dx),
    layerNorm: (x, w, b, rows, C, eps, y, mean, rstd) =>
      addon.layerNorm(x, w, b, rows, C, eps, y, mean, rstd),
    layerNormBackward: (dy, x, w, mean, rstd, rows, C, dx, dw, db) =>
      addon.layerNormBackward(dy, x, w, mean, rstd, rows, C, dx, dw, db),
    attention: ({ q, k, v }, keyMask, out, probs, d) =>
      addon.attention(q, k, v, keyMask, out, probs, ...geometry(d)),
    attentionBackward: (dout, { q, k, v }, probs, { dq, dk, dv }, d) =>
      addon.attentionBackward(dout, q, k, v, probs, dq, dk, dv, ...geometry(d)),
    attentionQkv: (qkv, keyMask, out, d) => addon.attentionQkv(qkv, keyMask, out, ...geometry(d)),
    embedding: (ids, table, out, V, C) => addon.embedding(ids, table, out, V, C),
    embeddingBackward: (dy, ids, dtable, V, C) => addon.embeddingBackward(dy, ids, dtable, V, C),
    // the addon also returns the count, which host-backend.ts has already made
    crossEntropy: ({ logits, targets, N, V, ignoreIndex }) =>
      addon.crossEntropy(logits, targets, N, V, ignoreIndex)[0],
    crossEntropyBackward: ({ logits, targets, N, V, ignoreIndex, count }, lossScale, dlogits) =>
      addon.crossEntropyBackward(logits, targets, N, V, ignoreIndex, lossScale / count, dlogits),
    adamw: (param, grad, m, v, h) =>
      addon.adamw(param, grad, m, v, h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, h.stepSize, h.bc2Sqrt),
    // mulberry32At(seed, i) as the addon hashes each index, so masks match the reference's at any thread count
    dropout: (x, p, seed, y) => addon.dropout(x, p, uint32(seed), y, null),
    // decoding ops (native/decoding.cc); host-backend.ts has checked k and made t finite and positive
    logSoftmaxTopK: (x, rows, V, k, t, values, indices) =>
      addon.logSoftmaxTopK(x, rows, V, k, t, values, indices),
    // convolution and pooling: native/conv.cc
    conv2d: (x, w, bias, residual, y, d, relu) =>
      addon.conv2d(x, w, bias, residual, y, d.batch, d.H, d.W, d.C, d.O, ...convWindow(d), relu),
    avgPool2d: (x, y, d) => addon.avgPool2d(x, y, d.batch, d.H, d.W, d.C, ...convWindow(d)),
  };
}
