/**
 * GPT-2's byte-level BPE tokenizer, offline.
 *
 * The vocabulary is GPT-2's (OpenAI's `r50k_base`): the rank table shipped by the `gpt-tokenizer` package, where a
 * token's rank is its GPT-2 id. We use only that table and do the pretokenization, merging and decoding here,
 * because the result must equal Hugging Face's `GPT2TokenizerFast` id for id:
 * - Merging follows `merges.txt` semantics, not tiktoken's "any two parts whose concatenation is a token" rule:
 *   each token of rank r >= 256 is made by exactly one merge (left, right), which we recover from the rank table
 *   (the same derivation transformers' tiktoken converter uses), and at encode time only those pairs merge,
 *   lowest rank first, leftmost on ties (as the `tokenizers` crate's priority queue does).
 * - Pretokenization uses GPT-2's pattern with `\s` spelled `\p{White_Space}`, because JavaScript's `\s` differs
 *   from Oniguruma's (the regex engine of `tokenizers`): JS counts U+FEFF and not U+0085.
 * - Decoding joins the tokens' bytes and decodes them as UTF-8, invalid sequences each becoming U+FFFD (what
 *   Python's `errors="replace"` and Rust's `from_utf8_lossy` both do: one U+FFFD per maximal invalid subpart).
 *
 * `<|endoftext|>` inside text is ordinary text by default (encoded as its characters, like tiktoken without
 * `allowed_special`); pass `{ allowSpecial: true }` to map it to id 50256 as `GPT2TokenizerFast.encode` does.
 *
 * @example
 * const tok = await Gpt2Tokenizer.load();
 * tok.encode('A dog.'); // [32, 3290, 13]
 * tok.decode([32, 3290, 13]); // 'A dog.'
 */

const EOS_TEXT = '<|endoftext|>';
const EOS_ID = 50256;
const VOCAB_SIZE = 50257;

/** GPT-2's pretokenization pattern, `\s` replaced by `\p{White_Space}` (see the file comment). */
const SPLIT_PATTERN =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;

/** GPT-2's pretokenization: the chunks BPE runs on, in order ("A red," -> "A", " red", ","). */
export function pretokenize(text: string): string[] {
  return Array.from(text.matchAll(SPLIT_PATTERN), (m) => m[0]);
}

/** Chunk encodings are cached (captions repeat words a lot); the cache is dropped when it grows past this. */
const CHUNK_CACHE_LIMIT = 50_000;

