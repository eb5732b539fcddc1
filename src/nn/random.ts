/**
 * A small seeded generator of 32-bit seeds for dropout masks: each dropout call takes the next seed, so a
 * training run is reproducible from one number (the backend turns each seed into a mask).
 */
export class SeedSequence {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** The next 32-bit seed (mulberry32: a full-period 2^32 generator, good enough to decorrelate masks). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
}
