/** What the decoders return: token ids per input, with the beam decoder's scores. */

export interface GeneratedSequence {
  /**
   * Generated ids, the stop token included when one was produced (as the official decoders return them);
   * beam search's padding after a finished beam is not included.
   */
  tokens: number[];
  /** Beam only: the official ranking score, sum of token log-probabilities / length. */
  score?: number;
}

export interface GenerationResult {
  /** beam: every beam, best first; greedy: one; nucleus: the samples in the order drawn. */
  sequences: GeneratedSequence[];
}
