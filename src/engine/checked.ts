/**
 * The storage-agnostic half of every backend: `DeviceBackend` implements `Backend` on top of a `Device`
 * (device.ts). It owns, once for all devices:
 * - every op's argument checks, with the messages backend.ts promises ("bad shapes throw ShapeError before
 *   any work"), and the shape arithmetic that turns tensors into kernel sizes;
 * - tensor bookkeeping: which backend a tensor belongs to, use after free, views, aliasing of outputs;
 * - live-memory counts (`memory()`) and registration with scopes (memory.ts);
 * - the layout ops, expressed as the device's block copies.
 * It never touches storage: a device is all a new backend writes (test/engine/async-backend.ts is one).
 *
 * No Node APIs here: the reference backend built on it must still run in a browser.
 */
import { AttentionSaved, OPS, ShapeError, UnsupportedOpError } from './backend.js';
import type {
  ActivationKind,
  AdamWOptions,
  AttentionGrads,
  AttentionOptions,
  AttentionResult,
  Backend,
  BinaryKind,
  Conv2dOptions,
  LayerNormResult,
  MatmulOptions,
  MemoryInfo,
  OpName,
  PackWeightOptions,
  Pool2dOptions,
  TopKResult,
  WeightFormat,
} from './backend.js';
import type { AttentionDims, Conv2dDims, Device, GemmArgs, LossArgs } from './device.js';
import { registerAllocation } from './memory.js';
import { Allocation, Tensor, shapeSize } from './tensor.js';
import type { DType, PackedLayout } from './tensor.js';
import {
  fmt,
  isSuffix,
  normalizeAxis,
  requireInteger,
  requireRank,
  requireSameShape,
  requireShape,
  sameShape,
  splitAtAxis,
} from './checks.js';

const ACTIVATIONS: readonly ActivationKind[] = ['gelu', 'quickGelu', 'relu', 'tanh'];

export class DeviceBackend<S> implements Backend {
  readonly name: string;
  private liveTensors = 0;
  private liveBytes = 0;
  private readonly releaseFn = (a: Allocation): void => this.release(a);

  constructor(readonly device: Device<S>) {
    this.name = device.name;
  }

  supports(op: OpName): boolean {
    if (!OPS.includes(op)) return false;
    if (op === 'packWeight' && (!this.device.packWeight || !this.device.readPacked)) return false;
    if (op === 'attentionQkv' && !this.device.attentionQkv) return false;
    if (op === 'matmulActivation' && !this.device.gemmActivation) return false;
    return this.device.supports ? this.device.supports(op) : true;
  }

  private need(op: OpName): void {
    if (!this.supports(op)) throw new UnsupportedOpError(this.name, op, 'the device does not implement it');
  }

  memory(): MemoryInfo {
    return { tensors: this.liveTensors, bytes: this.liveBytes };
  }

  // ---------------------------------------------------------------- tensor bookkeeping

  /**
   * Whether t is a tensor of this backend: of this instance or another instance of the same class (two
   * ReferenceBackends share storage kinds; a reference and a native tensor never mix).
   */
  private mine(t: Tensor): boolean {
    return (
      t.backend === this || (t.backend instanceof DeviceBackend && t.backend.constructor === this.constructor)
    );
  }

  /** The tensor's storage, after checking it is a live tensor of this backend with the given dtype. */
  private s(op: string, what: string, t: Tensor, dtype?: DType): S {
    if (!(t instanceof Tensor)) throw new ShapeError(`${op}: ${what} is not a Tensor`);
    if (!this.mine(t)) {
      throw new Error(`${op}: ${what} belongs to the ${t.backend.name} backend, not ${this.name}`);
    }
    if (dtype !== undefined && t.dtype !== dtype) {
      throw new ShapeError(`${op}: ${what} ${fmt(t.shape)} must be ${dtype}, got ${t.dtype}`);
    }
    if (!t.allocation.live) throw new Error(`${op}: ${what} ${fmt(t.shape)} was used after free()`);
    const packed = t.allocation.packed;
    if (packed) {
      throw new ShapeError(
        `${op}: ${what} ${fmt(t.shape)} is a packed weight (packWeight), which only matmul reads (as b with transB ${packed.transB}) and download copies out`,
      );
    }
    return t.allocation.storage as S;
  }

  /** The storage of a packed weight used as matmul's b, after checking the product reads it as packed. */
  private packedB(op: string, b: Tensor, transB: boolean): S {
    const p = b.allocation.packed as PackedLayout;
    if (!this.mine(b)) throw new Error(`${op}: b belongs to the ${b.backend.name} backend, not ${this.name}`);
    if (!b.allocation.live) throw new Error(`${op}: b ${fmt(b.shape)} was used after free()`);
    if (!sameShape(b.shape, [p.rows, p.cols]))
      throw new ShapeError(
        `${op}: b ${fmt(b.shape)} is a view of a packed weight ${fmt([p.rows, p.cols])} (packWeight); use it in its own shape`,
      );
    if (transB !== p.transB)
      throw new ShapeError(
        `${op}: b ${fmt(b.shape)} is a weight packed for transB ${p.transB} (packWeight), used with transB ${transB}`,
      );
    return b.allocation.storage as S;
  }

  /** `s(op, key, tensor, 'f32')` for each entry, in order: the keys name the tensors in errors. */
  private f32s<K extends string>(op: string, tensors: Record<K, Tensor>): Record<K, S> {
    const out = {} as Record<K, S>;
    // for-in, not Object.entries: no array of pairs per call (every op of a decoding step comes here)
    for (const what in tensors) out[what] = this.s(op, what, tensors[what], 'f32');
    return out;
  }

