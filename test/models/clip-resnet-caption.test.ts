/**
 * The ClipCap side of the ResNet towers, end to end through the CLI: `extract --clip <ResNet CLIP>` writes the
 * tower's embeddings at its resolution (288 here), equal to rn_goldens image_embeds; and captions through the
 * ResNet tower (the Transformer mapper checkpoint clipcap_transformer_tiny.pt, prefix_size 24 like the tiny
 * RN CLIP) are identical, token for token, to captions of the golden embeddings themselves. Also the
 * published Transformer COCO checkpoint's layout (prefix_length 40, clip_length 40, 8 layers, prefix_size 640)
 * is inferred from its keys.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultClipFor } from '../../src/pipeline/load.js';
import { clipcapCheckpoint } from '../../src/weights/families/clipcap.js';
import type { StateDict } from '../../src/weights/host.js';
import { loadSafetensors, saveSafetensors } from '../../src/weights/safetensors.js';
import { cli } from '../cli/harness.js';
import { expectClose, f32, fixture, readAll } from './helpers.js';

const RN = fixture('clip_rn_tiny', 'clip_rn_tiny.pt');
const CKPT = fixture('clipcap_transformer_tiny.pt');
const GPT2 = fixture('gpt2_tiny');

let tmp: string;
let golden: Float32Array; // (12, 24)
beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'clipcap-rn-'));
  golden = f32(await readAll(fixture('clip_rn_tiny', 'rn_goldens.safetensors')), 'image_embeds');
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Row {
  index: number;
  caption: string;
  tokens: number[];
}

describe('ClipCap through the ResNet CLIP tower', () => {
  it('extract --clip clip_rn_tiny.pt writes the 24-d embeddings of rn_goldens at 288 px', async () => {
    const out = path.join(tmp, 'rn.safetensors');
    const r = await cli(['extract', fixture('images'), '--out', out, '--clip', RN]);
    expect(r.code, r.err).toBe(0);
    const f = await loadSafetensors(out);
    const t = await f.tensor('clip_embedding');
    const meta = { ...f.metadata };
    await f.close();
    expect(t.shape).toEqual([12, 24]);
    expectClose('extract --clip clip_rn_tiny.pt vs image_embeds', t.data as Float32Array, golden);
    expect(JSON.stringify(meta)).toContain('288');
  });

  // beam search over 3 photos (it is the slow decoder), greedy over all 12
  for (const [decode, n] of [
    ['beam', 3],
    ['greedy', 12],
  ] as const) {
    it(`${decode}: captions of ${n} photos through the ResNet tower equal captions of the golden embeddings`, async () => {
      const names = (await readdir(fixture('images'))).filter((f) => f.endsWith('.jpg')).sort();
      const images = names.slice(0, n).map((f) => fixture('images', f));
      const caption = async (args: string[]): Promise<[string, number[]][]> => {
        const r = await cli([
          'caption',
          ...args,
          '--clipcap',
          CKPT,
          '--gpt2',
          GPT2,
          '--decode',
          decode,
          '--format',
          'json',
        ]);
        expect(r.code, r.err).toBe(0);
        return (JSON.parse(r.out) as Row[]).map((x) => [x.caption, x.tokens]);
      };
      const embeddings = async (data: Float32Array): Promise<string> => {
        const file = path.join(tmp, `${decode}-${Math.random().toString(36).slice(2)}.safetensors`);
        await saveSafetensors(file, { clip_embedding: { shape: [n, 24], data } });
        return file;
      };
      const rows = golden.slice(0, n * 24);
      const fromImages = await caption([...images, '--clip', RN]);
      expect(fromImages.length).toBe(n);
      expect(fromImages).toEqual(await caption(['--embeddings', await embeddings(rows)]));
      // The tiny RN's embeddings of the photos are close to each other, so their captions coincide; the
      // captioner does follow the embedding: negated embeddings caption differently.
      if (decode === 'greedy') {
        const negated = await caption(['--embeddings', await embeddings(rows.map((v) => -v))]);
        expect(negated[0][1]).not.toEqual(fromImages[0][1]);
      }
    });
  }
});

describe('the published Transformer COCO checkpoint layout', () => {
  /** ClipCaptionPrefix's mapper keys at the official notebook's sizes (shapes only: nothing is uploaded). */
  function officialTransformerMapper(): StateDict {
    const E = 768;
    const sd: StateDict = new Map();
    const put = (k: string, shape: number[]) => sd.set(k, { dtype: 'f32', shape, data: new Float32Array(0) });
    put('clip_project.linear.weight', [40 * E, 640]);
    put('clip_project.linear.bias', [40 * E]);
    put('clip_project.prefix_const', [40, E]);
    for (let i = 0; i < 8; i++) {
      const p = `clip_project.transformer.layers.${i}.`;
      put(`${p}norm1.weight`, [E]);
      put(`${p}norm1.bias`, [E]);
      put(`${p}attn.to_queries.weight`, [E, E]);
      put(`${p}attn.to_keys_values.weight`, [2 * E, E]);
      put(`${p}attn.project.weight`, [E, E]);
      put(`${p}attn.project.bias`, [E]);
      put(`${p}norm2.weight`, [E]);
      put(`${p}norm2.bias`, [E]);
      put(`${p}mlp.fc1.weight`, [2 * E, E]);
      put(`${p}mlp.fc1.bias`, [2 * E]);
      put(`${p}mlp.fc2.weight`, [E, 2 * E]);
      put(`${p}mlp.fc2.bias`, [E]);
    }
    return sd;
  }

  it('prefix_length 40, clip_length 40, 8 layers, 8 heads, prefix_size 640 from the keys; CLIP defaults to RN50x4', () => {
    const ck = clipcapCheckpoint(officialTransformerMapper(), { what: 'coco_prefix-transformer.pt' });
    expect(ck.mapper).toEqual({
      kind: 'transformer',
      prefix_size: 640,
      prefix_length: 40,
      clip_length: 40,
      num_layers: 8,
      num_heads: 8,
    });
    expect(ck.width).toBe(768);
    expect(defaultClipFor(ck.mapper.prefix_size)).toBe('RN50x4');
    expect(defaultClipFor(512)).toBe('openai/clip-vit-base-patch32');
  });
});
