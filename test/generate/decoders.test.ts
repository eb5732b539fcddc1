import { describe, expect, it } from 'vitest';
import {
  beamDecode,
  generate,
  greedyDecode,
  nucleusDecode,
  resolveDecodeOptions,
} from '../../src/generate/index.js';
import { nucleus } from '../../src/generate/logits.js';
import { FakeLM } from './fake-lm.js';
import { officialBeam, officialGreedy } from './official.js';

const K = 4;

/** Deterministic prefix values in (0, 1) for `batch` inputs. */
function prefixData(lm: FakeLM, batch: number, salt = 0): Float32Array {
  const d = new Float32Array(batch * K * lm.width);
  for (let i = 0; i < d.length; i++) d[i] = ((i * 7919 + salt * 104729) % 1000) / 1000 + 0.0005;
  return d;
}

function row(d: Float32Array, lm: FakeLM, i: number): Float32Array {
  return d.subarray(i * K * lm.width, (i + 1) * K * lm.width);
}

describe('beam search (official generate_beam with a KV cache, batched)', () => {
  for (const [stop, label] of [
    [13, "stop '.'"],
    [null, 'no stop token'],
  ] as const) {
    it(`matches the uncached one-input-at-a-time port, ${label}`, async () => {
      const lm = new FakeLM();
      const B = 6;
      const data = prefixData(lm, B);
      const res = await beamDecode(lm, lm.prefix(data, B, K), {
        beamSize: 5,
        maxTokens: 20,
        stopTokenId: stop,
        temperature: 1,
      });
      let stoppedEarly = 0;
      for (let i = 0; i < B; i++) {
        const ref = officialBeam(lm, row(data, lm, i), 5, 20, stop);
        expect(res[i].sequences.map((s) => s.tokens)).toEqual(ref.map((s) => s.tokens));
        expect(res[i].sequences.map((s) => s.score)).toEqual(ref.map((s) => s.score));
        if (ref.some((s) => s.tokens.length < 20)) stoppedEarly++;
      }
      // The fake model makes "." likelier with length: with a stop token some beams must finish early.
      if (stop !== null) expect(stoppedEarly).toBeGreaterThan(0);
      console.log(`beam ${label}: ${stoppedEarly}/${B} inputs had beams that stopped before 20 tokens`);
    });
  }

  it('puts every input’s beams into one step call and drops finished inputs', async () => {
    const lm = new FakeLM({ stopBias: 1.5 });
    const B = 4;
    const res = await beamDecode(lm, lm.prefix(prefixData(lm, B, 3), B, K), {
      beamSize: 3,
      maxTokens: 30,
      stopTokenId: 13,
      temperature: 1,
    });
    expect(lm.stepRows[0]).toBe(B); // the prefix, once per input
    expect(lm.stepRows[1]).toBe(B * 3);
    for (const r of lm.stepRows.slice(1)) expect(r % 3).toBe(0);
    // Inputs finish at different steps, so the batch shrinks.
    expect(Math.min(...lm.stepRows.slice(1))).toBeLessThan(B * 3);
    for (let i = 0; i < B; i++) {
      const ref = officialBeam(lm, row(prefixData(lm, B, 3), lm, i), 3, 30, 13);
      expect(res[i].sequences).toEqual(ref);
    }
    expect(lm.store.live).toBe(B * 0 + 1); // only the prefix tensor is still alive
  });

  it('breaks ties like the port (lower index first) when logits are coarse', async () => {
    const lm = new FakeLM({ quantum: 0.5, vocabSize: 200 });
    const data = prefixData(lm, 3, 8);
    const res = await beamDecode(lm, lm.prefix(data, 3, K), {
      beamSize: 5,
      maxTokens: 15,
      stopTokenId: 13,
      temperature: 1,
    });
    for (let i = 0; i < 3; i++)
      expect(res[i].sequences).toEqual(officialBeam(lm, row(data, lm, i), 5, 15, 13));
    const greedy = await greedyDecode(lm, lm.prefix(data, 3, K), {
      maxTokens: 15,
      stopTokenId: 13,
      temperature: 1,
    });
    for (let i = 0; i < 3; i++)
      expect(greedy[i].sequences[0].tokens).toEqual(officialGreedy(lm, row(data, lm, i), 15, 13));
  });

  it('applies the temperature before the log-softmax', async () => {
    const lm = new FakeLM();
    const data = prefixData(lm, 2, 5);
    const res = await beamDecode(lm, lm.prefix(data, 2, K), {
      beamSize: 4,
      maxTokens: 12,
      stopTokenId: 13,
      temperature: 0.7,
    });
    for (let i = 0; i < 2; i++)
      expect(res[i].sequences).toEqual(officialBeam(lm, row(data, lm, i), 4, 12, 13, 0.7));
  });

  it('handles maxTokens 1 and beam 1', async () => {
    const lm = new FakeLM();
    const data = prefixData(lm, 2, 7);
    const one = await beamDecode(lm, lm.prefix(data, 2, K), {
      beamSize: 5,
      maxTokens: 1,
      stopTokenId: 13,
      temperature: 1,
    });
    for (let i = 0; i < 2; i++)
      expect(one[i].sequences).toEqual(officialBeam(lm, row(data, lm, i), 5, 1, 13));
    const b1 = await beamDecode(lm, lm.prefix(data, 2, K), {
      beamSize: 1,
      maxTokens: 9,
      stopTokenId: null,
      temperature: 1,
    });
    for (let i = 0; i < 2; i++)
      expect(b1[i].sequences).toEqual(officialBeam(lm, row(data, lm, i), 1, 9, null));
  });
});