  /** `size`: the elements the storage holds when not the shape's (a packed weight's padding). */
  private wrap(storage: S, shape: readonly number[], dtype: DType, size = shapeSize(shape)): Tensor {
    const a = new Allocation(storage, size * 4);
    this.liveTensors++;
    this.liveBytes += a.bytes;
    registerAllocation(a, this.releaseFn);
    return new Tensor(this, a, shape, dtype);
  }

  private release(a: Allocation): void {
    if (!a.live) return;
    a.live = false;
    this.liveTensors--;
    this.liveBytes -= a.bytes;
    this.device.release(a.storage as S);
  }

  /** A new zero-filled tensor. */
  private alloc(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    return this.wrap(this.device.alloc(shapeSize(shape), dtype), shape, dtype);
  }

  /**
   * A new f32 tensor for an op that writes every element before reading any (Device.allocOutput: a device
   * may skip zeroing it); a zero-filled one where the device has no such allocation.
   */
  private allocOutput(shape: readonly number[]): Tensor {
    const size = shapeSize(shape);
    const s = this.device.allocOutput ? this.device.allocOutput(size, 'f32') : this.device.alloc(size, 'f32');
    return this.wrap(s, shape, 'f32');
  }

  private noAlias(op: string, out: S, what: string, ...inputs: S[]): void {
    for (const x of inputs) {
      if (this.device.aliases(out, x))
        throw new ShapeError(`${op}: ${what} must not share storage with its inputs`);
    }
  }

  /** Throws when t is a quantized or packed weight (quantizeWeight, packWeight), which no op may write to. */
  private writable(op: string, what: string, t: Tensor): void {
    if (t.allocation.readOnly) {
      const kind = t.allocation.packed ? 'packed weight (packWeight)' : 'quantized weight (quantizeWeight)';
      throw new ShapeError(`${op}: ${what} is a ${kind}, which is read-only`);
    }
  }

  // ---------------------------------------------------------------- memory

  zeros(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    if (dtype !== 'f32' && dtype !== 'i32')
      throw new ShapeError(`zeros: dtype must be f32 or i32, got ${String(dtype)}`);
    return this.alloc(shape, dtype);
  }

  upload(data: Float32Array | Int32Array, shape: readonly number[]): Tensor {
    if (!(data instanceof Float32Array) && !(data instanceof Int32Array)) {
      throw new ShapeError('upload: data must be a Float32Array or an Int32Array');
    }
    if (data.length !== shapeSize(shape)) {
      throw new ShapeError(`upload: ${data.length} values do not fill shape ${fmt(shape)}`);
    }
    return this.wrap(this.device.upload(data), shape, data instanceof Int32Array ? 'i32' : 'f32');
  }

  /** Bad arguments throw here, synchronously; the promise is only the data. */
  download(t: Tensor): Promise<Float32Array | Int32Array> {
    const p = t instanceof Tensor ? t.allocation.packed : null;
    if (p && this.device.readPacked) {
      // the packed storage as the (rows, cols) values it stands for; a view of it reshapes those values
      const b = this.packedB('download', t.view([p.rows, p.cols]), p.transB);
      return this.device.readPacked(b, p.rows, p.cols, p.transB);
    }
    return this.device.read(this.s('download', 'tensor', t), t.size, t.dtype);
  }

  /** Releases the storage now; a view releases nothing, and freeing twice is safe. */
  free(t: Tensor): void {
    if (!(t instanceof Tensor)) throw new ShapeError('free: not a Tensor');
    if (!this.mine(t)) {
      throw new Error(`free: tensor belongs to the ${t.backend.name} backend, not ${this.name}`);
    }
    // the instance that allocated it keeps its count
    if (!t.isView) (t.backend as DeviceBackend<S>).release(t.allocation);
  }

  fill(x: Tensor, value: number): void {
    const s = this.s('fill', 'x', x);
    this.writable('fill', 'x', x);
    if (x.dtype === 'i32' && !Number.isInteger(value)) {
      throw new ShapeError(`fill: an i32 tensor cannot hold ${value}`);
    }
    this.device.fill(s, x.size, value);
  }

  // ---------------------------------------------------------------- GEMM

  /**
   * C = alpha·op(A)·op(B) + bias, or with `out` + `accumulate`: out += alpha·op(A)·op(B) + bias.
   * A (..., M, K) [stored (..., K, M) with transA]; B (K, N) shared by every batch, or (..., K, N) with the
   * same leading axes as A [stored (..., N, K) with transB]; C (..., M, N).
   */
  matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
    const op = 'matmul';
    const transA = opts.transA ?? false;
    const transB = opts.transB ?? false;
    const A = this.s(op, 'A', a, 'f32');
    const packedB = b instanceof Tensor && b.allocation.packed !== null;
    const B = packedB ? this.packedB(op, b, transB) : this.s(op, 'B', b, 'f32');
    const alpha = opts.alpha ?? 1;
    this.device.checkScalar(op, 'alpha', alpha, 'real');
    // a function: formatting shapes on every product (the hottest op) would cost more than the checks
    const shapes = (): string =>
      `A ${fmt(a.shape)}${transA ? 'ᵀ' : ''} · B ${fmt(b.shape)}${transB ? 'ᵀ' : ''}`;
    if (a.rank < 2 || b.rank < 2) throw new ShapeError(`${op}: operands must be at least 2-D: ${shapes()}`);

    const [aRows, aCols] = a.shape.slice(-2);
    const [bRows, bCols] = b.shape.slice(-2);
    const M = transA ? aCols : aRows;
    const K = transA ? aRows : aCols;
    const N = transB ? bRows : bCols;
    if ((transB ? bCols : bRows) !== K) throw new ShapeError(`${op}: inner dimensions differ: ${shapes()}`);

