import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { register, runEval, type EvalCommandOptions } from '../../src/cli/commands/eval.js';
import { evaluateCaptions } from '../../src/eval/index.js';
import { UsageError, UserError } from '../../src/util/errors.js';

/**
 * `clipcap eval`, run in-process (runEval, and the commander command) with stdout / stderr captured.
 * The JSON output is checked against the pycocoevalcap values of the shared cases at 1e-9.
 */
const FIX = fileURLToPath(new URL('../fixtures/cocoeval/', import.meta.url));
const dir = mkdtempSync(path.join(os.tmpdir(), 'clipcap-eval-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function run(opts: EvalCommandOptions): Promise<{ stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  await runEval(opts, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), progress: false });
  return { stdout, stderr };
}

type Scores = Record<string, number>;
interface Expected {
  scores: Scores;
  per_image: Record<string, Scores>;
}

describe('clipcap eval --format json on the shared pycocoevalcap cases', () => {
  for (const name of ['a_small', 'c_edge', 'd_single_image']) {
    it(`${name}: the JSON contract, values within 1e-9`, async () => {
      const { stdout, stderr } = await run({
        references: path.join(FIX, `${name}.references.json`),
        predictions: path.join(FIX, `${name}.predictions.json`),
        tokenize: 'none',
        format: 'json',
      });
      const doc = JSON.parse(stdout) as Scores & { per_image: Record<string, Scores> };
      const expected = JSON.parse(readFileSync(path.join(FIX, `${name}.expected.json`), 'utf8')) as Expected;
      const keys = ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'ROUGE_L', 'CIDEr'];
      expect(Object.keys(doc)).toEqual([...keys, 'per_image']);
      expect(Object.keys(doc.per_image).sort()).toEqual(Object.keys(expected.per_image).sort());
      let worst = 0;
      for (const k of keys) worst = Math.max(worst, Math.abs(doc[k] - expected.scores[k]));
      for (const [id, s] of Object.entries(expected.per_image)) {
        expect(Object.keys(doc.per_image[id])).toEqual(keys);
        for (const k of keys) worst = Math.max(worst, Math.abs(doc.per_image[id][k] - s[k]));
      }
      console.log(`${name}: worst |diff| over corpus and per-image scores = ${worst.toExponential(2)}`);
      expect(worst).toBeLessThanOrEqual(1e-9);
      expect(stderr).toBe(
        'clipcap eval: METEOR not computed: no METEOR jar given (--meteor-jar)\n' +
          'clipcap eval: SPICE not computed: no SPICE jar given (--spice-jar)\n',
      );
    });
  }
});