/** A byte string as a JS string of char codes 0..255: a compact, hashable Map key. */
function bytesKey(bytes: Uint8Array, start = 0, end = bytes.length): string {
  let s = '';
  for (let i = start; i < end; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

interface Vocab {
  /** tokenBytes[id]: the bytes of token `id` (GPT-2: 50257 entries; the last is `<|endoftext|>`). */
  tokenBytes: Uint8Array[];
  /** bytesKey(token bytes) -> id, for the ordinary tokens (not `<|endoftext|>`). */
  idOfBytes: Map<string, number>;
  /**
   * `left * vocabSize + right` -> the merge: the id of the token it makes and its priority (lower merges
   * first). In r50k_base a token's rank is its id; in a merges.txt it is the line's position.
   */
  mergeOf: Map<number, { id: number; rank: number }>;
  vocabSize: number;
  /** The id of `<|endoftext|>` (-1 when the vocabulary has none). */
  eosId: number;
  /**
   * Whether a chunk that is itself a token may skip BPE. Proven for r50k_base (every token is reachable from
   * its bytes); not assumed for other vocabularies, which follow the merges as `tokenizers` does.
   */
  wholeTokens: boolean;
}

let vocabPromise: Promise<Vocab> | undefined;

async function loadVocab(): Promise<Vocab> {
  // The rank table is a 500 kB module: import it on first use, not when the package loads.
  const { default: ranks } = await import('gpt-tokenizer/bpeRanks/r50k_base');
  if (ranks.length !== EOS_ID || Object.keys(ranks).length !== EOS_ID) {
    throw new Error(`gpt-tokenizer's r50k_base table has ${ranks.length} entries, expected ${EOS_ID}`);
  }
  const encoder = new TextEncoder();
  const tokenBytes: Uint8Array[] = new Array<Uint8Array>(VOCAB_SIZE);
  const idOfBytes = new Map<string, number>();
  for (let id = 0; id < EOS_ID; id++) {
    const entry = ranks[id];
    // Tokens that are valid UTF-8 are stored as strings, the others as byte arrays.
    const bytes = typeof entry === 'string' ? encoder.encode(entry) : Uint8Array.from(entry);
    tokenBytes[id] = bytes;
    idOfBytes.set(bytesKey(bytes), id);
  }
  tokenBytes[EOS_ID] = encoder.encode(EOS_TEXT);

  // The first 256 ranks must be the single bytes (GPT-2's byte alphabet); every later token is one merge.
  for (let id = 0; id < 256; id++) {
    if (tokenBytes[id].length !== 1) throw new Error(`r50k_base rank ${id} is not a single byte`);
  }
  const mergeOf = new Map<number, { id: number; rank: number }>();
  for (let id = 256; id < EOS_ID; id++) {
    // Which two tokens merge into `id`: BPE of its bytes using only the merges found so far (all of lower
    // rank) stops at exactly two parts.
    const parts = bpe(tokenBytes[id], idOfBytes, mergeOf, VOCAB_SIZE);
    if (parts.length !== 2) {
      throw new Error(`r50k_base token ${id} does not come from one merge (${parts.length} parts)`);
    }
    mergeOf.set(parts[0] * VOCAB_SIZE + parts[1], { id, rank: id });
  }
  return { tokenBytes, idOfBytes, mergeOf, vocabSize: VOCAB_SIZE, eosId: EOS_ID, wholeTokens: true };
}

/**
 * Byte-pair encoding of one pretokenized chunk: start from single bytes, repeatedly apply the known merge with
 * the lowest rank (leftmost first) until none applies. Chunks are short (words), so the quadratic scan is fine.
 */
function bpe(
  bytes: Uint8Array,
  idOfBytes: Map<string, number>,
  mergeOf: Map<number, { id: number; rank: number }>,
  vocabSize: number,
): number[] {
  const parts: number[] = new Array<number>(bytes.length);
  for (let i = 0; i < bytes.length; i++) parts[i] = idOfBytes.get(bytesKey(bytes, i, i + 1)) as number;
  while (parts.length > 1) {
    let best = -1;
    let bestRank = Infinity;
    let bestId = -1;
    for (let i = 0; i + 1 < parts.length; i++) {
      const merged = mergeOf.get(parts[i] * vocabSize + parts[i + 1]);
      if (merged !== undefined && merged.rank < bestRank) {
        bestRank = merged.rank;
        bestId = merged.id;
        best = i;
      }
    }
    if (best < 0) break;
    parts.splice(best, 2, bestId);
  }
  return parts;
}

/**
 * GPT-2's byte <-> character table (`bytes_to_unicode` in OpenAI's encoder.py): printable Latin-1 bytes stand
 * for themselves, the others are shifted to U+0100 and up, so every token of vocab.json / merges.txt is a
 * printable string ("Ġ" is the space byte).
 */
function byteToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const table = new Array<string>(256);
  for (const b of printable) table[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (table[b] === undefined) table[b] = String.fromCharCode(256 + n++);
  return table;
}

/** The file names a Hugging Face GPT-2 directory carries its tokenizer in. */
export const VOCAB_FILE = 'vocab.json';
export const MERGES_FILE = 'merges.txt';

/**
 * A vocabulary from Hugging Face's GPT-2 tokenizer files: `vocab` (vocab.json: token string -> id, tokens
 * spelled with the byte table above) and `merges` (merges.txt: "#version" line, then one "left right" pair per
 * line, highest priority first). Every one of the 256 bytes must be a token; `<|endoftext|>` is optional.
 */
function vocabFromFiles(vocab: Record<string, unknown>, merges: string, where: string): Vocab {
  const charToByte = new Map<string, number>();
  byteToUnicode().forEach((c, b) => charToByte.set(c, b));
  const entries = Object.entries(vocab);
  const vocabSize = entries.length;
  const tokenBytes = new Array<Uint8Array>(vocabSize);
  const idOfBytes = new Map<string, number>();
  const idOfText = new Map<string, number>();
  let eosId = -1;
  for (const [text, id] of entries) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize || tokenBytes[id])
      throw new Error(
        `${where}/${VOCAB_FILE}: token ${JSON.stringify(text)} has id ${String(id)}; ids must be 0..${vocabSize - 1}, each once`,
      );
    idOfText.set(text, id);
    if (text === EOS_TEXT) {
      eosId = id;
      tokenBytes[id] = new TextEncoder().encode(EOS_TEXT);
      continue;
    }
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) {
      const b = charToByte.get(text[i]);
      if (b === undefined)
        throw new Error(
          `${where}/${VOCAB_FILE}: token ${JSON.stringify(text)} is not in GPT-2's byte alphabet`,
        );
      bytes[i] = b;
    }
    tokenBytes[id] = bytes;
    idOfBytes.set(bytesKey(bytes), id);
  }
  for (let b = 0; b < 256; b++)
    if (!idOfBytes.has(String.fromCharCode(b)))
      throw new Error(
        `${where}/${VOCAB_FILE}: byte ${b} has no token; a byte-level vocabulary needs all 256`,
      );
  const mergeOf = new Map<number, { id: number; rank: number }>();
  const lines = merges.split('\n');
  let rank = 0;
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line === '' || (i === 0 && line.startsWith('#version'))) return;
    const pair = line.split(' ');
    const left = idOfText.get(pair[0]);
    const right = idOfText.get(pair[1]);
    const made = idOfText.get(pair[0] + pair[1]);
    if (pair.length !== 2 || left === undefined || right === undefined || made === undefined)
      throw new Error(
        `${where}/${MERGES_FILE} line ${i + 1}: "${line}" is not a merge of two tokens into a token of ${VOCAB_FILE}`,
      );
    const key = left * vocabSize + right;
    if (!mergeOf.has(key)) mergeOf.set(key, { id: made, rank: rank++ });
  });
  return { tokenBytes, idOfBytes, mergeOf, vocabSize, eosId, wholeTokens: false };
}

