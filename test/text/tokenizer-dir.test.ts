import { readFileSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { Gpt2Tokenizer } from '../../src/text/gpt2-tokenizer.js';

const goldens = JSON.parse(
  readFileSync(fileURLToPath(new URL('../fixtures/goldens.json', import.meta.url)), 'utf8'),
) as { tokenizer_cases: Array<{ text: string; ids: number[] }> };

let dir: string;
let standard: Gpt2Tokenizer;
let fromDir: Gpt2Tokenizer;

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'clipcap-tokdir-'));
  standard = await Gpt2Tokenizer.load();
  // GPT-2's own vocabulary written the way Hugging Face GPT-2 directories carry it, then read back.
  const files = standard.toFiles();
  writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify(files.vocab));
  writeFileSync(path.join(dir, 'merges.txt'), files.merges);
  fromDir = await Gpt2Tokenizer.fromDirectory(dir);
}, 60_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('Gpt2Tokenizer.fromDirectory (vocab.json + merges.txt)', () => {
  it('GPT-2 files: the known pieces of the format', () => {
    const { vocab, merges } = standard.toFiles();
    expect(Object.keys(vocab).length).toBe(50257);
    expect(vocab['!']).toBe(0);
    expect(vocab['Ġthe']).toBe(262);
    expect(vocab['<|endoftext|>']).toBe(50256);
    // The first merges of GPT-2's merges.txt.
    expect(merges.split('\n').slice(0, 3)).toEqual(['#version: 0.2', 'Ġ t', 'Ġ a']);
  });

  it('GPT-2 read from its files encodes every golden case as GPTTokenizerFast does', () => {
    expect(fromDir.vocabSize).toBe(50257);
    expect(fromDir.eosTokenId).toBe(50256);
    expect(goldens.tokenizer_cases.length).toBeGreaterThanOrEqual(10);
    for (const c of goldens.tokenizer_cases) {
      expect(fromDir.encode(c.text, { allowSpecial: true })).toEqual(c.ids);
      expect(fromDir.decode(c.ids)).toBe(standard.decode(c.ids));
    }
  });

  it('a small vocabulary: merges apply in file order, not by id', async () => {
    const small = mkdtempSync(path.join(os.tmpdir(), 'clipcap-tokdir-small-'));
    try {
      const { vocab: full } = standard.toFiles();
      // The 256 byte tokens in GPT-2's order (so "!" is 0 and "." is 13), then a few merged tokens whose ids
      // are in the opposite order of their merges' priority.
      const vocab: Record<string, number> = {};
      for (const [t, id] of Object.entries(full)) if (id < 256) vocab[t] = id;
      vocab['Ġre'] = 256;
      vocab['Ġred'] = 257;
      // re's id is below ed's, though "e d" merges first: ordering merges by id would give " red" -> Ġred.
      vocab['re'] = 258;
      vocab['ed'] = 259;
      writeFileSync(path.join(small, 'vocab.json'), JSON.stringify(vocab));
      // "e d" before "Ġ r": " red" -> Ġ r ed (no "Ġr" token) instead of Ġre d.
      writeFileSync(path.join(small, 'merges.txt'), '#version: 0.2\ne d\nr e\nĠ re\nĠre d\n');
      const tok = await Gpt2Tokenizer.fromDirectory(small);
      expect(tok.vocabSize).toBe(260);
      expect(tok.eosTokenId).toBe(-1);
      // " red": merges e+d first (rank 0), so "Ġ", "r", "ed"; "r ed" is no merge.
      expect(tok.encode(' red')).toEqual([vocab['Ġ'], vocab.r, vocab.ed]);
      // " re": r+e (rank 1) then Ġ+re (rank 2).
      expect(tok.encode(' re.')).toEqual([256, 13]);
      expect(tok.decode(tok.encode(' red re!'))).toBe(' red re!');
      // <|endoftext|> is ordinary text in a vocabulary without it.
      expect(tok.decode(tok.encode('<|endoftext|>', { allowSpecial: true }))).toBe('<|endoftext|>');
    } finally {
      rmSync(small, { recursive: true, force: true });
    }
  });

  it('bad files fail with the file named', async () => {
    const bad = mkdtempSync(path.join(os.tmpdir(), 'clipcap-tokdir-bad-'));
    try {
      writeFileSync(path.join(bad, 'vocab.json'), JSON.stringify({ a: 0 }));
      writeFileSync(path.join(bad, 'merges.txt'), '#version: 0.2\n');
      await expect(Gpt2Tokenizer.fromDirectory(bad)).rejects.toThrow(/vocab\.json: byte 0 has no token/);
      await expect(Gpt2Tokenizer.fromDirectory(path.join(bad, 'none'))).rejects.toThrow(/vocab\.json/);
      expect(await Gpt2Tokenizer.directoryHasTokenizer(bad)).toBe(true);
      expect(await Gpt2Tokenizer.directoryHasTokenizer(path.join(bad, 'none'))).toBe(false);
    } finally {
      rmSync(bad, { recursive: true, force: true });
    }
  });
});
