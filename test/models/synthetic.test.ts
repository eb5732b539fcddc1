import { describe, it, expect } from 'vitest';
import { GPT2_SMALL } from '../../src/config/models.js';
import type { StateDict } from '../../src/weights/host.js';
import {
  fnv1a32,
  lowbias32,
  syntheticGpt2,
  syntheticMapper,
  syntheticValues,
} from '../../src/models/synthetic.js';
import { expectClose, fixture, readJson } from './helpers.js';
import { syntheticGpt2Yielding, syntheticMapperYielding } from './synthetic-yielding.js';

describe('full-size weight rule', () => {
  it('hash primitives match their published test vectors', () => {
    // FNV-1a 32: "" -> 0x811c9dc5, "a" -> 0xe40c292c, "foobar" -> 0xbf9cf968
    expect([fnv1a32(''), fnv1a32('a'), fnv1a32('foobar')]).toEqual([0x811c9dc5, 0xe40c292c, 0xbf9cf968]);
    // lowbias32 maps 0 to 0 and is a bijection: distinct inputs give distinct outputs.
    expect(lowbias32(0)).toBe(0);
    expect(new Set([1, 2, 3, 4, 5].map(lowbias32)).size).toBe(5);
  });

  it('reproduces fullsize_rule_check.json', async () => {
    const check = await readJson<Record<string, number[]>>(fixture('fullsize_rule_check.json'));
    expect(Object.keys(check).length).toBeGreaterThan(0);
    for (const [name, ref] of Object.entries(check)) {
      // The check file lists the rule's raw values, c_attn.bias included (the models zero it, see synthetic.ts).
      const got = syntheticValues(name, ref.length, { zeroAttnBias: false });
      expectClose(`rule ${name}`, got, ref, 1e-7);
    }
  });

  it('the yielding builders of the tests give the same state dicts as the one-shot ones', async () => {
    const small = { ...GPT2_SMALL, n_layer: 1 };
    const same = (a: StateDict, b: StateDict): void => {
      expect([...a.keys()]).toEqual([...b.keys()]);
      for (const [k, t] of a) {
        expect(t.shape, k).toEqual(b.get(k)!.shape);
        expect(
          Buffer.from((t.data as Float32Array).buffer).equals(
            Buffer.from((b.get(k)!.data as Float32Array).buffer),
          ),
          k,
        ).toBe(true);
      }
    };
    same((await syntheticGpt2Yielding(small)).weights, syntheticGpt2(small).weights);
    same((await syntheticMapperYielding()).weights, syntheticMapper().weights);
  });
});
