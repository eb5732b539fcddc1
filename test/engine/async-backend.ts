/**
 * A test-only backend written against the engine's interface alone (src/engine/device.ts + DeviceBackend):
 * the shape a CUDA or WebGPU backend takes. It wraps the reference backend's device, and behaves like a
 * device backend where it matters to callers:
 * - its storage is an opaque handle ({ id, data }), not a typed array, so nothing outside the device can
 *   read it (a caller that indexes storage, or mixes it with a host backend's, fails);
 * - reads resolve on a later macrotask (setTimeout), never synchronously, as a GPU readback does;
 * - it counts live allocations and bytes itself, independently of DeviceBackend's count, and refuses
 *   storage that was released (a use after free on a device would read garbage).
 */
import { DeviceBackend } from '../../src/engine/checked.js';
import type {
  AdamWStep,
  AttentionArrays,
  AttentionDims,
  AttentionGradArrays,
  Conv2dDims,
  CopyArgs,
  Device,
  GemmArgs,
  LossArgs,
  SavedSpec,
} from '../../src/engine/device.js';
import type { ActivationKind, BinaryKind, WeightFormat } from '../../src/engine/backend.js';
import { ReferenceBackend } from '../../src/engine/reference.js';
import type { DType } from '../../src/engine/tensor.js';

type Host = Float32Array | Int32Array;

/** A device buffer: the host array behind it is private to the device. */
interface Buffer {
  readonly id: number;
  data: Host | null;
}

export class AsyncTestDevice implements Device<Buffer> {
  readonly name = 'async-test';
  /** Buffers allocated and not released, as the device itself counts them. */
  live = 0;
  liveBytes = 0;
  /** Reads issued and not yet resolved. */
  pendingReads = 0;
  private nextId = 1;

  constructor(private readonly inner: Device<Host> = new ReferenceBackend().device) {}

  private wrap(data: Host): Buffer {
    this.live++;
    this.liveBytes += data.byteLength;
    return { id: this.nextId++, data };
  }

  /** The host array of a live buffer. */
  private u(b: Buffer): Host {
    if (!b.data) throw new Error(`async-test device: buffer ${b.id} used after release`);
    return b.data;
  }

  private us(bs: Buffer[]): Host[] {
    return bs.map((b) => this.u(b));
  }

  alloc(size: number, dtype: DType): Buffer {
    return this.wrap(this.inner.alloc(size, dtype));
  }

  upload(data: Float32Array | Int32Array): Buffer {
    return this.wrap(this.inner.upload(data));
  }

  read(b: Buffer, size: number, dtype: DType): Promise<Float32Array | Int32Array> {
    // Copy now (the data as of this point in the queue), deliver on a later macrotask.
    const copy = this.u(b).slice(0, size);
    if ((dtype === 'i32') !== copy instanceof Int32Array)
      throw new Error('async-test device: dtype mismatch');
    this.pendingReads++;
    return new Promise((resolve) =>
      setTimeout(() => {
        this.pendingReads--;
        resolve(copy);
      }, 0),
    );
  }

  release(b: Buffer): void {
    const data = this.u(b);
    this.live--;
    this.liveBytes -= data.byteLength;
    b.data = null;
  }

  aliases(a: Buffer, b: Buffer): boolean {
    return a === b || this.inner.aliases(this.u(a), this.u(b));
  }

  checkScalar(op: string, what: string, value: number, kind: 'real' | 'int32'): void {
    this.inner.checkScalar(op, what, value, kind);
  }

  fill(b: Buffer, size: number, value: number): void {
    this.inner.fill(this.u(b), size, value);
  }

  gemm(g: GemmArgs<Buffer>): void {
    this.inner.gemm({ ...g, A: this.u(g.A), B: this.u(g.B), C: this.u(g.C), bias: g.bias && this.u(g.bias) });
  }

  binary(kind: BinaryKind, a: Buffer, b: Buffer, y: Buffer, n: number, nb: number): void {
    this.inner.binary(kind, this.u(a), this.u(b), this.u(y), n, nb);
  }

  axpy(a: Buffer, b: Buffer, alpha: number, n: number): void {
    this.inner.axpy(this.u(a), this.u(b), alpha, n);
  }

  sumRows(x: Buffer, rows: number, cols: number, out: Buffer, accumulate: boolean): void {
    this.inner.sumRows(this.u(x), rows, cols, this.u(out), accumulate);
  }

  activation(kind: ActivationKind, x: Buffer, y: Buffer, n: number): void {
    this.inner.activation(kind, this.u(x), this.u(y), n);
  }

  activationBackward(kind: ActivationKind, dy: Buffer, saved: Buffer, dx: Buffer, n: number): void {
    this.inner.activationBackward(kind, this.u(dy), this.u(saved), this.u(dx), n);
  }

