/** Element types found in checkpoint files. f16/bf16 are converted to f32 when read. */
export type FileDType = 'f64' | 'f32' | 'f16' | 'bf16' | 'i64' | 'i32' | 'i16' | 'i8' | 'u8' | 'bool';

/**
 * A tensor read from a file, on the host, contiguous row-major. Floating types arrive as Float32Array
 * (f16/bf16/f64 converted); integer types as Int32Array when they fit, else BigInt64Array for i64.
 */
export interface HostTensor {
  /** The dtype stored in the file (before conversion). */
  readonly dtype: FileDType;
  readonly shape: readonly number[];
  readonly data: Float32Array | Int32Array | BigInt64Array | Uint8Array;
}

/** Tensors by name, in file order. */
export type StateDict = Map<string, HostTensor>;
