/**
 * The project's one seeded generator: mulberry32 (Tommy Ettinger). It advances a 32-bit state by a constant
 * and hashes it, so its n-th output is a pure function of `seed + n·0x6D2B79F5`: a sequential stream
 * (`Mulberry32`), a kernel that hashes each index directly (`mulberry32At`, dropout masks on every backend)
 * and a resumed training run (`deriveSeed`, one stream per epoch or step) all agree without carrying state.
 * No Node APIs: the reference backend uses it in a browser too.
 *
 * (Sampling in generate/ uses xoshiro128** streams keyed by input index: a different job, kept there.)
 */

const GOLDEN = 0x6d2b79f5;

/** mulberry32's output hash of a state, as an unsigned 32-bit integer. */
function mix(state: number): number {
  let z = state | 0;
  z = Math.imul(z ^ (z >>> 15), z | 1);
  z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
  return (z ^ (z >>> 14)) >>> 0;
}

/** The (index + 1)-th output of mulberry32 seeded with `seed`, as a float in [0, 1). */
export function mulberry32At(seed: number, index: number): number {
  return mix((seed + Math.imul(index + 1, GOLDEN)) | 0) / 4294967296;
}

/** A sequential mulberry32 stream; its whole state is one 32-bit integer (`state`), so it can be saved. */
export class Mulberry32 {
  state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** The next 32 bits as an unsigned integer (e.g. a seed for a dropout mask). */
  next(): number {
    this.state = (this.state + GOLDEN) >>> 0;
    return mix(this.state);
  }

  /** Uniform in [0, 1) (32 random bits). */
  nextFloat(): number {
    return this.next() / 4294967296;
  }
}

/** A uniform float generator in [0, 1) from a seed (a `Mulberry32` as a function). */
export function mulberry32(seed: number): () => number {
  const g = new Mulberry32(seed);
  return () => g.nextFloat();
}

/**
 * An independent seed for stream `key` of a run seeded with `seed` (e.g. the shuffle of epoch e, the dropout
 * of step s): two rounds of the hash over (seed, key), so nearby keys give unrelated streams.
 */
export function deriveSeed(seed: number, ...keys: number[]): number {
  let s = seed >>> 0;
  for (const k of keys) s = mix((mix((s + GOLDEN) | 0) ^ Math.imul(k + 1, 0x9e3779b9)) | 0);
  return s;
}

/** A seeded permutation of 0..n-1 (Fisher-Yates), as an Int32Array (compact for millions of captions). */
export function shuffled(n: number, next: () => number): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}