  layerNorm(...a: Parameters<Device<Buffer>['layerNorm']>): void {
    const [x, w, b, rows, C, eps, y, mean, rstd] = a;
    this.inner.layerNorm(
      this.u(x),
      this.u(w),
      this.u(b),
      rows,
      C,
      eps,
      this.u(y),
      this.u(mean),
      this.u(rstd),
    );
  }

  layerNormBackward(...a: Parameters<Device<Buffer>['layerNormBackward']>): void {
    const [dy, x, w, mean, rstd, rows, C, dx, dw, db] = a;
    const [DY, X, W, M, R, DX, DW, DB] = this.us([dy, x, w, mean, rstd, dx, dw, db]);
    this.inner.layerNormBackward(DY, X, W, M, R, rows, C, DX, DW, DB);
  }

  attentionSaved(d: AttentionDims): SavedSpec[] {
    return this.inner.attentionSaved(d);
  }

  private qkv(t: AttentionArrays<Buffer>): AttentionArrays<Host> {
    return { q: this.u(t.q), k: this.u(t.k), v: this.u(t.v) };
  }

  attention(
    t: AttentionArrays<Buffer>,
    keyMask: Buffer | null,
    out: Buffer,
    saved: Buffer[] | null,
    d: AttentionDims,
  ): void {
    this.inner.attention(this.qkv(t), keyMask && this.u(keyMask), this.u(out), saved && this.us(saved), d);
  }

  attentionBackward(
    dout: Buffer,
    t: AttentionArrays<Buffer>,
    saved: Buffer[],
    g: AttentionGradArrays<Buffer>,
    d: AttentionDims,
  ): void {
    const grads = { dq: this.u(g.dq), dk: this.u(g.dk), dv: this.u(g.dv) };
    this.inner.attentionBackward(this.u(dout), this.qkv(t), this.us(saved), grads, d);
  }

  embedding(ids: Buffer, n: number, table: Buffer, out: Buffer, V: number, C: number): void {
    this.inner.embedding(this.u(ids), n, this.u(table), this.u(out), V, C);
  }

  embeddingBackward(dy: Buffer, ids: Buffer, n: number, dtable: Buffer, V: number, C: number): void {
    this.inner.embeddingBackward(this.u(dy), this.u(ids), n, this.u(dtable), V, C);
  }

  private loss(r: LossArgs<Buffer>): LossArgs<Host> {
    return { ...r, logits: this.u(r.logits), targets: this.u(r.targets) };
  }

  crossEntropy(r: LossArgs<Buffer>): Promise<number> {
    // computed now (in queue order), delivered later like any read
    const value = this.inner.crossEntropy(this.loss(r));
    this.pendingReads++;
    return new Promise((resolve, reject) =>
      setTimeout(() => {
        this.pendingReads--;
        value.then(resolve, reject);
      }, 0),
    );
  }

  crossEntropyBackward(r: LossArgs<Buffer>, lossScale: number, dlogits: Buffer): void {
    this.inner.crossEntropyBackward(this.loss(r), lossScale, this.u(dlogits));
  }

  adamw(param: Buffer, grad: Buffer, m: Buffer, v: Buffer, n: number, h: AdamWStep): void {
    const [P, G, M, V] = this.us([param, grad, m, v]);
    this.inner.adamw(P, G, M, V, n, h);
  }

  dropout(x: Buffer, p: number, seed: number, y: Buffer, n: number): void {
    this.inner.dropout(this.u(x), p, seed, this.u(y), n);
  }

  copy(c: CopyArgs<Buffer>): void {
    this.inner.copy({ ...c, dst: this.u(c.dst), src: this.u(c.src) });
  }

  logSoftmaxTopK(...a: Parameters<Device<Buffer>['logSoftmaxTopK']>): void {
    const [x, rows, V, k, t, values, indices] = a;
    this.inner.logSoftmaxTopK(this.u(x), rows, V, k, t, this.u(values), this.u(indices));
  }

  conv2d(...a: Parameters<Device<Buffer>['conv2d']>): void {
    const [x, w, bias, residual, y, d, relu] = a;
    const b = bias && this.u(bias);
    this.inner.conv2d(this.u(x), this.u(w), b, residual && this.u(residual), this.u(y), d, relu);
  }

  avgPool2d(x: Buffer, y: Buffer, d: Conv2dDims): void {
    this.inner.avgPool2d(this.u(x), this.u(y), d);
  }

  quantizeWeight(w: Buffer, rows: number, cols: number, f: WeightFormat, axis: 0 | 1, y: Buffer): void {
    this.inner.quantizeWeight(this.u(w), rows, cols, f, axis, this.u(y));
  }
}

/** The test backend: DeviceBackend (the shared checks) over the async device. */
export class AsyncTestBackend extends DeviceBackend<Buffer> {
  constructor(readonly testDevice = new AsyncTestDevice()) {
    super(testDevice);
  }
}