describe('greedy (official generate2)', () => {
  it('matches the uncached port with its top-p filter, batched with per-input stopping', async () => {
    const lm = new FakeLM({ stopBias: 0.8 });
    const B = 7;
    const data = prefixData(lm, B, 11);
    const res = await greedyDecode(lm, lm.prefix(data, B, K), {
      maxTokens: 25,
      stopTokenId: 13,
      temperature: 1,
    });
    const lengths: number[] = [];
    for (let i = 0; i < B; i++) {
      const ref = officialGreedy(lm, row(data, lm, i), 25, 13);
      expect(res[i].sequences).toEqual([{ tokens: ref }]);
      lengths.push(ref.length);
    }
    expect(new Set(lengths).size).toBeGreaterThan(1); // inputs stopped at different steps
    expect(lm.stepRows[0]).toBe(B);
    expect(lm.stepRows.length).toBe(Math.max(...lengths)); // one batched call per step
    console.log(`greedy lengths ${lengths.join(',')}`);
  });

  it('with temperature and no stop token runs to maxTokens', async () => {
    const lm = new FakeLM();
    const data = prefixData(lm, 3, 2);
    const res = await generate(lm, lm.prefix(data, 3, K), {
      method: 'greedy',
      stop: 'none',
      maxTokens: 15,
      temperature: 1.3,
    });
    for (let i = 0; i < 3; i++) {
      expect(res[i].sequences[0].tokens).toEqual(officialGreedy(lm, row(data, lm, i), 15, null, 0.8, 1.3));
      expect(res[i].sequences[0].tokens.length).toBe(15);
    }
  });
});

