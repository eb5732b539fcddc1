/**
 * pipeline/eval-split.ts with a stand-in captioner: what an interrupted run leaves (the progress file with
 * its header and every finished batch), how a rerun resumes (only the rest is captioned; a last line cut
 * short by the crash is dropped), and that a run with nothing left to caption never loads the model.
 */
import {
  appendFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readReferences, type ReferenceSet } from '../../src/eval/index.js';
import {
  captionEvalSplit,
  imageEntries,
  PROGRESS_FORMAT,
  progressPathFor,
  readProgress,
  type Captioner,
} from '../../src/pipeline/eval-split.js';
import type { CaptionOptions, CaptionResult } from '../../src/pipeline/types.js';

let tmp: string;
let images: string;
let refs: ReferenceSet;
const IDS = [11, 22, 33, 44, 55];
const SETTINGS = { model: 'coco', decode: 'beam', beamSize: 5 };
const fileOf = (id: number): string => `img_${id}.jpg`;
const captionOf = (file: string): string => `a caption of ${path.basename(file)}`;

/** Captions every file as captionOf(file), in batches; records what it was asked; may die on a batch. */
function standIn(opts: { dieOnBatch?: number } = {}): Captioner & { asked: string[]; loaded: boolean } {
  const c = {
    asked: [] as string[],
    loaded: true,
    async *captionStream(inputs: readonly string[], o: CaptionOptions = {}): AsyncGenerator<CaptionResult> {
      const bs = o.batchSize ?? 8;
      for (let b = 0; b * bs < inputs.length; b++) {
        if (b === opts.dieOnBatch) throw new Error('the machine went down');
        const batch = inputs.slice(b * bs, (b + 1) * bs);
        c.asked.push(...batch);
        for (const [j, file] of batch.entries())
          yield { index: b * bs + j, image: file, caption: captionOf(file), tokens: [] };
      }
    },
  };
  return c;
}

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'clipcap-eval-split-'));
  images = path.join(tmp, 'images');
  mkdirSync(path.join(images, 'val2014'), { recursive: true });
  for (const id of IDS) writeFileSync(path.join(images, 'val2014', fileOf(id)), 'pixels');
  const file = path.join(tmp, 'dataset.json');
  writeFileSync(
    file,
    JSON.stringify({
      images: IDS.map((id) => ({
        filepath: 'val2014',
        filename: fileOf(id),
        cocoid: id,
        split: 'test',
        sentences: [{ raw: `reference for ${id}`, tokens: ['reference', 'for', String(id)] }],
      })),
    }),
  );
  refs = await readReferences(file, { split: 'test' });
});

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('captionEvalSplit (resumable captioning of a split)', () => {
  it('finds the image files the references name', async () => {
    const entries = await imageEntries(refs);
    expect(entries).toEqual(
      IDS.map((id) => ({
        id: String(id),
        imageId: id,
        candidates: [path.join('val2014', fileOf(id)), fileOf(id)],
      })),
    );
  });

  it('keeps every finished batch across a crash and resumes with only the rest', async () => {
    const dir = path.join(tmp, 'crash');
    mkdirSync(dir);
    const out = path.join(dir, 'results.json');
    const partial = progressPathFor(out);
    const base = {
      references: refs,
      imagesDir: images,
      out,
      settings: SETTINGS,
      captionOptions: { batchSize: 2 },
    };

    // Run 1 dies in its second batch: the first batch (2 images) must be on disk, after the header.
    const first = standIn({ dieOnBatch: 1 });
    await expect(captionEvalSplit({ ...base, loadCaptioner: async () => first })).rejects.toThrow(
      'the machine went down',
    );
    const lines = readFileSync(partial, 'utf8')
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as unknown);
    expect(lines).toEqual([
      { format: PROGRESS_FORMAT, settings: SETTINGS },
      { image_id: 11, caption: captionOf(fileOf(11)) },
      { image_id: 22, caption: captionOf(fileOf(22)) },
    ]);
    expect(readdirSync(dir)).toEqual(['results.json.partial.jsonl']);

    // A crash in the middle of a write leaves a line without its newline: it is dropped.
    appendFileSync(partial, '{"image_id": 33, "capt');
    expect([...((await readProgress(partial, SETTINGS)) ?? new Map()).keys()]).toEqual(['11', '22']);
    expect(readFileSync(partial, 'utf8').endsWith('\n')).toBe(true);
    appendFileSync(partial, '{"image_id": 33, "capt');

    // Run 2 is asked only for the three images not done, and the results cover all five in order.
    const second = standIn();
    const events: string[] = [];
    const r = await captionEvalSplit({
      ...base,
      loadCaptioner: async () => second,
      onStart: (s) => events.push(`start ${s.total} ${s.resumed} ${s.toCaption}`),
      onProgress: (done, total) => events.push(`${done}/${total}`),
    });
    expect(second.asked).toEqual([33, 44, 55].map((id) => path.join(images, 'val2014', fileOf(id))));
    expect(events).toEqual(['start 5 2 3', '2/3', '3/3']);
    expect([r.resumed, r.captioned, r.failed.length, r.complete]).toEqual([2, 3, 0, true]);
    const results = JSON.parse(readFileSync(out, 'utf8')) as unknown;
    expect(results).toEqual(IDS.map((id) => ({ image_id: id, caption: captionOf(fileOf(id)) })));
    expect(r.predictions.ids).toEqual(IDS.map(String));
    expect(r.predictions.captions.get('33')).toBe(captionOf(fileOf(33)));
    expect(readdirSync(dir)).toEqual(['results.json']);
  });

  it('does not load the model when the progress file already holds every caption', async () => {
    const dir = path.join(tmp, 'done');
    mkdirSync(dir);
    const out = path.join(dir, 'r.json');
    writeFileSync(
      progressPathFor(out),
      [
        JSON.stringify({ format: PROGRESS_FORMAT, settings: { beamSize: 5, decode: 'beam', model: 'coco' } }),
        ...IDS.map((id) => JSON.stringify({ image_id: id, caption: `kept ${id}` })),
      ].join('\n') + '\n',
    );
    const r = await captionEvalSplit({
      references: refs,
      imagesDir: images,
      out,
      settings: SETTINGS, // same settings, other key order
      loadCaptioner: () => Promise.reject(new Error('the model must not load')),
    });
    expect([r.resumed, r.captioned]).toEqual([5, 0]);
    expect(JSON.parse(readFileSync(out, 'utf8'))).toEqual(
      IDS.map((id) => ({ image_id: id, caption: `kept ${id}` })),
    );
    expect(readdirSync(dir)).toEqual(['r.json']);
  });

  it('rejects a damaged progress file and an --out in a folder that does not exist, before loading anything', async () => {
    const dir = path.join(tmp, 'bad');
    mkdirSync(dir);
    const out = path.join(dir, 'r.json');
    writeFileSync(progressPathFor(out), 'garbage\n{"image_id": 11, "caption": "x"}\n');
    const never = (): Promise<Captioner> => Promise.reject(new Error('the model must not load'));
    await expect(
      captionEvalSplit({ references: refs, imagesDir: images, out, loadCaptioner: never }),
    ).rejects.toThrow(`${progressPathFor(out)}: line 1 is not a JSON object; delete the file to start over`);
    const nowhere = path.join(dir, 'no', 'r.json');
    await expect(
      captionEvalSplit({ references: refs, imagesDir: images, out: nowhere, loadCaptioner: never }),
    ).rejects.toThrow(`${nowhere}: the folder ${path.dirname(nowhere)} does not exist`);
    await expect(
      captionEvalSplit({ references: refs, imagesDir: path.join(dir, 'none'), out, loadCaptioner: never }),
    ).rejects.toThrow('images directory not found (--images)');
  });
});
