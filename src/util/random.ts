/**
 * The project's one seeded generator: mulberry32 (Tommy Ettinger). It advances a 32-bit state by a constant
 * and hashes it, so its n-th output is a pure function of `seed + n·0x6D2B79F5`: a sequential stream
 * (`Mulberry32`), a kernel that hashes each index directly (`mulberry32At`, dropout masks on every backend)
 * and a resumed training run (`deriveSeed`, one stream per epoch or step) all agree without carrying state.
 * No Node APIs: the reference backend uses it in a browser too.
 *
 * It is the project's one random module: dropout seeds (`SeedSequence`, an alias of Mulberry32), masks
 * (`mulberry32At`), shuffles and per-run streams (`deriveSeed`), and, below, caption sampling's xoshiro128**
 * streams (`Rng`), keyed by (seed, input stream, sample) so a sampled caption does not depend on batching.
 * Every stream is unchanged from when these lived in four files (resume test and goldens depend on them).
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

/**
 * Seeds for dropout masks: each dropout call takes the next 32-bit seed of one mulberry32 stream, so a
 * training step is reproducible from one number (the backend turns each seed into a mask).
 */
export { Mulberry32 as SeedSequence };

// ---------------------------------------------------------------- sampling (generate/)
// A small seeded generator for sampling (xoshiro128**, seeded through splitmix32). Each caption gets its own
// stream derived from (seed, input index, sample index), so a caption does not depend on how inputs were
// batched or on which other inputs were captioned with it.

function splitmix32(state: number): [number, number] {
  const s = (state + 0x9e3779b9) | 0;
  let z = s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return [s, (z ^ (z >>> 16)) >>> 0];
}

export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  /** A stream for `seed` and any number of further integers (e.g. input index, sample index). */
  constructor(seed: number, ...stream: number[]) {
    let s = seed | 0;
    for (const k of stream) [s] = splitmix32(s ^ Math.imul(k + 1, 0x27d4eb2f));
    let out: number;
    [s, out] = splitmix32(s);
    this.a = out;
    [s, out] = splitmix32(s);
    this.b = out;
    [s, out] = splitmix32(s);
    this.c = out;
    [, out] = splitmix32(s);
    this.d = out;
    if ((this.a | this.b | this.c | this.d) === 0) this.a = 1; // the all-zero state is a fixed point
  }

  /** Next 32 random bits as an unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  next(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** Pick index j with probability probs[j] (probs sum to 1) using one uniform draw. */
export function sampleIndex(probs: Float64Array, u: number): number {
  let cum = 0;
  for (let j = 0; j < probs.length; j++) {
    cum += probs[j];
    if (u < cum) return j;
  }
  return probs.length - 1; // rounding left the total just below 1
}

/**
 * A 32-bit stream id for an input from its values (FNV-1a over the float32 bit patterns): the same input
 * gets the same sampling stream wherever it is batched, and any change to it gives another.
 */
export function inputStream(values: Float32Array): number {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  let h = 0x811c9dc5;
  for (let i = 0; i < bits.length; i++) {
    const w = bits[i];
    h = Math.imul(h ^ (w & 0xff), 0x01000193);
    h = Math.imul(h ^ ((w >>> 8) & 0xff), 0x01000193);
    h = Math.imul(h ^ ((w >>> 16) & 0xff), 0x01000193);
    h = Math.imul(h ^ (w >>> 24), 0x01000193);
  }
  return (h ^ values.length) >>> 0;
}
