/**
 * The library API as README / JSDoc show it, imported from the package entry point: ClipCap.load from local
 * directories, fromPretrained through a local hub, every input kind, captionStream, dispose.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ClipCap,
  Gpt2Tokenizer,
  decodeToRgb,
  evaluateCaptions,
  loadSafetensors,
  loadTorchCheckpoint,
} from '../../src/index.js';
import type { CaptionInput, CaptionResult, CaptionSuccess } from '../../src/index.js';
import { fixture, withHub } from '../cli/harness.js';

const NAMES = (JSON.parse(readFileSync(fixture('goldens.json'), 'utf8')) as { images: string[] }).images;
const photo = (i: number): string => fixture('images', NAMES[i]);
const goldenBeam = (i: number): string =>
  (
    JSON.parse(readFileSync(fixture('goldens.json'), 'utf8')) as {
      generation: { model: string; image_index: number; beam5_entry20: string[] }[];
    }
  ).generation.find((g) => g.model === 'mlp' && g.image_index === i)!.beam5_entry20[0];

let env: Awaited<ReturnType<typeof withHub>>;
beforeAll(async () => {
  env = await withHub();
});
afterAll(async () => {
  await env.restore();
});

describe('library API', () => {
  it('exports the documented names', () => {
    expect(typeof Gpt2Tokenizer.load).toBe('function');
    expect(typeof loadSafetensors).toBe('function');
    expect(typeof loadTorchCheckpoint).toBe('function');
    expect(typeof evaluateCaptions).toBe('function');
  });

  it('ClipCap.load from local files captions paths, Buffers, RGB pixels and embeddings alike', async () => {
    const model = await ClipCap.load({
      clipcap: fixture('clipcap_mlp_tiny.pt'),
      clip: fixture('clip_tiny'),
      gpt2: fixture('gpt2_tiny'),
    });
    try {
      const rgb = await decodeToRgb(photo(1));
      const g = await loadSafetensors(fixture('goldens.safetensors'));
      const embeds = (await g.tensor('clip.image_embeds')).data as Float32Array;
      await g.close();
      const inputs: CaptionInput[] = [
        photo(0),
        readFileSync(photo(0)),
        rgb,
        { embedding: embeds.slice(24 * 2, 24 * 3), name: 'third' },
      ];
      const res = await model.caption(inputs, { maxTokens: 20 });
      const captions = res.map((r) => (r as CaptionSuccess).caption);
      expect(captions).toEqual([goldenBeam(0), goldenBeam(0), goldenBeam(1), goldenBeam(2)]);
      expect(res.map((r) => r.image)).toEqual([photo(0), undefined, undefined, 'third']);

      // Streaming: results arrive in order, batch by batch.
      async function* many(): AsyncGenerator<CaptionInput> {
        for (let i = 0; i < 5; i++) yield photo(i % 3);
      }
      const streamed: CaptionResult[] = [];
      for await (const r of model.captionStream(many(), { batchSize: 2, maxTokens: 20, method: 'greedy' }))
        streamed.push(r);
      expect(streamed.map((r) => r.index)).toEqual([0, 1, 2, 3, 4]);
      expect(streamed[3].caption).toBe(streamed[0].caption);
    } finally {
      model.dispose();
    }
    await expect(model.caption([photo(0)])).rejects.toThrow(/used after dispose/);
  });

  it('ClipCap.fromPretrained resolves the published repos through the hub cache', async () => {
    const model = await ClipCap.fromPretrained('coco', { gpt2: 'openai-community/gpt2' });
    try {
      const [r] = await model.caption([photo(2)], { maxTokens: 20 });
      expect(r.error ?? r.caption).toBe(goldenBeam(2));
    } finally {
      model.dispose();
    }
    expect(env.hub.requests.some((q) => q.includes('akhaliq/CLIP-prefix-captioning-COCO-weights'))).toBe(
      true,
    );
    await expect(ClipCap.fromPretrained('flickr' as 'coco')).rejects.toThrow(
      /unknown pretrained model "flickr"/,
    );
  });

  it('the README example runs (the hub serves the tiny models under the published names)', async () => {
    const readmeExample = async (): Promise<string[]> => {
      // --- as in the README ---
      const model = await ClipCap.fromPretrained('coco', { gpt2: 'openai-community/gpt2' });
      const results = await model.caption([photo(0), photo(1)], {
        method: 'beam',
        beamSize: 5,
        maxTokens: 20,
      });
      const lines = results.map((r) => `${r.image}\t${r.error ?? r.caption}`);
      model.dispose();
      // ---
      return lines;
    };
    expect(await readmeExample()).toEqual([0, 1].map((i) => `${photo(i)}\t${goldenBeam(i)}`));
    expect(path.isAbsolute(photo(0))).toBe(true);
  });
});
