import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  parsePredictions,
  parseReferences,
  readPredictions,
  readReferences,
} from '../../src/eval/readers.js';
import { alignCaptions } from '../../src/eval/index.js';
import { UserError } from '../../src/util/errors.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'clipcap-eval-readers-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, text: string): string => {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
};

/** The UserError message of a throwing call. */
function userError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(UserError);
    return (e as Error).message;
  }
  throw new Error('expected a UserError');
}

const KARPATHY = JSON.stringify({
  dataset: 'coco',
  images: [
    {
      split: 'train',
      cocoid: 9,
      filename: 'a.jpg',
      filepath: 'train2014',
      sentences: [{ raw: 'A train.', tokens: ['a', 'train'] }],
    },
    {
      split: 'test',
      cocoid: 391895,
      filename: 'COCO_val2014_000000391895.jpg',
      filepath: 'val2014',
      sentences: [
        {
          raw: 'A man with a red helmet on a small moped on a dirt road. ',
          tokens: ['a', 'man', 'with', 'a', 'red', 'helmet'],
        },
        { raw: 'Man riding a motor bike on a dirt road on the countryside.', tokens: ['man', 'riding'] },
      ],
    },
    {
      split: 'test',
      cocoid: 522418,
      filename: 'b.jpg',
      sentences: [{ raw: 'A woman cutting a cake.', tokens: ['a', 'woman'] }],
    },
    { split: 'val', cocoid: 7, filename: 'c.jpg', sentences: [{ raw: 'x', tokens: ['x'] }] },
  ],
});

describe('references', () => {
  it('reads COCO annotations in images order, captions in annotation order', () => {
    const refs = parseReferences(
      JSON.stringify({
        images: [{ id: 2 }, { id: 1 }, { id: 3 }],
        annotations: [
          { image_id: 1, id: 10, caption: 'one a' },
          { image_id: 2, id: 11, caption: 'two a' },
          { image_id: 1, id: 12, caption: 'one b' },
        ],
      }),
      'ann.json',
    );
    expect(refs.format).toBe('coco');
    expect(refs.ids).toEqual(['2', '1', '3']);
    expect(refs.captions.get('1')).toEqual(['one a', 'one b']);
    // Image 3 has no captions: it needs no prediction, and cannot be scored.
    expect(refs.captions.get('3')).toEqual([]);
    const two = parsePredictions(
      '[{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}]',
      'res.json',
    );
    expect(alignCaptions(refs, two).ids).toEqual(['2', '1']);
    const three = parsePredictions(
      '[{"image_id": 3, "caption": "c"}, {"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}]',
      'res.json',
    );
    expect(userError(() => alignCaptions(refs, three))).toBe(
      'ann.json: 1 predicted image(s) have no reference captions (3)',
    );
  });

  it('reads a Karpathy split file, filtered by --split, raw or pre-tokenized captions', () => {
    const refs = parseReferences(KARPATHY, 'dataset_coco.json', { split: 'test' });
    expect(refs.format).toBe('karpathy');
    expect(refs.ids).toEqual(['391895', '522418']);
    expect(refs.captions.get('391895')?.[1]).toBe(
      'Man riding a motor bike on a dirt road on the countryside.',
    );
    const tok = parseReferences(KARPATHY, 'dataset_coco.json', { split: 'test', tokenize: 'none' });
    expect(tok.captions.get('522418')).toEqual(['a woman']);
    expect(parseReferences(KARPATHY, 'dataset_coco.json').ids).toEqual(['9', '391895', '522418', '7']);
    expect(userError(() => parseReferences(KARPATHY, 'dataset_coco.json', { split: 'tset' }))).toBe(
      'dataset_coco.json: no images in split "tset" (splits in this file: test, train, val)',
    );
  });

  it('reads JSONL with several lines per image, and JSON record lists', () => {
    const refs = parseReferences(
      '{"image_id": 5, "caption": "a"}\n\n{"image_id": "x", "caption": "b"}\n{"image_id": 5, "caption": "c"}\n{"image_id": 6, "captions": ["d", "e"]}\n',
      'refs.jsonl',
    );
    expect(refs.format).toBe('jsonl');
    expect(refs.ids).toEqual(['5', 'x', '6']);
    expect(refs.captions.get('5')).toEqual(['a', 'c']);
    expect(refs.captions.get('6')).toEqual(['d', 'e']);
    const list = parseReferences(
      '[{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]',
      'refs.json',
    );
    expect(list.captions.get('1')).toEqual(['a', 'b']);
  });

  it('rejects bad files with the file name and the place', () => {
    expect(
      userError(() =>
        parseReferences('{"image_id": 1, "caption": "a"}\n{"image_id": 2, "caption": }\n', 'r.jsonl'),
      ),
    ).toMatch(/^r\.jsonl: line 2: malformed JSON/);
    expect(
      userError(() =>
        parseReferences('{"annotations": [\n  {"image_id": 1,\n  "caption": "a",}\n]}', 'ann.json'),
      ),
    ).toMatch(/^ann\.json: malformed JSON at line 3, column \d+/);
    expect(userError(() => parseReferences('{"annotations": [{"caption": "a"}]}', 'ann.json'))).toBe(
      'ann.json: annotations[0]: missing or invalid "image_id" (expected a number or a non-empty string)',
    );
    expect(
      userError(() => parseReferences('{"annotations": [{"image_id": 1, "caption": 5}]}', 'ann.json')),
    ).toBe('ann.json: annotations[0]: missing or invalid "caption" (expected a string)');
    expect(userError(() => parseReferences('  \n', 'empty.json'))).toBe('empty.json: the file is empty');
    expect(userError(() => parseReferences('{"annotations": []}', 'ann.json'))).toBe(
      'ann.json: no reference captions found',
    );
    expect(userError(() => parseReferences('{"foo": 1}', 'x.json'))).toMatch(
      /^x\.json: not a references file/,
    );
    expect(
      userError(() => parseReferences('[{"image_id": 1, "caption": "a"}]', 'r.json', { split: 'test' })),
    ).toMatch(/^r\.json: --split applies only to a Karpathy split file/);
  });
});

