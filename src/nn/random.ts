/**
 * Seeds for dropout masks: each dropout call takes the next 32-bit seed of one mulberry32 stream, so a training
 * step is reproducible from one number (the backend turns each seed into a mask). The generator is the
 * project's one seeded RNG (util/random.ts).
 */
export { Mulberry32 as SeedSequence } from '../util/random.js';