describe('nucleus sampling', () => {
  const opts = resolveDecodeOptions(
    { method: 'nucleus', numCaptions: 3, seed: 42, maxTokens: 12, topP: 0.8 },
    64,
  );

  it('is reproducible from the seed and independent of batching', async () => {
    const lm = new FakeLM();
    const data = prefixData(lm, 4, 1);
    const all = await nucleusDecode(lm, lm.prefix(data, 4, K), opts);
    const again = await nucleusDecode(lm, lm.prefix(data, 4, K), opts);
    expect(again).toEqual(all);
    expect(all[2].sequences.length).toBe(3);
    // Input 2 alone, told its index, gives the same samples.
    const alone = await nucleusDecode(lm, lm.prefix(row(data, lm, 2).slice(), 1, K), opts, {
      inputIndices: [2],
    });
    expect(alone[0]).toEqual(all[2]);
    const other = await nucleusDecode(lm, lm.prefix(data, 4, K), { ...opts, seed: 43 });
    expect(other).not.toEqual(all);
  });

  it('only draws tokens inside the top-p nucleus, and top-p → 0 is greedy', async () => {
    const lm = new FakeLM();
    const data = prefixData(lm, 3, 9);
    const res = await nucleusDecode(lm, lm.prefix(data, 3, K), { ...opts, topP: 0.5 });
    for (let i = 0; i < 3; i++)
      for (const s of res[i].sequences)
        s.tokens.forEach((tok, t) => {
          const logits = lm.logitsOf(lm.history(row(data, lm, i), s.tokens.slice(0, t)));
          expect(Array.from(nucleus(logits, 0, logits.length, 1, 0.5).ids)).toContain(tok);
        });
    const tiny = await nucleusDecode(lm, lm.prefix(data, 3, K), { ...opts, topP: 1e-9 });
    for (let i = 0; i < 3; i++)
      for (const s of tiny[i].sequences)
        expect(s.tokens).toEqual(officialGreedy(lm, row(data, lm, i), 12, 13));
  });

  it('draws first tokens with the renormalized nucleus probabilities', async () => {
    const lm = new FakeLM({ scale: 2 });
    const data = prefixData(lm, 1, 4);
    const n = 2000;
    const res = await nucleusDecode(lm, lm.prefix(data, 1, K), {
      ...opts,
      numCaptions: n,
      maxTokens: 1,
      topP: 0.6,
    });
    const logits = lm.logitsOf(lm.history(data, []));
    const { ids, probs } = nucleus(logits, 0, logits.length, 1, 0.6);
    const counts = new Map<number, number>();
    for (const s of res[0].sequences) counts.set(s.tokens[0], (counts.get(s.tokens[0]) ?? 0) + 1);
    let worst = 0;
    ids.forEach((id, j) => {
      const freq = (counts.get(id) ?? 0) / n;
      worst = Math.max(worst, Math.abs(freq - probs[j]) / Math.sqrt((probs[j] * (1 - probs[j])) / n));
    });
    expect([...counts.keys()].every((id) => ids.includes(id))).toBe(true);
    console.log(`nucleus: ${ids.length} tokens kept, worst deviation ${worst.toFixed(2)} sigma`);
    expect(worst).toBeLessThan(4.5);
  });
});

describe('nucleus filter', () => {
  /** The official filter by a full sort: keep sorted token j while the mass before it is <= top_p. */
  function fullSortNucleus(x: Float32Array, topP: number): number[] {
    const max = Math.max(...x);
    const e = Array.from(x, (v) => Math.exp(v - max));
    const sum = e.reduce((a, b) => a + b, 0);
    const order = [...x.keys()].sort((a, b) => e[b] - e[a] || a - b);
    const kept: number[] = [];
    let cum = 0;
    for (const i of order) {
      kept.push(i);
      cum += e[i] / sum;
      if (cum > topP) break;
    }
    return kept.sort((a, b) => a - b);
  }

  it('keeps exactly the set a full sort keeps (peaked, flat and tied rows)', () => {
    let seed = 1;
    const rand = (): number => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
    let checked = 0;
    for (const [label, make] of [
      ['peaked', (i: number) => rand() * 12 + (i === 7 ? 5 : 0)],
      ['flat', () => rand() * 0.01],
      ['ties', () => Math.floor(rand() * 4)],
    ] as const)
      for (const topP of [1e-9, 0.3, 0.8, 0.95, 1]) {
        const x = Float32Array.from({ length: 3000 }, (_, i) => make(i));
        const got = Array.from(nucleus(x, 0, x.length, 1, topP).ids).sort((a, b) => a - b);
        expect(got, `${label} top-p ${topP}`).toEqual(fullSortNucleus(x, topP));
        checked++;
      }
    console.log(`nucleus filter: ${checked} rows match the full-sort filter`);
  });
});

describe('options', () => {
  it('resolves stop tokens and rejects bad values with one clear line', () => {
    expect(resolveDecodeOptions({}).stopTokenId).toBe(13);
    expect(resolveDecodeOptions({ stop: 'eos' }).stopTokenId).toBe(50256);
    expect(resolveDecodeOptions({ stop: 'none' }).stopTokenId).toBeNull();
    expect(resolveDecodeOptions({}).maxTokens).toBe(67);
    expect(() => resolveDecodeOptions({ beamSize: 0 })).toThrow(/beam size must be an integer/);
    expect(() => resolveDecodeOptions({ topP: 1.5 })).toThrow(/top-p/);
  });

  it('refuses more positions than the model has', async () => {
    const lm = new FakeLM({ maxPositions: 10 });
    await expect(generate(lm, lm.prefix(prefixData(lm, 1), 1, K), { maxTokens: 8 })).rejects.toThrow(
      /lower --max-tokens to at most 7/,
    );
  });
});
