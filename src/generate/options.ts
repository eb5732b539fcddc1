/**
 * Decoding options shared by every decoder, their defaults (the official ClipCap predict.py values) and
 * validation. Kept free of model code: decoders only see a CausalLM and these options.
 */
import { UserError } from '../util/errors.js';

export type DecodeMethod = 'beam' | 'greedy' | 'nucleus';

/** GPT-2 ids of the stop tokens the CLI names. */
export const PERIOD_TOKEN_ID = 13; // "."
export const EOS_TOKEN_ID = 50256; // "<|endoftext|>"

/** How a caption ends: after ".", after "<|endoftext|>", or only at the token limit. */
export type StopSpec = '.' | 'eos' | 'none';

export interface DecodeOptions {
  /** Decoder: `beam` (official generate_beam), `greedy` (official generate2) or `nucleus` (top-p sampling). */
  method?: DecodeMethod;
  /** Beams per image (beam only). Default 5. */
  beamSize?: number;
  /** Most tokens per caption (the official `entry_length`). Default 67. */
  maxTokens?: number;
  /** Stop after this token: '.' (default, id 13), 'eos' (id 50256), 'none', or any GPT-2 id. */
  stop?: StopSpec | number;
  /** Logits are divided by it before any other processing. Default 1 (values <= 0 mean 1, as the official code). */
  temperature?: number;
  /** Nucleus mass: sampling keeps the most likely tokens until their probability passes it. Default 0.8. */
  topP?: number;
  /** Seed of the sampler (nucleus). Default 0. */
  seed?: number;
  /** Captions sampled per image (nucleus). Default 1. */
  numCaptions?: number;
}

/** Options with every default filled in and the stop token resolved to an id (or null). */
export interface ResolvedDecodeOptions {
  method: DecodeMethod;
  beamSize: number;
  maxTokens: number;
  stopTokenId: number | null;
  temperature: number;
  topP: number;
  seed: number;
  numCaptions: number;
}

export const DEFAULT_DECODE_OPTIONS: Readonly<ResolvedDecodeOptions> = Object.freeze({
  method: 'beam',
  beamSize: 5,
  maxTokens: 67,
  stopTokenId: PERIOD_TOKEN_ID,
  temperature: 1,
  topP: 0.8,
  seed: 0,
  numCaptions: 1,
});

/** '.' | 'eos' | 'none' | '<|endoftext|>' | an id -> the token id, or null for no stop token. */
export function resolveStopToken(
  stop: StopSpec | number | string | undefined,
  vocabSize = 50257,
): number | null {
  if (stop === undefined) return PERIOD_TOKEN_ID;
  if (typeof stop === 'number') {
    if (!Number.isInteger(stop) || stop < 0 || stop >= vocabSize)
      throw new UserError(
        `stop token id ${stop} is not a GPT-2 id: use 0..${vocabSize - 1}, '.', eos or none`,
      );
    return stop;
  }
  switch (stop) {
    case '.':
      return PERIOD_TOKEN_ID;
    case 'eos':
    case '<|endoftext|>':
      return EOS_TOKEN_ID;
    case 'none':
      return null;
    default:
      throw new UserError(`unknown stop token "${stop}": use '.', eos or none`);
  }
}

function positiveInt(name: string, v: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!Number.isInteger(v) || v < 1 || v > max)
    throw new UserError(`${name} must be an integer from 1 to ${max}, got ${v}`);
  return v;
}

/** Fill defaults and check ranges; bad values throw a UserError naming the option. */
export function resolveDecodeOptions(o: DecodeOptions = {}, vocabSize = 50257): ResolvedDecodeOptions {
  const d = DEFAULT_DECODE_OPTIONS;
  const method = o.method ?? d.method;
  if (method !== 'beam' && method !== 'greedy' && method !== 'nucleus')
    throw new UserError(`unknown decoder "${String(method)}": use beam, greedy or nucleus`);
  const topP = o.topP ?? d.topP;
  if (!(topP > 0 && topP <= 1)) throw new UserError(`top-p must be in (0, 1], got ${topP}`);
  const temperature = o.temperature ?? d.temperature;
  if (!Number.isFinite(temperature)) throw new UserError(`temperature must be a number, got ${temperature}`);
  const seed = o.seed ?? d.seed;
  if (!Number.isInteger(seed)) throw new UserError(`seed must be an integer, got ${seed}`);
  return {
    method,
    beamSize: positiveInt('beam size', o.beamSize ?? d.beamSize, 1000),
    maxTokens: positiveInt('max tokens', o.maxTokens ?? d.maxTokens),
    stopTokenId: resolveStopToken(o.stop, vocabSize),
    temperature,
    topP,
    seed,
    numCaptions: positiveInt('number of captions', o.numCaptions ?? d.numCaptions, 1000),
  };
}