export interface EncodeOptions {
  /** Map the text `<|endoftext|>` to id 50256 (default false: it is encoded as ordinary characters). */
  allowSpecial?: boolean;
}

export class Gpt2Tokenizer {
  /** The id of `<|endoftext|>` (-1 for a vocabulary without it). */
  readonly eosTokenId: number;
  readonly vocabSize: number;
  private readonly encoder = new TextEncoder();
  private readonly cache = new Map<string, readonly number[]>();

  private constructor(private readonly vocab: Vocab) {
    this.eosTokenId = vocab.eosId;
    this.vocabSize = vocab.vocabSize;
  }

  /**
   * The tokenizer a Hugging Face GPT-2 directory carries (vocab.json + merges.txt), e.g. a GPT-2 trained with
   * its own small vocabulary. Same pretokenization, merge order and decoding as the standard one.
   */
  static async fromDirectory(dir: string): Promise<Gpt2Tokenizer> {
    const { readFile } = await import('node:fs/promises');
    const { join } = await import('node:path');
    let vocabText: string;
    let merges: string;
    try {
      vocabText = await readFile(join(dir, VOCAB_FILE), 'utf8');
      merges = await readFile(join(dir, MERGES_FILE), 'utf8');
    } catch (e) {
      throw new Error(
        `${dir}: cannot read its tokenizer (${(e as NodeJS.ErrnoException).code ?? String(e)}); a GPT-2 directory with its own vocabulary needs ${VOCAB_FILE} and ${MERGES_FILE}`,
      );
    }
    let vocab: unknown;
    try {
      vocab = JSON.parse(vocabText);
    } catch {
      throw new Error(`${dir}/${VOCAB_FILE}: not valid JSON`);
    }
    if (typeof vocab !== 'object' || vocab === null || Array.isArray(vocab))
      throw new Error(`${dir}/${VOCAB_FILE}: not a JSON object of token -> id`);
    return new Gpt2Tokenizer(vocabFromFiles(vocab as Record<string, unknown>, merges, dir));
  }

