/**
 * The dropout generator, shared by every backend so that a seed gives the same mask everywhere.
 *
 * mulberry32 (Tommy Ettinger) advances a 32-bit state by a constant and hashes it, so its n-th output is a
 * pure function of `seed + n·0x6D2B79F5`. Element i of a dropout mask uses output number i + 1: a
 * sequential generator and a multi-threaded kernel that hashes each index directly produce identical masks.
 */

/** The (index + 1)-th output of mulberry32 seeded with `seed`, as a float in [0, 1). */
export function mulberry32At(seed: number, index: number): number {
  let z = (seed + Math.imul(index + 1, 0x6d2b79f5)) | 0;
  z = Math.imul(z ^ (z >>> 15), z | 1);
  z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
  return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
}
