/**
 * Greedy decoding as the official `generate2`: each step takes the newest position's logits / temperature,
 * removes tokens outside the top-p nucleus and takes the argmax. The nucleus filter always keeps the most
 * likely token, so the result is the argmax of logits / temperature (first index on ties, as torch.argmax);
 * top_p therefore never changes the output and is not applied here. Stops after the stop token or maxTokens.
 *
 * Batched: every input is one cache row; finished rows leave the cache, the rest continue.
 */
import type { Tensor } from '../engine/tensor.js';
import type { CausalLM } from './lm.js';
import { argmax, effectiveTemperature } from './logits.js';
import type { ResolvedDecodeOptions } from './options.js';
import { feedTokens, keepRows, runPrefix } from './steps.js';
import type { GenerationResult } from './types.js';

/** prefix: (B, K, E) -> one sequence per input. */
export async function greedyDecode(
  lm: CausalLM,
  prefix: Tensor,
  opts: Pick<ResolvedDecodeOptions, 'maxTokens' | 'stopTokenId' | 'temperature'>,
): Promise<GenerationResult[]> {
  const batch = prefix.shape[0];
  const V = lm.vocabSize;
  const t = effectiveTemperature(opts.temperature);
  const scaled = new Float32Array(t === 1 ? 0 : V);
  const tokens: number[][] = Array.from({ length: batch }, () => []);
  let { cache, logits } = await runPrefix(lm, prefix, opts.maxTokens);
  try {
    let rowInput = tokens.map((_, i) => i); // cache row -> input index
    for (;;) {
      const keep: number[] = [];
      for (let r = 0; r < rowInput.length; r++) {
        let tok: number;
        if (t === 1) tok = argmax(logits, r * V, V);
        else {
          // Divide in float32 as the official code does: rounding can create ties that argmax breaks by index.
          for (let v = 0; v < V; v++) scaled[v] = logits[r * V + v] / t;
          tok = argmax(scaled);
        }
        const seq = tokens[rowInput[r]];
        seq.push(tok);
        if (tok !== opts.stopTokenId && seq.length < opts.maxTokens) keep.push(r);
      }
      if (keep.length === 0) break;
      cache = keepRows(cache, keep);
      rowInput = keep.map((r) => rowInput[r]);
      logits = await feedTokens(
        lm,
        cache,
        rowInput.map((i) => tokens[i][tokens[i].length - 1]),
      );
    }
  } finally {
    cache.dispose();
  }
  return tokens.map((seq) => ({ sequences: [{ tokens: seq }] }));
}
