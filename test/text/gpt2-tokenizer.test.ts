import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, it, expect, beforeAll } from 'vitest';
import { Gpt2Tokenizer } from '../../src/text/gpt2-tokenizer.js';

interface TokenizerCase {
  text: string;
  ids: number[];
  decoded: string;
}

const goldens = JSON.parse(
  readFileSync(fileURLToPath(new URL('../fixtures/goldens.json', import.meta.url)), 'utf8'),
) as { tokenizer_cases: TokenizerCase[] };
const cases = goldens.tokenizer_cases;

let tok: Gpt2Tokenizer;
beforeAll(async () => {
  tok = await Gpt2Tokenizer.load();
});

describe('Gpt2Tokenizer vs GPT2TokenizerFast (goldens.json tokenizer_cases)', () => {
  it('has GPT-2 fixture cases to check', () => {
    expect(cases.length).toBeGreaterThanOrEqual(10);
  });
  cases.forEach((c, i) => {
    const label = JSON.stringify(
      c.text.length > 40 ? `${c.text.slice(0, 40)}...(${c.text.length} chars)` : c.text,
    );
    it(`case ${i} ${label}: encode gives the same ids`, () => {
      expect(tok.encode(c.text)).toEqual(c.ids);
    });
    it(`case ${i} ${label}: decode gives the same text`, () => {
      expect(tok.decode(c.ids)).toBe(c.decoded);
    });
  });
});

describe('Gpt2Tokenizer details', () => {
  it('exposes GPT-2 sizes', () => {
    expect(tok.vocabSize).toBe(50257);
    expect(tok.eosTokenId).toBe(50256);
    expect(tok.decode([50256])).toBe('<|endoftext|>');
  });

  it('treats <|endoftext|> in text as plain characters unless allowSpecial', () => {
    const plain = tok.encode('a<|endoftext|>b');
    expect(plain).not.toContain(50256);
    expect(tok.decode(plain)).toBe('a<|endoftext|>b');
    const special = tok.encode('a<|endoftext|>b', { allowSpecial: true });
    expect(special).toEqual([...tok.encode('a'), 50256, ...tok.encode('b')]);
  });

  it('replaces invalid UTF-8 like Python errors="replace"', () => {
    // '猫' is 3 bytes split over several byte-level tokens; decoding a prefix of them cuts the character.
    const ids = tok.encode('猫');
    expect(ids.length).toBeGreaterThan(1);
    expect(tok.decode(ids.slice(0, ids.length - 1))).toBe('\ufffd');
    // Lone continuation bytes: one U+FFFD each (ids of single bytes 0x80, 0x81 in GPT-2's byte alphabet).
    const b80 = findSingleByteToken(tok, 0x80);
    const b81 = findSingleByteToken(tok, 0x81);
    expect(tok.decode([b80, b81, tok.encode('x')[0]])).toBe('\ufffd\ufffdx');
    // Decoding does not carry state over from an earlier partial character.
    expect(tok.decode(tok.encode('ok'))).toBe('ok');
  });

  it('round-trips text with unusual whitespace (U+0085, U+FEFF, U+3000)', () => {
    for (const text of ['a\u0085b', '\ufeffhello', 'x\u3000\u3000y ', '  \n\t ']) {
      expect(tok.decode(tok.encode(text))).toBe(text);
    }
  });

  it('rejects ids outside the vocabulary', () => {
    expect(() => tok.decode([50257])).toThrow(/out of range/);
    expect(() => tok.tokenText(-1)).toThrow(/out of range/);
  });
});

function findSingleByteToken(t: Gpt2Tokenizer, byte: number): number {
  for (let id = 0; id < 256; id++) {
    const b = t.tokenBytes(id);
    if (b.length === 1 && b[0] === byte) return id;
  }
  throw new Error(`no single-byte token for ${byte}`);
}
