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

/**
 * A shape plus a backend-owned storage handle. Model code treats `storage` as opaque: only the backend that
 * made the tensor reads it. `reshape` shares storage (row-major, so any reshape with the same size is free).
 */
export class Tensor {
  readonly shape: readonly number[];
  readonly size: number;

  constructor(
    readonly backend: Backend,
    readonly storage: unknown,
    shape: readonly number[],
    readonly dtype: DType = 'f32',
  ) {
    this.shape = Object.freeze([...shape]);
    this.size = shapeSize(shape);
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

  /** Same storage, new shape; -1 infers one axis. */
  reshape(shape: readonly number[]): Tensor {
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
    return new Tensor(this.backend, this.storage, resolved, this.dtype);
  }

  /** Copy to the host (for inputs, logits, losses and tests; never in model hot paths). */
  toArray(): Float32Array | Int32Array {
    return this.backend.download(this);
  }

  dispose(): void {
    this.backend.free(this);
  }

  toString(): string {
    return `Tensor(${this.backend.name}, ${this.dtype}, [${this.shape.join(', ')}])`;
  }
}