describe('clipcap eval', () => {
  it('prints a table in text mode', async () => {
    const { stdout } = await run({
      references: path.join(FIX, 'a_small.references.json'),
      predictions: path.join(FIX, 'a_small.predictions.json'),
      tokenize: 'none',
    });
    const lines = stdout.trimEnd().split('\n');
    expect(lines[0]).toBe('5 images, tokenization: none');
    expect(lines[2]).toBe('Bleu_1    0.674234      67.42');
    expect(lines[6]).toBe('METEOR    not computed  no METEOR jar given (--meteor-jar)');
    expect(lines[8]).toBe('CIDEr     1.207121      120.71');
    expect(lines).toHaveLength(10);
  });

  it('PTB-tokenizes references and predictions before scoring (default)', async () => {
    // Raw versions of a_small: capitalised, with a final period. PTB gives back the stored strings except
    // "chef's" -> "chef 's", so the scores must equal the untokenized scoring of those strings.
    const ann = JSON.parse(readFileSync(path.join(FIX, 'a_small.references.json'), 'utf8')) as {
      images: { id: number }[];
      annotations: { image_id: number; caption: string }[];
    };
    const preds = JSON.parse(readFileSync(path.join(FIX, 'a_small.predictions.json'), 'utf8')) as {
      image_id: number;
      caption: string;
    }[];
    const raw = (c: string): string => (c === '' ? '' : c[0].toUpperCase() + c.slice(1) + '.');
    const refsFile = path.join(dir, 'raw_refs.json');
    const predsFile = path.join(dir, 'raw_preds.jsonl');
    writeFileSync(
      refsFile,
      JSON.stringify({
        ...ann,
        annotations: ann.annotations.map((a) => ({ ...a, caption: raw(a.caption) })),
      }),
    );
    writeFileSync(
      predsFile,
      preds.map((p) => JSON.stringify({ image_id: p.image_id, caption: raw(p.caption) })).join('\n'),
    );
    const { stdout } = await run({ references: refsFile, predictions: predsFile, format: 'json' });
    const got = JSON.parse(stdout) as Scores;

    const tok = (c: string): string => c.replace("chef's", "chef 's");
    const refs = new Map<string, string[]>();
    for (const a of ann.annotations)
      refs.set(String(a.image_id), [...(refs.get(String(a.image_id)) ?? []), tok(a.caption)]);
    const want = await evaluateCaptions(
      refs,
      new Map(preds.map((p) => [String(p.image_id), tok(p.caption)])),
      {
        tokenize: 'none',
      },
    );
    for (const k of ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'ROUGE_L', 'CIDEr'] as const)
      expect(got[k]).toBe(want[k]);
  });

  it('takes predictions from a pluggable source when no file is given', async () => {
    let asked: string[] = [];
    let stdout = '';
    const r = await runEval(
      {
        references: path.join(FIX, 'd_single_image.references.json'),
        tokenize: 'none',
        format: 'json',
        predictionSource: async (refs) => {
          asked = refs.ids;
          return {
            ids: ['1'],
            captions: new Map([['1', 'a man riding a wave on top of a surfboard']]),
            source: 'captioner',
            format: 'jsonl',
          };
        },
      },
      { stdout: (t) => (stdout += t), stderr: () => undefined },
    );
    expect(asked).toEqual(['1']);
    expect(r.images).toBe(1);
    expect(JSON.parse(stdout).CIDEr).toBe(0);
  });

  it('rejects missing predictions, bad option values and mismatched ids clearly', async () => {
    await expect(run({ references: path.join(FIX, 'a_small.references.json') })).rejects.toThrow(UsageError);
    await expect(
      run({
        references: path.join(FIX, 'a_small.references.json'),
        predictions: 'x',
        tokenize: 'bpe' as 'ptb',
      }),
    ).rejects.toThrow('--tokenize must be ptb or none, not "bpe"');
    const refs = path.join(FIX, 'a_small.references.json');
    const preds = path.join(FIX, 'd_single_image.predictions.json');
    await expect(run({ references: refs, predictions: preds })).rejects.toThrow(
      new UserError(`${preds}: 1 of 1 predicted image ids are not in ${refs} (1)`),
    );
  });

  it('registers a commander command with validated choices', async () => {
    const program = new Command()
      .exitOverride()
      .configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
    register(program);
    const cmd = program.commands.find((c) => c.name() === 'eval') as Command;
    cmd.exitOverride();
    await expect(
      program.parseAsync(['eval', '--references', 'r.json', '--predictions', 'p.json', '--tokenize', 'bpe'], {
        from: 'user',
      }),
    ).rejects.toBeInstanceOf(CommanderError);
    await expect(
      program.parseAsync(['eval', '--predictions', 'p.json'], { from: 'user' }),
    ).rejects.toBeInstanceOf(CommanderError);

    const write = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    const writeErr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await program.parseAsync(
        [
          'eval',
          '--references',
          path.join(FIX, 'd_single_image.references.json'),
          '--predictions',
          path.join(FIX, 'd_single_image.predictions.json'),
          '--tokenize',
          'none',
          '--format',
          'json',
        ],
        { from: 'user' },
      );
      const out = write.mock.calls.map((c) => String(c[0])).join('');
      expect(JSON.parse(out).Bleu_1).toBe(0.9999999998000004);
    } finally {
      write.mockRestore();
      writeErr.mockRestore();
    }
  });
});
