/**
 * Decoding through asynchronous reads: beam and greedy decoding of the tiny ClipCap models on the test-only
 * backend whose reads resolve on a later tick (test/engine/async-backend.ts) give the reference backend's
 * tokens exactly, and leave no tensor behind (live memory after decoding equals that before it; the device
 * counts its own buffers).
 */
import { describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../../src/engine/reference.js';
import { generate } from '../../src/generate/index.js';
import type { ClipCapModel } from '../../src/models/clipcap.js';
import { f32, get, loadGoldens } from '../models/helpers.js';
import { tinyClipcap } from '../models/loaders.js';
import { AsyncTestBackend } from '../engine/async-backend.js';

async function decode(model: ClipCapModel, prefix: Float32Array): Promise<number[][][]> {
  const out: number[][][] = [];
  for (const method of ['beam', 'greedy'] as const) {
    const p = await model.prefixEmbeddings(prefix);
    const r = await generate(model.gpt2, p, { method, beamSize: 3, maxTokens: 12 });
    p.free();
    out.push(r.flatMap((x) => x.sequences.map((s) => s.tokens)));
  }
  return out;
}

describe('decoding on a backend whose reads resolve later', () => {
  for (const kind of ['mlp', 'transformer'] as const) {
    it(`ClipCap ${kind}: beam and greedy tokens equal the reference backend's, and nothing leaks`, async () => {
      const g = await loadGoldens();
      const [n, d] = get(g, 'clipcap.prefix').shape;
      const prefix = f32(g, 'clipcap.prefix').slice(0, Math.min(n, 2) * d);
      const ref = await tinyClipcap(new ReferenceBackend(), kind);
      const be = new AsyncTestBackend();
      const model = await tinyClipcap(be, kind);
      const before = be.memory();
      const deviceBefore = be.testDevice.live;
      const got = await decode(model, prefix);
      expect(got).toEqual(await decode(ref, prefix));
      expect(got[0].length).toBeGreaterThan(0);
      expect(be.memory()).toEqual(before);
      expect(be.testDevice.live).toBe(deviceBefore);
      expect(be.testDevice.pendingReads).toBe(0);
      model.dispose();
      ref.dispose();
      expect(be.testDevice.live).toBe(0);
    });
  }
});
