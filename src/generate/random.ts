/**
 * A small seeded generator for sampling (xoshiro128**, seeded through splitmix32). Each caption gets its own
 * stream derived from (seed, input index, sample index), so a caption does not depend on how inputs were
 * batched or on which other inputs were captioned with it.
 */

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
