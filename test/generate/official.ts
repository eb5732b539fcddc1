/**
 * Straight ports of the official ClipCap decoders (predict.py `generate_beam`, `generate2`) for one input,
 * with no KV cache: every step recomputes the logits from the whole history, as the Python code does.
 * Test oracles for the cached, batched decoders in src/generate/.
 */
import type { FakeLM } from './fake-lm.js';

const f32 = Math.fround;

/** torch: logits.softmax(-1).log() in float32 (computed in float64, rounded once). */
function logSoftmax(logits: Float32Array, temperature: number): Float32Array {
  const t = temperature > 0 ? temperature : 1;
  const x = logits.map((v) => v / t);
  const max = Math.max(...x);
  const sum = x.reduce((s, v) => s + Math.exp(v - max), 0);
  return x.map((v) => v - max - Math.log(sum));
}

export function officialBeam(
  lm: FakeLM,
  prefix: Float32Array,
  beamSize: number,
  entryLength: number,
  stopToken: number | null,
  temperature = 1,
): { tokens: number[]; score: number }[] {
  const V = lm.vocabSize;
  let tokens: number[][] | null = null;
  let scores: number[] = [];
  let seqLengths = new Array<number>(beamSize).fill(1);
  let isStopped = new Array<boolean>(beamSize).fill(false);
  for (let i = 0; i < entryLength; i++) {
    if (tokens === null) {
      const logits = logSoftmax(lm.logitsOf(lm.history(prefix, [])), temperature);
      const order = [...logits.keys()].sort((a, b) => logits[b] - logits[a] || a - b).slice(0, beamSize);
      scores = order.map((v) => logits[v]);
      tokens = order.map((v) => [v]);
    } else {
      const cur: number[][] = tokens;
      const flat: { v: number; f: number }[] = [];
      seqLengths = seqLengths.map((l, b) => (isStopped[b] ? l : l + 1));
      for (let b = 0; b < beamSize; b++) {
        let logits: Float32Array;
        if (isStopped[b]) {
          logits = new Float32Array(V).fill(-Infinity);
          logits[0] = 0;
        } else logits = logSoftmax(lm.logitsOf(lm.history(prefix, cur[b])), temperature);
        for (let v = 0; v < V; v++)
          flat.push({ v: f32(f32(scores[b] + logits[v]) / seqLengths[b]), f: b * V + v });
      }
      flat.sort((x, y) => y.v - x.v || x.f - y.f);
      const top = flat.slice(0, beamSize);
      const src = top.map((c) => Math.floor(c.f / V));
      const next = top.map((c) => c.f % V);
      seqLengths = src.map((s) => seqLengths[s]);
      tokens = src.map((s, j) => [...cur[s], next[j]]);
      scores = top.map((c, j) => f32(c.v * seqLengths[j]));
      isStopped = src.map((s) => isStopped[s]);
    }
    isStopped = isStopped.map((st, b) => st || tokens![b][tokens![b].length - 1] === stopToken);
    if (isStopped.every(Boolean)) break;
  }
  const out = tokens!.map((seq, b) => ({
    tokens: seq.slice(0, Math.trunc(seqLengths[b])),
    score: f32(scores[b] / seqLengths[b]),
    b,
  }));
  out.sort((x, y) => y.score - x.score || x.b - y.b);
  return out.map(({ tokens, score }) => ({ tokens, score }));
}

export function officialGreedy(
  lm: FakeLM,
  prefix: Float32Array,
  entryLength: number,
  stopToken: number | null,
  topP = 0.8,
  temperature = 1,
): number[] {
  const tokens: number[] = [];
  for (let i = 0; i < entryLength; i++) {
    const t = temperature > 0 ? temperature : 1;
    const logits = lm.logitsOf(lm.history(prefix, tokens)).map((v) => v / t);
    // sort descending, cumulative softmax, remove above top_p shifted right by one, then argmax.
    const order = [...logits.keys()].sort((a, b) => logits[b] - logits[a] || a - b);
    const max = logits[order[0]];
    const sum = logits.reduce((s, v) => s + Math.exp(v - max), 0);
    let cum = 0;
    const remove: boolean[] = order.map((v) => {
      cum += Math.exp(logits[v] - max) / sum;
      return cum > topP;
    });
    const shifted = [false, ...remove.slice(0, -1)];
    order.forEach((v, j) => {
      if (shifted[j]) logits[v] = -Infinity;
    });
    let best = 0;
    for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
    tokens.push(best);
    if (best === stopToken) break;
  }
  return tokens;
}
