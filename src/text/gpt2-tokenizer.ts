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

/** Chunk encodings are cached (captions repeat words a lot); the cache is dropped when it grows past this. */
const CHUNK_CACHE_LIMIT = 50_000;

/** A byte string as a JS string of char codes 0..255: a compact, hashable Map key. */
function bytesKey(bytes: Uint8Array, start = 0, end = bytes.length): string {
  let s = '';
  for (let i = start; i < end; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

interface Vocab {
  /** tokenBytes[id]: the bytes of token `id` (50257 entries; the last is `<|endoftext|>`). */
  tokenBytes: Uint8Array[];
  /** bytesKey(token bytes) -> id, for the 50256 ordinary tokens. */
  idOfBytes: Map<string, number>;
  /** `left * VOCAB_SIZE + right` -> id of the token that merge makes (its rank doubles as merge priority). */
  mergeOf: Map<number, number>;
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
  const mergeOf = new Map<number, number>();
  for (let id = 256; id < EOS_ID; id++) {
    // Which two tokens merge into `id`: BPE of its bytes using only the merges found so far (all of lower
    // rank) stops at exactly two parts.
    const parts = bpe(tokenBytes[id], idOfBytes, mergeOf);
    if (parts.length !== 2) {
      throw new Error(`r50k_base token ${id} does not come from one merge (${parts.length} parts)`);
    }
    mergeOf.set(parts[0] * VOCAB_SIZE + parts[1], id);
  }
  return { tokenBytes, idOfBytes, mergeOf };
}

/**
 * Byte-pair encoding of one pretokenized chunk: start from single bytes, repeatedly apply the known merge with
 * the lowest rank (leftmost first) until none applies. Chunks are short (words), so the quadratic scan is fine.
 */
function bpe(bytes: Uint8Array, idOfBytes: Map<string, number>, mergeOf: Map<number, number>): number[] {
  const parts: number[] = new Array<number>(bytes.length);
  for (let i = 0; i < bytes.length; i++) parts[i] = idOfBytes.get(bytesKey(bytes, i, i + 1)) as number;
  while (parts.length > 1) {
    let best = -1;
    let bestId = Infinity;
    for (let i = 0; i + 1 < parts.length; i++) {
      const merged = mergeOf.get(parts[i] * VOCAB_SIZE + parts[i + 1]);
      if (merged !== undefined && merged < bestId) {
        bestId = merged;
        best = i;
      }
    }
    if (best < 0) break;
    parts.splice(best, 2, bestId);
  }
  return parts;
}

export interface EncodeOptions {
  /** Map the text `<|endoftext|>` to id 50256 (default false: it is encoded as ordinary characters). */
  allowSpecial?: boolean;
}

export class Gpt2Tokenizer {
  readonly eosTokenId = EOS_ID;
  readonly vocabSize = VOCAB_SIZE;
  private readonly encoder = new TextEncoder();
  private readonly cache = new Map<string, readonly number[]>();

  private constructor(private readonly vocab: Vocab) {}

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
    if (!options.allowSpecial) {
      this.encodeOrdinary(text, ids);
      return ids;
    }
    const pieces = text.split(EOS_TEXT);
    pieces.forEach((piece, i) => {
      if (i > 0) ids.push(EOS_ID);
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
    if (!Number.isInteger(id) || id < 0 || id >= VOCAB_SIZE) {
      throw new RangeError(
        `GPT-2 token id ${id} is out of range: ids are integers in [0, ${VOCAB_SIZE - 1}]`,
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
        const whole = idOfBytes.get(bytesKey(bytes));
        // A chunk that is itself a token: BPE always ends there, as every token is reachable from its bytes.
        ids = whole !== undefined ? [whole] : bpe(bytes, idOfBytes, mergeOf);
        if (this.cache.size >= CHUNK_CACHE_LIMIT) this.cache.clear();
        this.cache.set(chunk, ids);
      }
      for (const id of ids) out.push(id);
    }
  }
}
