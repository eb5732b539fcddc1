/**
 * Training on backends that only the Device interface knows, and device memory across training steps:
 * - the async test backend (async-backend.ts: opaque storage, reads on a later tick) runs ClipCap training
 *   steps, both mapper variants, train mode (GPT-2 dropout when fine-tuned), and gets the reference
 *   backend's losses and weights bit for bit (it computes with the reference kernels);
 * - every training step frees what it allocated: live tensors and bytes after step 1 equal those after
 *   step 50 (the step's activations, temporaries and saved attention state are scoped; gradients and AdamW
 *   moments are allocated once), on the native backend and on the async one, whose device counts its own
 *   buffers.
 */
import { describe, expect, it } from 'vitest';
import type { Backend } from '../../src/engine/backend.js';
import { availableBackends } from '../../src/engine/index.js';
import { ReferenceBackend } from '../../src/engine/reference.js';
import type { ClipCapModel } from '../../src/models/clipcap.js';
import { AdamW } from '../../src/nn/adamw.js';
import { linearWarmupSchedule } from '../../src/nn/schedule.js';
import { f32, get, i32, loadGoldens } from '../models/helpers.js';
import { tinyClipcap } from '../models/loaders.js';
import { AsyncTestBackend } from './async-backend.js';

const kinds = ['mlp', 'transformer'] as const;

async function batchOf(): Promise<{
  prefix: Float32Array;
  tokens: Int32Array;
  length: number;
  mask: Float32Array;
}> {
  const g = await loadGoldens();
  return {
    prefix: f32(g, 'clipcap.prefix'),
    tokens: i32(g, 'clipcap.tokens'),
    length: get(g, 'clipcap.tokens').shape[1],
    mask: f32(g, 'clipcap.mask'),
  };
}

/** Runs `steps` train-mode AdamW steps; calls after(step) after each. Returns the losses. */
async function train(
  model: ClipCapModel,
  steps: number,
  after: (step: number) => void = () => {},
): Promise<number[]> {
  const batch = await batchOf();
  const opt = new AdamW(
    model.trainableParameters(),
    { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-6, weightDecay: 0 },
    linearWarmupSchedule(2, steps + 2),
  );
  const losses: number[] = [];
  for (let s = 1; s <= steps; s++) {
    model.gpt2.setDropoutSeed(1000 + s);
    opt.zeroGrad();
    losses.push((await model.lossAndBackward(batch, { train: true })).loss);
    opt.step();
    after(s);
  }
  return losses;
}

async function weights(model: ClipCapModel): Promise<number[][]> {
  const out: number[][] = [];
  for (const p of model.trainableParameters()) out.push(Array.from(await p.value.read()));
  return out;
}

describe('a backend written against the Device interface alone (async reads, opaque storage)', () => {
  for (const kind of kinds) {
    it(`trains ClipCap ${kind} exactly as the reference backend does`, async () => {
      const ref = await tinyClipcap(new ReferenceBackend(), kind);
      const be = new AsyncTestBackend();
      const model = await tinyClipcap(be, kind);
      const want = await train(ref, 3);
      const got = await train(model, 3);
      expect(got.every(Number.isFinite)).toBe(true);
      expect(got).toEqual(want);
      expect(await weights(model)).toEqual(await weights(ref));
      expect(be.testDevice.pendingReads).toBe(0);
      ref.dispose();
      model.dispose();
      // every buffer the device handed out came back
      expect(be.testDevice.live).toBe(0);
      expect(be.memory()).toEqual({ tensors: 0, bytes: 0 });
    });
  }
});

const native = availableBackends().filter((b) => b.name === 'native');
// The async backend computes with the reference kernels: fewer steps keep it quick.
const memoryCases: [string, () => Backend, number][] = [
  ...native.map((b): [string, () => Backend, number] => ['native', () => b, 50]),
  ['async-test', () => new AsyncTestBackend(), 4],
];

describe.each(memoryCases)('live memory across training steps on %s', (_name, make, steps) => {
  for (const kind of kinds) {
    it(`ClipCap ${kind}: live tensors and bytes after step 1 equal those after step ${steps}`, async () => {
      const be = make();
      const model = await tinyClipcap(be, kind);
      const base = be.memory();
      let afterFirst = base;
      const device = be instanceof AsyncTestBackend ? be.testDevice : null;
      let deviceFirst = 0;
      await train(model, steps, (s) => {
        const m = be.memory();
        if (s === 1) {
          afterFirst = m;
          deviceFirst = device?.live ?? 0;
          // step 1 allocated the gradients and AdamW moments, nothing else stays
          expect(m.tensors).toBeGreaterThan(base.tensors);
        } else {
          expect(m, `step ${s}`).toEqual(afterFirst);
          if (device) expect(device.live, `device buffers after step ${s}`).toBe(deviceFirst);
        }
      });
      model.dispose();
    });
  }
});