  /** Whether `dir` carries its own tokenizer files (vocab.json and merges.txt). */
  static async directoryHasTokenizer(dir: string): Promise<boolean> {
    const { stat } = await import('node:fs/promises');
    const { join } = await import('node:path');
    const ok = async (f: string): Promise<boolean> =>
      (await stat(join(dir, f)).catch(() => null))?.isFile() ?? false;
    return (await ok(VOCAB_FILE)) && (await ok(MERGES_FILE));
  }

  /** This vocabulary as Hugging Face tokenizer files: vocab.json (object) and merges.txt (text). */
  toFiles(): { vocab: Record<string, number>; merges: string } {
    const table = byteToUnicode();
    const spell = (id: number): string =>
      id === this.vocab.eosId ? EOS_TEXT : Array.from(this.vocab.tokenBytes[id], (b) => table[b]).join('');
    const vocab: Record<string, number> = {};
    for (let id = 0; id < this.vocab.vocabSize; id++) vocab[spell(id)] = id;
    const merges = [...this.vocab.mergeOf.entries()].sort((a, b) => a[1].rank - b[1].rank);
    const lines = merges.map(([key]) => {
      const left = Math.floor(key / this.vocab.vocabSize);
      return `${spell(left)} ${spell(key - left * this.vocab.vocabSize)}`;
    });
    return { vocab, merges: `#version: 0.2\n${lines.join('\n')}\n` };
  }

  /** The GPT-2 tokenizer; the vocabulary ships with the package, so this needs no network. */
  static async load(): Promise<Gpt2Tokenizer> {
    vocabPromise ??= loadVocab();
    try {
      return new Gpt2Tokenizer(await vocabPromise);
    } catch (e) {
      vocabPromise = undefined; // let a later call retry instead of caching the failure
      throw e;
    }
  }

  /** Text -> GPT-2 ids (no BOS/EOS added, as the official ClipCap training data). */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids: number[] = [];
    if (!options.allowSpecial || this.eosTokenId < 0) {
      this.encodeOrdinary(text, ids);
      return ids;
    }
    const pieces = text.split(EOS_TEXT);
    pieces.forEach((piece, i) => {
      if (i > 0) ids.push(this.eosTokenId);
      this.encodeOrdinary(piece, ids);
    });
    return ids;
  }

  /** GPT-2 ids -> text; invalid UTF-8 (e.g. a multi-byte character cut between tokens) becomes U+FFFD. */
  decode(ids: readonly number[]): string {
    let total = 0;
    for (const id of ids) total += this.tokenBytes(id).length;
    const bytes = new Uint8Array(total);
    let offset = 0;
    for (const id of ids) {
      const b = this.vocab.tokenBytes[id];
      bytes.set(b, offset);
      offset += b.length;
    }
    // A fresh non-streaming decoder call: the result never depends on what was decoded before.
    return new TextDecoder('utf-8', { fatal: false, ignoreBOM: true }).decode(bytes);
  }

  /** The text of one token alone (a partial UTF-8 character shows as U+FFFD). */
  tokenText(id: number): string {
    return this.decode([id]);
  }

  /** The raw bytes of one token (a view into the vocabulary: do not modify). */
  tokenBytes(id: number): Uint8Array {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(
        `GPT-2 token id ${id} is out of range: ids are integers in [0, ${this.vocabSize - 1}]`,
      );
    }
    return this.vocab.tokenBytes[id];
  }

  private encodeOrdinary(text: string, out: number[]): void {
    const { idOfBytes, mergeOf } = this.vocab;
    for (const [chunk] of text.matchAll(SPLIT_PATTERN)) {
      let ids = this.cache.get(chunk);
      if (ids === undefined) {
        // Lone UTF-16 surrogates (not valid Unicode) encode as U+FFFD here.
        const bytes = this.encoder.encode(chunk);
        const whole = this.vocab.wholeTokens ? idOfBytes.get(bytesKey(bytes)) : undefined;
        // A chunk that is itself a token: BPE always ends there, as every token is reachable from its bytes.
        ids = whole !== undefined ? [whole] : bpe(bytes, idOfBytes, mergeOf, this.vocabSize);
        if (this.cache.size >= CHUNK_CACHE_LIMIT) this.cache.clear();
        this.cache.set(chunk, ids);
      }
      for (const id of ids) out.push(id);
    }
  }
}
