import type { Backend } from './backend.js';
import { ShapeError } from './backend.js';

export type DType = 'f32' | 'i32';

export function shapeSize(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0)
      throw new ShapeError(`invalid dimension ${d} in shape [${shape.join(', ')}]`);
    n *= d;
  }
  return n;
}

/** What a packed weight stands for: a (rows, cols) tensor, used as matmul's B with `transB`. */
export interface PackedLayout {
  readonly rows: number;
  readonly cols: number;
  readonly transB: boolean;
}

/**
 * One allocation of a backend: the storage handle every tensor viewing it shares. Scopes (memory.ts) and
 * the backend's live-memory count work on allocations, so a view or a reshape never frees (or leaks) twice.
 */
export class Allocation {
  /** False once released. */
  live = true;
  /**
   * A quantized weight (Backend.quantizeWeight): no op may write to it, since a device may keep a compact
   * copy that stands for these values.
   */
  readOnly = false;
  /**
   * A packed weight (Backend.packWeight): the storage holds the device's layout of matmul's B, not row-major
   * values, so only matmul (as B, with this transB) and download may read it. Packed weights are read-only.
   */
  packed: PackedLayout | null = null;
  /** How the backend that made it releases it (registerAllocation, for scopes). @internal */
  release: ((a: Allocation) => void) | null = null;

  constructor(
    readonly storage: unknown,
    readonly bytes: number,
  ) {}
}

/**
 * A shape plus a backend-owned storage handle. Model code treats `storage` as opaque: only the backend that
 * made the tensor reads it.
 *
 * Ownership: a tensor either owns its allocation or is a view of it. `view(shape)` aliases without owning
 * (freeing the view releases nothing; the base must outlive it); `reshape(shape)` moves ownership to the
 * new handle (the old one becomes a view), for a function that returns its own result under a new shape.
 */
export class Tensor {
  readonly shape: readonly number[];
  readonly size: number;
  /** Whether this handle frees the allocation (false for views). */
  private owner: boolean;

  constructor(
    readonly backend: Backend,
    readonly allocation: Allocation,
    shape: readonly number[],
    readonly dtype: DType = 'f32',
    owner = true,
  ) {
    this.shape = Object.freeze([...shape]);
    this.size = shapeSize(shape);
    this.owner = owner;
  }

  get storage(): unknown {
    return this.allocation.storage;
  }

  /** True for a view: it aliases storage another tensor owns. */
  get isView(): boolean {
    return !this.owner;
  }

  get rank(): number {
    return this.shape.length;
  }

  /** Size of the last axis. */
  get cols(): number {
    return this.shape.length === 0 ? 1 : this.shape[this.shape.length - 1];
  }

  /** Product of all axes but the last. */
  get rows(): number {
    return this.cols === 0 ? 0 : this.size / this.cols;
  }

  /** The same storage under a new shape (-1 infers one axis), as a view: it does not own the storage. */
  view(shape: readonly number[]): Tensor {
    return new Tensor(this.backend, this.allocation, this.resolve(shape), this.dtype, false);
  }

  /**
   * The same storage under a new shape, taking over this tensor's ownership: this handle becomes a view
   * (freeing it releases nothing) and freeing the result frees the storage.
   */
  reshape(shape: readonly number[]): Tensor {
    const t = new Tensor(this.backend, this.allocation, this.resolve(shape), this.dtype, this.owner);
    this.owner = false;
    return t;
  }

  private resolve(shape: readonly number[]): number[] {
    const known = shape.filter((d) => d !== -1);
    const inferred = shape.length - known.length;
    if (inferred > 1) throw new ShapeError(`reshape: more than one -1 in [${shape.join(', ')}]`);
    let resolved = [...shape];
    if (inferred === 1) {
      const k = shapeSize(known);
      if (k === 0 || this.size % k !== 0)
        throw new ShapeError(`reshape: cannot view [${this.shape.join(', ')}] as [${shape.join(', ')}]`);
      resolved = shape.map((d) => (d === -1 ? this.size / k : d));
    }
    if (shapeSize(resolved) !== this.size)
      throw new ShapeError(`reshape: cannot view [${this.shape.join(', ')}] as [${shape.join(', ')}]`);
    return resolved;
  }

  /** Copy to the host, asynchronously (the backend resolves once the data exists). */
  read(): Promise<Float32Array | Int32Array> {
    return this.backend.download(this);
  }

  /** Release the storage now (a view releases nothing). */
  free(): void {
    this.backend.free(this);
  }

  dispose(): void {
    this.backend.free(this);
  }

  /** `using t = backend.matmul(...)` frees t when the block ends (explicit resource management). */
  [Symbol.dispose](): void {
    this.backend.free(this);
  }

  toString(): string {
    return `Tensor(${this.backend.name}, ${this.dtype}, [${this.shape.join(', ')}])`;
  }
}
