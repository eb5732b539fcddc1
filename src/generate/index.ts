/**
 * Caption decoding, apart from the models: each decoder takes any CausalLM (see lm.ts) and a batch of prefix
 * embeddings, runs the prefix once into a KV cache and then feeds one token per sequence per step.
 *
 * @example
 * ```ts
 * import { generate } from './generate/index.js';
 * // prefix: (B, K, E) from ClipCapModel.prefixEmbeddings(clipEmbeds)
 * const results = await generate(gpt2, prefix, { method: 'beam', beamSize: 5 });
 * results[0].sequences[0].tokens; // best beam of the first input
 * ```
 */
import type { Tensor } from '../engine/tensor.js';
import { beamDecode } from './beam.js';
import { greedyDecode } from './greedy.js';
import type { CausalLM } from './lm.js';
import { nucleusDecode, type NucleusContext } from './nucleus.js';
import { resolveDecodeOptions, type DecodeOptions, type ResolvedDecodeOptions } from './options.js';
import type { GenerationResult } from './types.js';

export * from './options.js';
export type * from './types.js';
export type { CausalLM, KvCache } from './lm.js';
export { beamDecode, greedyDecode, nucleusDecode };
export type { NucleusContext };

/** Decode every prefix row of `prefix` (B, K, E) with the chosen method; one result per row, in order. */
export function generate(
  lm: CausalLM,
  prefix: Tensor,
  options: DecodeOptions | ResolvedDecodeOptions = {},
  context: NucleusContext = {},
): Promise<GenerationResult[]> {
  const o = isResolved(options) ? options : resolveDecodeOptions(options, lm.vocabSize);
  switch (o.method) {
    case 'beam':
      return beamDecode(lm, prefix, o);
    case 'greedy':
      return greedyDecode(lm, prefix, o);
    case 'nucleus':
      return nucleusDecode(lm, prefix, o, context);
  }
}

function isResolved(o: DecodeOptions | ResolvedDecodeOptions): o is ResolvedDecodeOptions {
  return 'stopTokenId' in o;
}
