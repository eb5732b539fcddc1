import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { JavaNotFoundError } from '../../src/eval/java.js';
import { computeMeteor, meteorHypothesis, meteorScoreLine } from '../../src/eval/meteor.js';
import { computeSpice } from '../../src/eval/spice.js';
import { evaluateCaptions } from '../../src/eval/index.js';
import { npMean } from '../../src/eval/pyutil.js';
import { UserError } from '../../src/util/errors.js';

/**
 * The METEOR and SPICE bridges against fake-java.mjs, a stand-in executable that speaks the jars'
 * protocols (see its header for the formulas). The expected numbers are recomputed here from those
 * formulas, independently of the bridge code.
 */
const FAKE = fileURLToPath(new URL('./fake-java.mjs', import.meta.url));
const JAVA = [process.execPath, FAKE];
const dir = mkdtempSync(path.join(os.tmpdir(), 'clipcap-eval-bridges-'));
const jarDir = path.join(dir, 'jars');
const METEOR_JAR = path.join(jarDir, 'meteor-1.5.jar');
const SPICE_JAR = path.join(jarDir, 'spice-1.0.jar');
mkdirSync(jarDir);
writeFileSync(METEOR_JAR, '');
writeFileSync(SPICE_JAR, '');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let logCount = 0;
/** Run `fn` with FAKE_JAVA_LOG pointing at a fresh file; returns the logged events. */
async function withLog<T>(
  fn: () => Promise<T>,
  mode?: string,
): Promise<{ value: T; events: Record<string, unknown>[] }> {
  const file = path.join(dir, `log${logCount++}.jsonl`);
  writeFileSync(file, '');
  process.env.FAKE_JAVA_LOG = file;
  if (mode !== undefined) process.env.FAKE_JAVA_MODE = mode;
  try {
    const value = await fn();
    const events = readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    return { value, events };
  } finally {
    delete process.env.FAKE_JAVA_LOG;
    delete process.env.FAKE_JAVA_MODE;
  }
}

// The stand-in's METEOR formulas, written out again for the expected values.
const words = (s: string): string[] => s.split(' ').filter((w) => w !== '');
function fakeStats(hyp: string, refs: string[]): [number, number, number] {
  const hw = words(hyp);
  const hc = new Map<string, number>();
  for (const w of hw) hc.set(w, (hc.get(w) ?? 0) + 1);
  let best = { m: -1, r: 0 };
  for (const ref of refs) {
    const rw = words(ref);
    let m = 0;
    for (const [w, c] of hc) m += Math.min(c, rw.filter((x) => x === w).length);
    if (m > best.m || (m === best.m && rw.length < best.r)) best = { m, r: rw.length };
  }
  return [best.m, hw.length, best.r];
}
const fmean = (m: number, h: number, r: number): number =>
  m === 0 ? 0 : (10 * (m / h) * (m / r)) / (m / r + 9 * (m / h));

const CANDS = ['a man riding a horse', 'two dogs  on ||| the grass', 'a red bus'];
const REFS = [
  ['a man rides a horse on a beach', 'a person riding a brown horse'],
  ['two dogs playing on the grass', 'dogs in a park'],
  ['a large red bus on a street', 'a double decker bus', 'red bus'],
];