    const batchShape = a.shape.slice(0, -2);
    if (b.rank > 2 && !sameShape(b.shape.slice(0, -2), batchShape)) {
      throw new ShapeError(`${op}: a batched B needs the same leading axes as A: ${shapes()}`);
    }
    const outShape = [...batchShape, M, N];

    let bias: S | null = null;
    if (opts.bias) {
      requireShape(op, 'bias', opts.bias, [N]);
      bias = this.s(op, 'bias', opts.bias, 'f32');
    }
    if (opts.accumulate && !opts.out) throw new ShapeError(`${op}: accumulate needs an out tensor`);
    const act = opts.activation;
    if (act !== undefined) {
      this.need('matmulActivation');
      if (!ACTIVATIONS.includes(act)) throw new ShapeError(`${op}: unknown activation ${String(act)}`);
      if (opts.accumulate) throw new ShapeError(`${op}: an activation cannot be applied while accumulating`);
    }
    let out: Tensor;
    if (opts.out) {
      requireShape(op, 'out', opts.out, outShape);
      out = opts.out;
      const C0 = this.s(op, 'out', out, 'f32');
      this.writable(op, 'out', out);
      if (this.device.aliases(C0, A) || this.device.aliases(C0, B)) {
        throw new ShapeError(`${op}: out must not share storage with A or B`);
      }
    } else {
      out = this.allocOutput(outShape); // gemm writes every element of C when not accumulating
    }
    const g: GemmArgs<S> = {
      A,
      B,
      C: this.s(op, 'out', out, 'f32'),
      bias,
      batches: shapeSize(batchShape),
      M,
      N,
      K,
      transA,
      transB,
      sharedB: b.rank === 2,
      alpha,
      accumulate: opts.accumulate ?? false,
      packedB,
    };
    if (act !== undefined) (this.device.gemmActivation as NonNullable<Device<S>['gemmActivation']>)(g, act);
    else this.device.gemm(g);
    return out;
  }

  // ---------------------------------------------------------------- elementwise

  /** a + b or a·b, b broadcast over a's leading axes (b's shape is a suffix of a's). */
  binary(kind: BinaryKind, a: Tensor, b: Tensor): Tensor {
    const op = kind;
    if (kind !== 'add' && kind !== 'mul') throw new ShapeError(`binary: unknown kind ${String(kind)}`);
    const s = this.f32s(op, { a, b });
    if (!isSuffix(b.shape, a.shape)) {
      throw new ShapeError(`${op}: b ${fmt(b.shape)} must be a suffix of a ${fmt(a.shape)} to broadcast`);
    }
    const y = this.alloc(a.shape);
    this.device.binary(kind, s.a, s.b, this.s(op, 'y', y), a.size, b.size);
    return y;
  }

  addInPlace(a: Tensor, b: Tensor, alpha = 1): void {
    const op = 'addInPlace';
    const s = this.f32s(op, { a, b });
    requireSameShape(op, 'a', a, 'b', b);
    this.writable(op, 'a', a);
    this.device.checkScalar(op, 'alpha', alpha, 'real');
    this.device.axpy(s.a, s.b, alpha, a.size);
  }

  /** x (rows, C) -> (C): column sums (bias gradients). With `out`, writes (or adds, with accumulate) there. */
  sumRows(x: Tensor, out?: Tensor, accumulate = false): Tensor {
    const op = 'sumRows';
    const X = this.s(op, 'x', x, 'f32');
    const C = x.cols;
    if (accumulate && !out) throw new ShapeError(`${op}: accumulate needs an out tensor`);
    if (out) requireShape(op, 'out', out, [C]);
    if (out) this.writable(op, 'out', out);
    const y = out ?? this.alloc([C]);
    const Y = this.s(op, 'out', y, 'f32');
    this.noAlias(op, Y, 'out', X);
    this.device.sumRows(X, x.rows, C, Y, accumulate);
    return y;
  }

  activation(kind: ActivationKind, x: Tensor): Tensor {
    if (!ACTIVATIONS.includes(kind)) throw new ShapeError(`activation: unknown kind ${String(kind)}`);
    const X = this.s(kind, 'x', x, 'f32');
    const y = this.alloc(x.shape);
    this.device.activation(kind, X, this.s(kind, 'y', y), x.size);
    return y;
  }

  /** dy ⊙ f'(x or y): the backward of an elementwise op, from the saved forward input or output. */
  activationBackward(kind: ActivationKind, dy: Tensor, saved: Tensor): Tensor {
    const op = `${kind}Backward`;
    if (!ACTIVATIONS.includes(kind)) throw new ShapeError(`activationBackward: unknown kind ${String(kind)}`);
    const s = this.f32s(op, { dy, saved });
    requireSameShape(op, 'dy', dy, 'saved forward tensor', saved);
    const dx = this.alloc(dy.shape);
    this.device.activationBackward(kind, s.dy, s.saved, this.s(op, 'dx', dx), dy.size);
    return dx;
  }

  // ---------------------------------------------------------------- normalization

  /** LayerNorm over the last axis with the biased variance (PyTorch): y = (x - mean)·rstd·w + b. */
  layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number): LayerNormResult {
    const op = 'layerNorm';
    const s = this.f32s(op, { x, weight, bias });
    if (x.rank < 1) throw new ShapeError(`${op}: x must be at least 1-D, got ${fmt(x.shape)}`);
    this.device.checkScalar(op, 'eps', eps, 'real');
    const C = x.cols;
    const rows = x.rows;
    requireShape(op, 'weight', weight, [C]);
    requireShape(op, 'bias', bias, [C]);
    // x (rows, C); mean, rstd (rows)
    const y = this.alloc(x.shape);
    const mean = this.alloc([rows]);
    const rstd = this.alloc([rows]);
    const o = this.f32s(op, { y, mean, rstd });
    this.device.layerNorm(s.x, s.weight, s.bias, rows, C, eps, o.y, o.mean, o.rstd);
    return { y, mean, rstd };
  }

  /**
   * With x̂ = (x - mean)·rstd and g = dy·w: dx = rstd·(g - mean(g) - x̂·mean(g·x̂)) (the row-wise mean over C);
   * dweight += Σ_rows dy·x̂; dbias += Σ_rows dy.
   */
  layerNormBackward(...args: Parameters<Backend['layerNormBackward']>): Tensor {
    const [dy, x, weight, mean, rstd, dweight, dbias] = args; // Backend's parameter list, not restated
    const op = 'layerNormBackward';
    const s = this.f32s(op, { dy, x, weight, mean, rstd, dweight, dbias });
    requireSameShape(op, 'dy', dy, 'x', x);
    const C = x.cols;
    const rows = x.rows;
    for (const [what, t] of Object.entries({ weight, dweight, dbias })) requireShape(op, what, t, [C]);
    requireShape(op, 'mean', mean, [rows]);
    requireShape(op, 'rstd', rstd, [rows]);
    if (this.device.aliases(s.dweight, s.dbias))
      throw new ShapeError(`${op}: dweight and dbias share storage`);
    this.writable(op, 'dweight', dweight);
    this.writable(op, 'dbias', dbias);
    const dx = this.alloc(x.shape);
    const DX = this.s(op, 'dx', dx);
    this.device.layerNormBackward(s.dy, s.x, s.weight, s.mean, s.rstd, rows, C, DX, s.dweight, s.dbias);
    return dx;
  }

  // ---------------------------------------------------------------- attention

  /** `blockChannels`: attentionQkv's C, where q, k and v are the thirds of one (B, T, 3C) tensor. */
  private attentionDims(
    op: string,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    opts: AttentionOptions,
    blockChannels?: number,
  ): AttentionDims {
    requireRank(op, 'q', q, 3);
    requireRank(op, 'k', k, 3);
    requireSameShape(op, 'k', k, 'v', v);
    const [batch, tq] = q.shape;
    const channels = blockChannels ?? q.shape[2];
    const tk = k.shape[1];
    if (k.shape[0] !== batch || k.shape[2] !== q.shape[2]) {
      throw new ShapeError(
        `${op}: q ${fmt(q.shape)} and k/v ${fmt(k.shape)} need the same batch and channels`,
      );
    }
    requireInteger(op, 'nHead', opts.nHead, 1);
    if (channels % opts.nHead !== 0) {
      throw new ShapeError(`${op}: ${channels} channels do not split into ${opts.nHead} heads`);
    }
    const headDim = channels / opts.nHead;
    const kvLen = opts.kvLength ?? tk;
    requireInteger(op, `kvLength (k/v ${fmt(k.shape)})`, kvLen, 0, tk);
    if (opts.causal && kvLen < tq) {
      throw new ShapeError(`${op}: causal attention needs kvLength (${kvLen}) >= the ${tq} queries`);
    }
    const scale = opts.scale ?? 1 / Math.sqrt(headDim);
    this.device.checkScalar(op, 'scale', scale, 'real');
    const drop = opts.dropout ?? { p: 0, seed: 0 };
    if (!(drop.p >= 0 && drop.p < 1))
      throw new ShapeError(`${op}: dropout p must be in [0, 1), got ${drop.p}`);
    if (!Number.isSafeInteger(drop.seed)) {
      throw new ShapeError(`${op}: dropout seed must be an integer, got ${drop.seed}`);
    }
    const causal = opts.causal ?? false;
    return {
      batch,
      tq,
      tk,
      kvLen,
      channels,
      nHead: opts.nHead,
      headDim,
      scale,
      causal,
      dropP: drop.p,
      dropSeed: drop.seed,
    };
  }

  private keyMask(op: string, opts: AttentionOptions, d: AttentionDims): S | null {
    if (!opts.keyMask) return null;
    requireShape(op, 'keyMask', opts.keyMask, [d.batch, d.tk]);
    return this.s(op, 'keyMask', opts.keyMask, 'f32');
  }

  /**
   * Multi-head scaled dot-product attention. Head h uses channels [h·hd, (h+1)·hd) of q, k and v.
   * Query i may attend key j when j < kvLength, keyMask[b, j] != 0, and (causal) j <= past + i with
   * past = kvLength - Tq. Disallowed keys get -inf before the softmax; a query with no allowed key
   * outputs zeros. With opts.dropout, out = Σ_j p_ij·keep_ij·v_j (keep: 0 or 1/(1-p), see
   * AttentionOptions.dropout). With `record`, returns the device's opaque saved state for the backward.
   */
  attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions & { record?: boolean }): AttentionResult {
    const op = 'attention';
    const qkv = this.f32s(op, { q, k, v });
    const d = this.attentionDims(op, q, k, v, opts);
    const mask = this.keyMask(op, opts, d);
    const out = this.alloc([d.batch, d.tq, d.channels]);
    const saved = opts.record
      ? new AttentionSaved(this.device.attentionSaved(d).map((sp) => this.alloc(sp.shape, sp.dtype)))
      : undefined;
    const S = saved ? saved.tensors.map((t, i) => this.s(op, `saved[${i}]`, t)) : null;
    this.device.attention(qkv, mask, this.s(op, 'out', out), S, d);
    return saved ? { out, saved } : { out };
  }

  /**
   * Self-attention over the column blocks [q | k | v] of one fused projection qkv (B, T, 3C), forward only:
   * the values of attention(q, k, v, opts) without slicing the three out (see Backend.attentionQkv).
   */
  attentionQkv(qkv: Tensor, opts: AttentionOptions): Tensor {
    const op = 'attentionQkv';
    this.need(op);
    const QKV = this.s(op, 'qkv', qkv, 'f32');
    requireRank(op, 'qkv', qkv, 3);
    const c3 = qkv.shape[2];
    if (c3 % 3 !== 0) throw new ShapeError(`${op}: qkv ${fmt(qkv.shape)} has no 3·C channels`);
    if (opts.kvLength !== undefined)
      throw new ShapeError(`${op}: kvLength is not an option of self-attention over qkv (use attention)`);
    // The geometry of attention(q, k, v) for (B, T, C) blocks, checked as that call checks it.
    const d = this.attentionDims(op, qkv, qkv, qkv, opts, c3 / 3);
    const mask = this.keyMask(op, opts, d);
    const out = this.allocOutput([d.batch, d.tq, d.channels]); // every row of every head is written
    (this.device.attentionQkv as NonNullable<Device<S>['attentionQkv']>)(
      QKV,
      mask,
      this.s(op, 'out', out),
      d,
    );
    return out;
  }

  /**
   * The backward of a recorded attention forward with the same q, k, v and options (with opts.dropout the
   * mask is regenerated from the seed). dk/dv have k/v's stored shape; rows at or past kvLength get zero.
   */
  attentionBackward(...args: Parameters<Backend['attentionBackward']>): AttentionGrads {
    const [dout, q, k, v, saved, opts] = args; // Backend's parameter list, not restated
    const op = 'attentionBackward';
    const { dout: DO, ...qkv } = this.f32s(op, { dout, q, k, v });
    const d = this.attentionDims(op, q, k, v, opts);
    requireSameShape(op, 'dout', dout, 'q', q);
    if (!(saved instanceof AttentionSaved))
      throw new ShapeError(`${op}: saved is not a recorded attention state`);
    const specs = this.device.attentionSaved(d);
    if (specs.length !== saved.tensors.length)
      throw new ShapeError(`${op}: saved state does not match this call's geometry`);
    const S = saved.tensors.map((t, i) => {
      requireShape(op, `saved[${i}]`, t, specs[i].shape);
      return this.s(op, `saved[${i}]`, t, specs[i].dtype);
    });
    const grads = { dq: this.alloc(q.shape), dk: this.alloc(k.shape), dv: this.alloc(v.shape) };
    this.device.attentionBackward(DO, qkv, S, this.f32s(op, grads), d);
    return grads;
  }

  // ---------------------------------------------------------------- embeddings

  /** ids (...) i32, table (V, C) -> (..., C): row ids[i] of the table. */
  embedding(ids: Tensor, table: Tensor): Tensor {
    const op = 'embedding';
    const I = this.s(op, 'ids', ids, 'i32');
    const T = this.s(op, 'table', table, 'f32');
    requireRank(op, 'table', table, 2);
    const [vocab, C] = table.shape;
    const y = this.alloc([...ids.shape, C]);
    this.device.embedding(I, ids.size, T, this.s(op, 'y', y), vocab, C);
    return y;
  }

  /** dtable[ids[i]] += dy[i]; repeated ids accumulate. */
  embeddingBackward(dy: Tensor, ids: Tensor, dtable: Tensor): void {
    const op = 'embeddingBackward';
    const DY = this.s(op, 'dy', dy, 'f32');
    const I = this.s(op, 'ids', ids, 'i32');
    const DT = this.s(op, 'dtable', dtable, 'f32');
    requireRank(op, 'dtable', dtable, 2);
    const [vocab, C] = dtable.shape;
    requireShape(op, 'dy', dy, [...ids.shape, C]);
    this.writable(op, 'dtable', dtable);
    this.noAlias(op, DT, 'dtable', DY);
    this.device.embeddingBackward(DY, I, ids.size, DT, vocab, C);
  }

  // ---------------------------------------------------------------- loss

  /** Checks logits (N, V) and targets (N). */
  private lossArgs(op: string, logits: Tensor, targets: Tensor, ignoreIndex: number): LossArgs<S> {
    const L = this.s(op, 'logits', logits, 'f32');
    const T = this.s(op, 'targets', targets, 'i32');
    requireRank(op, 'logits', logits, 2);
    this.device.checkScalar(op, 'ignoreIndex', ignoreIndex, 'int32');
    const [N, V] = logits.shape;
    requireShape(op, 'targets', targets, [N]);
    return { logits: L, targets: T, N, V, ignoreIndex };
  }

  /** Mean over rows whose target != ignoreIndex of logsumexp(logits) - logits[target] (NaN when none). */
  crossEntropy(logits: Tensor, targets: Tensor, ignoreIndex: number): Promise<number> {
    return this.device.crossEntropy(this.lossArgs('crossEntropy', logits, targets, ignoreIndex));
  }

  /** (softmax(logits) - onehot(target))·lossScale/count on counted rows; zero rows where ignored. */
  crossEntropyBackward(logits: Tensor, targets: Tensor, ignoreIndex: number, lossScale = 1): Tensor {
    const op = 'crossEntropyBackward';
    const r = this.lossArgs(op, logits, targets, ignoreIndex);
    if (typeof lossScale !== 'number') throw new ShapeError(`${op}: lossScale must be a number`);
    const dlogits = this.alloc([r.N, r.V]);
    this.device.crossEntropyBackward(r, lossScale, this.s(op, 'dlogits', dlogits));
    return dlogits;
  }

  // ---------------------------------------------------------------- optimizer

  /**
   * torch.optim.AdamW (single-tensor path), in its exact form:
   * p *= 1 - lr·wd; m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;
   * p -= (lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + eps).
   */
  adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, opts: AdamWOptions): void {
    const op = 'adamw';
    const s = this.f32s(op, { param, grad, m, v });
    requireSameShape(op, 'param', param, 'grad', grad);
    requireSameShape(op, 'param', param, 'm', m);
    requireSameShape(op, 'param', param, 'v', v);
    for (const [what, t] of Object.entries({ param, m, v })) this.writable(op, what, t);
    requireInteger(op, 'step', opts.step, 1);
    const { lr, beta1, beta2, eps, weightDecay } = opts;
    for (const [what, value] of Object.entries({ lr, beta1, beta2, eps, weightDecay })) {
      this.device.checkScalar(op, what, value, 'real');
    }
    const all = [s.param, s.grad, s.m, s.v];
    for (let i = 0; i < 4; i++)
      for (let j = i + 1; j < 4; j++)
        if (this.device.aliases(all[i], all[j]))
          throw new ShapeError(`${op}: param, grad, m and v must not share storage`);
    const stepSize = lr / (1 - beta1 ** opts.step);
    const bc2Sqrt = Math.sqrt(1 - beta2 ** opts.step);
    this.device.adamw(s.param, s.grad, s.m, s.v, param.size, {
      lr,
      beta1,
      beta2,
      eps,
      weightDecay,
      stepSize,
      bc2Sqrt,
    });
  }

  // ---------------------------------------------------------------- dropout

  /**
   * Inverted dropout: element i is kept (scaled by 1/(1-p)) when mulberry32At(seed, i) >= p (util/random.ts).
   * p = 0 is the identity; p = 1 drops all. The backward is dropout(dy, p, seed): the same mask, regenerated.
   */
  dropout(x: Tensor, p: number, seed: number): Tensor {
    const op = 'dropout';
    const X = this.s(op, 'x', x, 'f32');
    if (!(p >= 0 && p <= 1)) throw new ShapeError(`${op}: p must be in [0, 1], got ${p}`);
    if (!Number.isSafeInteger(seed)) throw new ShapeError(`${op}: seed must be an integer, got ${seed}`);
    const y = this.alloc(x.shape);
    this.device.dropout(X, p, seed, this.s(op, 'y', y), x.size);
    return y;
  }

  // ---------------------------------------------------------------- convolution and pooling (NHWC)

  /**
   * 2-D cross-correlation: x (B, H, W, C), weight (O, kh, kw, C) -> (B, Ho, Wo, O), + bias (O), + residual
   * (B, Ho, Wo, O), then ReLU when asked. Ho = floor((H + 2·padH - kh) / strideH) + 1, likewise Wo.
   */
  conv2d(x: Tensor, weight: Tensor, opts: Conv2dOptions = {}): Tensor {
    const op = 'conv2d';
    this.need(op);
    const s = this.f32s(op, { x, weight });
    requireRank(op, 'x (B, H, W, C)', x, 4);
    requireRank(op, 'weight (O, kh, kw, C)', weight, 4);
    const [O, kh, kw, wc] = weight.shape;
    if (wc !== x.shape[3]) {
      throw new ShapeError(
        `${op}: weight ${fmt(weight.shape)} (O, kh, kw, C) takes ${wc} input channels but x ${fmt(x.shape)} has ${x.shape[3]}`,
      );
    }
    const d = windowDims(op, x.shape, O, [kh, kw], opts.stride ?? 1, opts.padding ?? 0);
    let bias: S | null = null;
    if (opts.bias) {
      requireShape(op, 'bias', opts.bias, [O]);
      bias = this.s(op, 'bias', opts.bias, 'f32');
    }
    const outShape = [d.batch, d.Ho, d.Wo, O];
    let residual: S | null = null;
    if (opts.residual) {
      requireShape(op, 'residual', opts.residual, outShape);
      residual = this.s(op, 'residual', opts.residual, 'f32');
    }
    const y = this.alloc(outShape);
    this.device.conv2d(s.x, s.weight, bias, residual, this.s(op, 'y', y), d, opts.relu ?? false);
    return y;
  }

  /** Window means of x (B, H, W, C) -> (B, Ho, Wo, C) (nn.AvgPool2d, count_include_pad, floor mode). */
  avgPool2d(x: Tensor, opts: Pool2dOptions): Tensor {
    const op = 'avgPool2d';
    this.need(op);
    const X = this.s(op, 'x', x, 'f32');
    requireRank(op, 'x (B, H, W, C)', x, 4);
    const kernel = pair(op, 'kernel', opts.kernel, 1);
    const d = windowDims(op, x.shape, x.shape[3], kernel, opts.stride ?? kernel, opts.padding ?? 0);
    if (d.padH * 2 > d.kh || d.padW * 2 > d.kw) {
      throw new ShapeError(
        `${op}: padding ${d.padH}x${d.padW} must be at most half the kernel ${d.kh}x${d.kw}`,
      );
    }
    const y = this.alloc([d.batch, d.Ho, d.Wo, d.C]);
    this.device.avgPool2d(X, this.s(op, 'y', y), d);
    return y;
  }

  // ---------------------------------------------------------------- layout (block copies)

  /** Concatenate along `axis` (negative counts from the end); all other axes and the dtype must agree. */
  concat(xs: readonly Tensor[], axis: number): Tensor {
    const op = 'concat';
    if (xs.length === 0) throw new ShapeError(`${op}: needs at least one tensor`);
    const first = xs[0];
    const ax = normalizeAxis(op, axis, first.shape);
    const all = (): string => xs.map((t) => fmt(t.shape)).join(', ');
    const srcs = xs.map((t, i) => this.s(op, `xs[${i}]`, t, first.dtype));
    for (const t of xs) {
      const ok = t.rank === first.rank && t.shape.every((dim, i) => i === ax || dim === first.shape[i]);
      if (!ok) throw new ShapeError(`${op}: shapes ${all()} differ outside axis ${ax}`);
    }
    const outShape = [...first.shape];
    outShape[ax] = xs.reduce((s, t) => s + t.shape[ax], 0);
    const out = this.alloc(outShape, first.dtype);
    const O = this.s(op, 'out', out);
    const { outer, inner } = splitAtAxis(outShape, ax);
    const outBlock = outShape[ax] * inner;
    let at = 0;
    for (let i = 0; i < xs.length; i++) {
      const block = xs[i].shape[ax] * inner; // contiguous elements of xs[i] per outer index
      if (block > 0 && outer > 0) {
        this.device.copy({
          dst: O,
          dstOffset: at,
          dstStride: outBlock,
          src: srcs[i],
          srcOffset: 0,
          srcStride: block,
          rows: outer,
          length: block,
        });
      }
      at += block;
    }
    return out;
  }

  /** x[..., start:end, ...] along `axis` (negative counts from the end), as a new tensor. */
  slice(x: Tensor, axis: number, start: number, end: number): Tensor {
    const op = 'slice';
    const X = this.s(op, 'x', x);
    const ax = normalizeAxis(op, axis, x.shape);
    const { outer, dim, inner } = splitAtAxis(x.shape, ax);
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end > dim) {
      throw new ShapeError(`${op}: range [${start}, ${end}) is outside axis ${ax} of ${fmt(x.shape)}`);
    }
    const outShape = [...x.shape];
    outShape[ax] = end - start;
    const out = this.alloc(outShape, x.dtype);
    const len = (end - start) * inner;
    if (len > 0 && outer > 0) {
      this.device.copy({
        dst: this.s(op, 'out', out),
        dstOffset: 0,
        dstStride: len,
        src: X,
        srcOffset: start * inner,
        srcStride: dim * inner,
        rows: outer,
        length: len,
      });
    }
    return out;
  }

  /** dst[..., offset:offset+len, ...] = src along `axis`, in place (KV caches). */
  writeSlice(dst: Tensor, src: Tensor, axis: number, offset: number): void {
    const op = 'writeSlice';
    const D = this.s(op, 'dst', dst);
    this.writable(op, 'dst', dst);
    const S = this.s(op, 'src', src, dst.dtype);
    const ax = normalizeAxis(op, axis, dst.shape);
    const { outer, dim, inner } = splitAtAxis(dst.shape, ax);
    const shapes = (): string =>
      `src ${fmt(src.shape)} into dst ${fmt(dst.shape)} at offset ${offset} of axis ${ax}`;
    const fits =
      src.rank === dst.rank &&
      src.shape.every((d, i) => i === ax || d === dst.shape[i]) &&
      Number.isInteger(offset) &&
      offset >= 0 &&
      offset + src.shape[ax] <= dim;
    if (!fits) throw new ShapeError(`${op}: cannot write ${shapes()}`);
    if (this.device.aliases(S, D)) throw new ShapeError(`${op}: src and dst share storage`);
    const len = src.shape[ax] * inner;
    if (len === 0 || outer === 0) return;
    this.device.copy({
      dst: D,
      dstOffset: offset * inner,
      dstStride: dim * inner,
      src: S,
      srcOffset: 0,
      srcStride: len,
      rows: outer,
      length: len,
    });
  }

  /** Rows of x along axis 0 picked by host indices (repeats allowed), e.g. to reorder beams. */
  indexSelect(x: Tensor, indices: readonly number[]): Tensor {
    const op = 'indexSelect';
    const X = this.s(op, 'x', x);
    if (x.rank < 1) throw new ShapeError(`${op}: x must be at least 1-D, got ${fmt(x.shape)}`);
    const rows = x.shape[0];
    const rowSize = rows === 0 ? 0 : x.size / rows;
    for (const i of indices) requireInteger(op, `index (x ${fmt(x.shape)})`, i, 0, rows - 1);
    const out = this.alloc([indices.length, ...x.shape.slice(1)], x.dtype);
    const O = this.s(op, 'out', out);
    if (rowSize > 0) this.copyRuns(O, X, indices, rowSize, rowSize);
    return out;
  }

  /** dst row i (of rowSize) gets the first `n` elements of src row indices[i], consecutive runs merged. */
  private copyRuns(D: S, X: S, indices: readonly number[], rowSize: number, n: number): void {
    for (let i = 0; i < indices.length;) {
      let j = i + 1;
      // rows i.. j-1 read consecutive source rows: one strided copy
      while (j < indices.length && indices[j] === indices[j - 1] + 1) j++;
      this.device.copy({
        dst: D,
        dstOffset: i * rowSize,
        dstStride: rowSize,
        src: X,
        srcOffset: indices[i] * rowSize,
        srcStride: rowSize,
        rows: j - i,
        length: n,
      });
      i = j;
    }
  }

  // ---------------------------------------------------------------- decoding (see backend.ts)

  logSoftmaxTopK(logits: Tensor, k: number, temperature: number): TopKResult {
    const op = 'logSoftmaxTopK';
    this.need(op);
    const X = this.s(op, 'logits', logits, 'f32');
    if (logits.rank !== 2) throw new ShapeError(`${op}: logits must be (rows, V), got ${fmt(logits.shape)}`);
    const [rows, V] = logits.shape;
    requireInteger(op, `k (logits ${fmt(logits.shape)})`, k, 1, Math.max(1, V));
    if (V === 0) throw new ShapeError(`${op}: logits ${fmt(logits.shape)} have no vocabulary`);
    if (typeof temperature !== 'number' || Number.isNaN(temperature) || temperature === Infinity)
      throw new ShapeError(`${op}: temperature must be a finite number, got ${String(temperature)}`);
    // Official: logits / (temperature if temperature > 0 else 1.0).
    const t = temperature > 0 ? temperature : 1;
    const values = this.alloc([rows, k]);
    const indices = this.alloc([rows, k], 'i32');
    this.device.logSoftmaxTopK(
      X,
      rows,
      V,
      k,
      t,
      this.s(op, 'values', values),
      this.s(op, 'indices', indices),
    );
    return { values, indices };
  }

  copyRows(dst: Tensor, src: Tensor, indices: readonly number[], length: number): void {
    const op = 'copyRows';
    const D = this.s(op, 'dst', dst);
    this.writable(op, 'dst', dst);
    const S = this.s(op, 'src', src, dst.dtype);
    const shapes = (): string => `src ${fmt(src.shape)} into dst ${fmt(dst.shape)}`;
    if (dst.rank < 2 || src.rank !== dst.rank || !src.shape.every((d, i) => i === 0 || d === dst.shape[i]))
      throw new ShapeError(`${op}: cannot copy rows of ${shapes()} (rank >= 2, equal trailing axes)`);
    if (indices.length !== dst.shape[0])
      throw new ShapeError(
        `${op}: ${indices.length} indices for the ${dst.shape[0]} rows of dst ${fmt(dst.shape)}`,
      );
    for (const i of indices) requireInteger(op, `index (src ${fmt(src.shape)})`, i, 0, src.shape[0] - 1);
    requireInteger(op, `length (axis 1 of ${fmt(dst.shape)})`, length, 0, dst.shape[1]);
    if (this.device.aliases(S, D)) throw new ShapeError(`${op}: src and dst share storage`);
    const rowSize = dst.shape[0] === 0 ? 0 : dst.size / dst.shape[0];
    const n = dst.shape[1] === 0 ? 0 : (rowSize / dst.shape[1]) * length; // the first `length` positions
    if (n > 0) this.copyRuns(D, S, indices, rowSize, n);
  }

  // ---------------------------------------------------------------- weight-only quantization

  /** w (rows, cols) rounded to `format` (see backend.ts), as a new read-only tensor. */
  quantizeWeight(w: Tensor, format: WeightFormat, channelAxis: 0 | 1): Tensor {
    const op = 'quantizeWeight';
    this.need(op);
    const W = this.s(op, 'w', w, 'f32');
    requireRank(op, 'w', w, 2);
    if (format !== 'bf16' && format !== 'int8')
      throw new ShapeError(`${op}: format must be 'bf16' or 'int8', got ${String(format)}`);
    if (channelAxis !== 0 && channelAxis !== 1)
      throw new ShapeError(`${op}: channelAxis must be 0 or 1, got ${String(channelAxis)}`);
    const [rows, cols] = w.shape;
    const y = this.alloc([rows, cols]);
    try {
      this.device.quantizeWeight(W, rows, cols, format, channelAxis, this.s(op, 'y', y));
    } catch (e) {
      y.free(); // a non-finite int8 value: nothing is left allocated
      throw e;
    }
    y.allocation.readOnly = true;
    return y;
  }

  // ---------------------------------------------------------------- packed weights

  /** w (rows, cols) laid out as the device's GEMM reads B (see backend.ts), as a new read-only tensor. */
  packWeight(w: Tensor, opts: PackWeightOptions): Tensor {
    const op = 'packWeight';
    this.need(op);
    const W = this.s(op, 'w', w, 'f32');
    requireRank(op, 'w', w, 2);
    const transB = opts?.transB;
    if (typeof transB !== 'boolean')
      throw new ShapeError(`${op}: transB must be a boolean, got ${String(transB)}`);
    const [rows, cols] = w.shape;
    const device = this.device as Required<Device<S>>;
    const packed = device.packWeight(W, rows, cols, transB);
    const y = this.wrap(packed.storage, [rows, cols], 'f32', packed.size);
    y.allocation.readOnly = true;
    y.allocation.packed = { rows, cols, transB };
    return y;
  }
}