describe('predictions', () => {
  it('reads COCO results JSON and JSONL', () => {
    const a = parsePredictions(
      '[{"image_id": 391895, "caption": "a man"}, {"image_id": 7, "caption": "x", "score": 1}]',
      'res.json',
    );
    expect(a.format).toBe('coco-results');
    expect([...a.captions]).toEqual([
      ['391895', 'a man'],
      ['7', 'x'],
    ]);
    const b = parsePredictions(
      '{"image_id": 1, "caption": "a"}\n{"image_id": 2, "caption": "b"}',
      'res.jsonl',
    );
    expect(b.format).toBe('jsonl');
    expect(b.ids).toEqual(['1', '2']);
  });

  it('rejects duplicate ids, listing a few', () => {
    const recs = [1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7].map((id) => ({ image_id: id, caption: 'c' }));
    expect(userError(() => parsePredictions(JSON.stringify(recs), 'res.json'))).toBe(
      'res.json: 6 image id(s) have more than one prediction (e.g. 2, 3, 4, 5, 6, ... 1 more); give exactly one caption per image',
    );
  });

  it('rejects malformed records with the line number', () => {
    expect(userError(() => parsePredictions('{"image_id": 1, "caption": "a"}\n[1, 2]\n', 'res.jsonl'))).toBe(
      'res.jsonl: line 2: expected a JSON object like {"image_id": ..., "caption": ...}',
    );
    expect(
      userError(() => parsePredictions('{"image_id": 1, "caption": "a"}\n{"image_id": 2}\n', 'res.jsonl')),
    ).toBe('res.jsonl: line 2: missing or invalid "caption" (expected a string)');
  });
});

describe('files and alignment', () => {
  it('reads from disk and reports missing files by name', async () => {
    const refsPath = file('dataset_coco.json', KARPATHY);
    const refs = await readReferences(refsPath, { split: 'test' });
    expect(refs.source).toBe(refsPath);
    await expect(readPredictions(path.join(dir, 'missing.json'))).rejects.toThrow(
      `${path.join(dir, 'missing.json')}: predictions file not found`,
    );
    await expect(readReferences(dir)).rejects.toThrow(/is a directory, expected a references file/);
  });

  it('names ids present on one side only, and images without references', () => {
    const refs = parseReferences(KARPATHY, 'dataset_coco.json', { split: 'test' });
    const extra = parsePredictions(
      '[{"image_id": 391895, "caption": "a"}, {"image_id": 522418, "caption": "b"}, {"image_id": 1, "caption": "c"}]',
      'res.json',
    );
    expect(userError(() => alignCaptions(refs, extra))).toBe(
      'res.json: 1 of 3 predicted image ids are not in dataset_coco.json (1)',
    );
    const fewer = parsePredictions('[{"image_id": 522418, "caption": "b"}]', 'res.json');
    expect(userError(() => alignCaptions(refs, fewer))).toBe(
      'dataset_coco.json: 1 of 2 images have no prediction in res.json (391895); pick the split with --split, or score only the predicted images with --only-predicted',
    );
    const a = alignCaptions(refs, fewer, true);
    expect(a.ids).toEqual(['522418']);
    expect(a.candidates).toEqual(['b']);
    const noRefs = parseReferences(
      JSON.stringify({
        images: [
          { split: 'test', cocoid: 1, sentences: [] },
          { split: 'test', cocoid: 2, sentences: [{ raw: 'x' }] },
        ],
      }),
      'k.json',
    );
    expect(
      userError(() =>
        alignCaptions(noRefs, parsePredictions('[{"image_id": 1, "caption": "c"}]', 'res.json')),
      ),
    ).toBe('k.json: 1 predicted image(s) have no reference captions (1)');
  });
});