describe('METEOR bridge (stdin/stdout protocol)', () => {
  it('sanitises the hypothesis as meteor.py does (one pass of each replace)', () => {
    expect(meteorHypothesis('a ||| b  c   d')).toBe('a b c  d');
    expect(meteorScoreLine('x  y', ['r 1', 'r|||2'])).toBe('SCORE ||| r 1 ||| r|||2 ||| x y');
  });

  it('runs the jar with pycocoevalcap arguments and reads per-image and aggregated corpus scores', async () => {
    const { value, events } = await withLog(() =>
      computeMeteor(CANDS, REFS, { jar: METEOR_JAR, java: JAVA }),
    );
    expect(events[0]).toEqual({
      argv: ['-jar', '-Xmx2G', 'meteor-1.5.jar', '-', '-', '-stdio', '-l', 'en', '-norm'],
      cwd: jarDir,
      LC_ALL: 'C',
    });
    const lines = events.slice(1).map((e) => e.line);
    expect(lines.slice(0, 3)).toEqual(CANDS.map((c, i) => meteorScoreLine(c, REFS[i])));
    expect(lines[3]).toBe(
      'EVAL ||| ' +
        CANDS.map((c, i) => [...fakeStats(meteorHypothesis(c), REFS[i]), i].join(' ')).join(' ||| '),
    );
    const stats = CANDS.map((c, i) => fakeStats(meteorHypothesis(c), REFS[i]));
    const per = stats.map(([m, h, r]) => fmean(m, h, r));
    const sum = stats.reduce((a, s) => [a[0] + s[0], a[1] + s[1], a[2] + s[2]], [0, 0, 0]);
    const corpus = fmean(sum[0], sum[1], sum[2]);
    expect(value.perImage).toEqual(per);
    expect(value.score).toBe(corpus);
    // The corpus score comes from aggregated statistics, not from the mean of the image scores.
    expect(Math.abs(value.score - npMean(per))).toBeGreaterThan(1e-6);
  });

  it('reports a crashing jar with its stderr', async () => {
    const err = await withLog(
      () => computeMeteor(CANDS, REFS, { jar: METEOR_JAR, java: JAVA }),
      'crash',
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toMatch(/METEOR \(meteor-1\.5\.jar\) exited \(code 1\).*OutOfMemoryError/);
  });

  it('names a missing jar, and signals a missing java', async () => {
    await expect(computeMeteor(CANDS, REFS, { jar: path.join(dir, 'nope.jar'), java: JAVA })).rejects.toThrow(
      /nope\.jar: METEOR jar not found/,
    );
    await expect(
      computeMeteor(CANDS, REFS, { jar: METEOR_JAR, java: path.join(dir, 'no-such-java') }),
    ).rejects.toBeInstanceOf(JavaNotFoundError);
  });

  it('uses $CLIPCAP_JAVA when no command is given', async () => {
    const wrapper = path.join(dir, 'java-wrapper.sh');
    writeFileSync(wrapper, `#!/bin/sh\nexec "${process.execPath}" "${FAKE}" "$@"\n`, { mode: 0o755 });
    process.env.CLIPCAP_JAVA = wrapper;
    try {
      const { value } = await withLog(() =>
        computeMeteor(CANDS.slice(0, 1), REFS.slice(0, 1), { jar: METEOR_JAR }),
      );
      const [m, h, r] = fakeStats(CANDS[0], REFS[0]);
      expect(value.perImage).toEqual([fmean(m, h, r)]);
    } finally {
      delete process.env.CLIPCAP_JAVA;
    }
  });
});

// The stand-in's SPICE formula.
function fakeSpiceF(test: string, refs: string[]): number {
  const t = new Set(words(test));
  const r = new Set(refs.flatMap(words));
  if (t.size === 0 || r.size === 0) return NaN;
  const tp = [...t].filter((w) => r.has(w)).length;
  if (tp === 0) return 0;
  const pr = tp / t.size;
  const re = tp / r.size;
  return (2 * pr * re) / (pr + re);
}

describe('SPICE bridge (JSON files)', () => {
  const ids = ['391895', '1000', 'img_b', 'img_a'];
  const cands = ['a man riding a horse', 'two dogs on the grass', 'a red bus', 'a cat'];
  const refs = [...REFS, ['a cat on a sofa']];

  it('writes sorted input with integer ids as numbers, runs the jar as spice.py, maps results by id', async () => {
    const cache = path.join(dir, 'spice-cache');
    const { value, events } = await withLog(() =>
      computeSpice(ids, cands, refs, { jar: SPICE_JAR, java: JAVA, cache }),
    );
    const argv = events[0].argv as string[];
    expect(argv.slice(0, 3)).toEqual(['-jar', '-Xmx8G', 'spice-1.0.jar']);
    expect(argv.slice(4, 6)).toEqual(['-cache', cache]);
    expect(argv.slice(6, 7)).toEqual(['-out']);
    expect(argv.slice(8)).toEqual(['-subset', '-silent']);
    expect(events[0].cwd).toBe(jarDir);
    expect(events[1].spiceInput).toEqual([
      { image_id: 1000, test: cands[1], refs: refs[1] },
      { image_id: 391895, test: cands[0], refs: refs[0] },
      { image_id: 'img_a', test: cands[3], refs: refs[3] },
      { image_id: 'img_b', test: cands[2], refs: refs[2] },
    ]);
    const expected = ids.map((_, i) => fakeSpiceF(cands[i], refs[i]));
    expect(value.perImage).toEqual(expected);
    expect(value.details[0].Object.f).toBe(expected[0]);
    // Corpus: NumPy mean of the f values in the order the jar wrote them (reversed sorted order here).
    const outOrder = [3, 2, 0, 1].map((i) => expected[i]);
    expect(value.score).toBe(npMean(outOrder));
  });

  it('turns a null f into NaN, which makes the corpus mean NaN (as pycocoevalcap)', async () => {
    const { value } = await withLog(() =>
      computeSpice(['1', '2'], ['', 'a cat'], [['a dog'], ['a cat']], { jar: SPICE_JAR, java: JAVA }),
    );
    expect(value.perImage[0]).toBeNaN();
    expect(value.perImage[1]).toBe(1);
    expect(value.score).toBeNaN();
  });

  it('reports a failing jar', async () => {
    await expect(
      withLog(() => computeSpice(ids, cands, refs, { jar: SPICE_JAR, java: JAVA }), 'crash'),
    ).rejects.toThrow(/SPICE \(spice-1\.0\.jar\) failed \(exit code 1\).*OutOfMemoryError/);
  });
});

describe('evaluateCaptions with the jars', () => {
  const references = new Map(REFS.map((r, i) => [String(i + 1), r]));
  const predictions = new Map(CANDS.map((c, i) => [String(i + 1), c]));

  it('adds METEOR and SPICE in pycocoevalcap key order, from the tokenized strings', async () => {
    const { value: r } = await withLog(() =>
      evaluateCaptions(references, predictions, {
        tokenize: 'ptb',
        meteorJar: METEOR_JAR,
        spiceJar: SPICE_JAR,
        java: JAVA,
      }),
    );
    expect(Object.keys(r.per_image['1'])).toEqual([
      'Bleu_1',
      'Bleu_2',
      'Bleu_3',
      'Bleu_4',
      'METEOR',
      'ROUGE_L',
      'CIDEr',
      'SPICE',
    ]);
    // "two dogs  on ||| the grass" is PTB-tokenized before METEOR sees it: ||| becomes "|" tokens.
    const [m, h, rr] = fakeStats('two dogs on | | | the grass', REFS[1]);
    expect(r.per_image['2'].METEOR).toBe(fmean(m, h, rr));
    expect(r.per_image['3'].SPICE).toBe(fakeSpiceF('a red bus', REFS[2]));
    expect(r.notComputed).toEqual({});
  });

  it('says METEOR / SPICE were not computed without jars or without java', async () => {
    const a = await evaluateCaptions(references, predictions, { tokenize: 'none' });
    expect(a.METEOR).toBeUndefined();
    expect(a.SPICE).toBeUndefined();
    expect(a.notComputed.METEOR).toMatch(/--meteor-jar/);
    expect(a.notComputed.SPICE).toMatch(/--spice-jar/);
    const b = await evaluateCaptions(references, predictions, {
      tokenize: 'none',
      meteorJar: METEOR_JAR,
      spiceJar: SPICE_JAR,
      java: path.join(dir, 'no-such-java'),
    });
    expect(b.METEOR).toBeUndefined();
    expect(b.notComputed.METEOR).toMatch(/not found/);
    expect(b.notComputed.SPICE).toMatch(/not found/);
    expect(Object.keys(b.per_image['1'])).toEqual([
      'Bleu_1',
      'Bleu_2',
      'Bleu_3',
      'Bleu_4',
      'ROUGE_L',
      'CIDEr',
    ]);
  });
});