/** A (height, width) pair from a number or a pair; each an integer >= min. */
function pair(
  op: string,
  what: string,
  v: number | readonly [number, number],
  min: number,
): [number, number] {
  if (typeof v !== 'number' && !(Array.isArray(v) && v.length === 2)) {
    throw new ShapeError(`${op}: ${what} must be a number or a (height, width) pair`);
  }
  const p: [number, number] = typeof v === 'number' ? [v, v] : [v[0], v[1]];
  requireInteger(op, `${what} (height)`, p[0], min);
  requireInteger(op, `${what} (width)`, p[1], min);
  return p;
}

/** The output geometry of a kh x kw window sliding over x (B, H, W, C); throws when it does not fit. */
function windowDims(
  op: string,
  xShape: readonly number[],
  O: number,
  kernel: readonly [number, number],
  stride: number | readonly [number, number],
  padding: number | readonly [number, number],
): Conv2dDims {
  const [batch, H, W, C] = xShape;
  const [kh, kw] = kernel;
  const [strideH, strideW] = pair(op, 'stride', stride, 1);
  const [padH, padW] = pair(op, 'padding', padding, 0);
  if (kh < 1 || kw < 1 || H + 2 * padH < kh || W + 2 * padW < kw) {
    throw new ShapeError(
      `${op}: a ${kh}x${kw} window does not fit x ${fmt(xShape)} padded by ${padH}x${padW}`,
    );
  }
  const Ho = Math.floor((H + 2 * padH - kh) / strideH) + 1;
  const Wo = Math.floor((W + 2 * padW - kw) / strideW) + 1;
  return { batch, H, W, C, O, kh, kw, strideH, strideW, padH, padW, Ho, Wo };
}
