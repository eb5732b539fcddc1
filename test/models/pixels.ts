import { normalizeClip } from '../../src/image/index.js';

/** Golden uint8 crops (N, S, S, 3) -> normalized pixel_values (N, 3, S, S) with the library's CLIP normalization. */
export function normalizeCrops(u8: Uint8Array, n: number, s: number): Float32Array {
  const per = s * s * 3;
  const out = new Float32Array(n * per);
  for (let i = 0; i < n; i++) out.set(normalizeClip(u8.subarray(i * per, (i + 1) * per), s), i * per);
  return out;
}
