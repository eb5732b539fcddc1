/**
 * The demo's GPT-2 (`bundled:demo-gpt2`, assets/models/demo-gpt2): GPT-2's architecture at a small size, with
 * its own byte-level BPE vocabulary learned from every caption the demo world can write, shipped the way
 * Hugging Face GPT-2 directories carry theirs (vocab.json + merges.txt). GPT-2's 50257-way output layer would
 * dominate a training step of a model this small; with a few hundred tokens the step is dominated by the
 * transformer itself.
 *
 * The first 256 ids are GPT-2's byte tokens in GPT-2's order (so "!" is 0, the official padding id, and "."
 * is 13, the official stop token), then one token per merge, then `<|endoftext|>`. The weights are a seeded
 * initialization as GPT-2's (normal 0.02; residual projections scaled by 1/sqrt(2 n_layer)).
 *
 * `node dist/src/cli/demo/gpt2-assets.js DIR` (re)writes the directory; a test checks the shipped files equal it.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Gpt2Tokenizer, pretokenize } from '../../text/gpt2-tokenizer.js';
import { mulberry32 } from '../../util/random.js';
import type { StateDict } from '../../weights/host.js';
import { saveSafetensors } from '../../weights/safetensors.js';
import { allCaptions } from './world.js';

export const DEMO_GPT2 = {
  n_embd: 128,
  n_layer: 2,
  n_head: 4,
  n_positions: 96,
  seed: 20240,
} as const;

/**
 * Byte-level BPE merges learned from `texts`: start from bytes, repeatedly merge the most frequent adjacent
 * pair (ties: the lexicographically smallest pair of spellings) until every chunk is one token.
 */
export async function learnBpe(
  texts: readonly string[],
): Promise<{ vocab: Record<string, number>; merges: string }> {
  const base = await Gpt2Tokenizer.load();
  const byteTable = base.toFiles().vocab;
  const spelling: string[] = [];
  for (const [text, id] of Object.entries(byteTable)) if (id < 256) spelling[id] = text;
  const idOfByte = new Map<number, number>();
  for (let id = 0; id < 256; id++) idOfByte.set(base.tokenBytes(id)[0], id);
  const counts = new Map<string, number>();
  for (const t of texts) for (const c of pretokenize(t)) counts.set(c, (counts.get(c) ?? 0) + 1);
  const words = [...counts.entries()]
    .sort((a, b) => (a[0] < b[0] ? -1 : 1))
    .map(([chunk, n]) => ({
      ids: Array.from(new TextEncoder().encode(chunk), (b) => idOfByte.get(b) as number),
      n,
    }));
  const merges: string[] = [];
  for (;;) {
    const pairs = new Map<string, { a: number; b: number; n: number }>();
    for (const w of words)
      for (let i = 0; i + 1 < w.ids.length; i++) {
        const key = `${w.ids[i]},${w.ids[i + 1]}`;
        const p = pairs.get(key) ?? { a: w.ids[i], b: w.ids[i + 1], n: 0 };
        p.n += w.n;
        pairs.set(key, p);
      }
    if (pairs.size === 0) break;
    let best: { a: number; b: number; n: number } | undefined;
    for (const p of pairs.values()) {
      if (!best || p.n > best.n) best = p;
      else if (p.n === best.n) {
        const k1 = `${spelling[p.a]} ${spelling[p.b]}`;
        const k2 = `${spelling[best.a]} ${spelling[best.b]}`;
        if (k1 < k2) best = p;
      }
    }
    const { a, b } = best as { a: number; b: number };
    const id = spelling.length;
    spelling.push(spelling[a] + spelling[b]);
    merges.push(`${spelling[a]} ${spelling[b]}`);
    for (const w of words) {
      const out: number[] = [];
      for (let i = 0; i < w.ids.length; i++) {
        if (i + 1 < w.ids.length && w.ids[i] === a && w.ids[i + 1] === b) {
          out.push(id);
          i++;
        } else out.push(w.ids[i]);
      }
      w.ids = out;
    }
  }
  const vocab: Record<string, number> = {};
  spelling.forEach((s, id) => (vocab[s] = id));
  vocab['<|endoftext|>'] = spelling.length;
  return { vocab, merges: `#version: 0.2\n${merges.join('\n')}\n` };
}

/** config.json of the demo GPT-2 (Hugging Face GPT2LMHeadModel fields). */
export function demoGpt2Config(vocabSize: number): Record<string, unknown> {
  return {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    activation_function: 'gelu_new',
    vocab_size: vocabSize,
    n_embd: DEMO_GPT2.n_embd,
    n_layer: DEMO_GPT2.n_layer,
    n_head: DEMO_GPT2.n_head,
    n_positions: DEMO_GPT2.n_positions,
    n_inner: null,
    attn_pdrop: 0.1,
    embd_pdrop: 0.1,
    resid_pdrop: 0.1,
    layer_norm_epsilon: 1e-5,
    initializer_range: 0.02,
    bos_token_id: vocabSize - 1,
    eos_token_id: vocabSize - 1,
    tie_word_embeddings: true,
  };
}

/** GPT-2's initialization (canonical names, Conv1D weights stored (in, out)), seeded. */
export function initGpt2Weights(vocabSize: number, seed: number = DEMO_GPT2.seed): StateDict {
  const { n_embd: e, n_layer: layers, n_positions: positions } = DEMO_GPT2;
  const rand = mulberry32(seed);
  const normal = (std: number): number => {
    const u = 1 - rand();
    return std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  };
  const sd: StateDict = new Map();
  const put = (name: string, shape: number[], fill: 'zero' | 'one' | number): void => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (fill === 'one') data.fill(1);
    else if (typeof fill === 'number') for (let i = 0; i < data.length; i++) data[i] = normal(fill);
    sd.set(name, { dtype: 'f32', shape, data });
  };
  const resid = 0.02 / Math.sqrt(2 * layers);
  put('wte.weight', [vocabSize, e], 0.02);
  put('wpe.weight', [positions, e], 0.01);
  for (let l = 0; l < layers; l++) {
    const p = `h.${l}.`;
    put(`${p}ln_1.weight`, [e], 'one');
    put(`${p}ln_1.bias`, [e], 'zero');
    put(`${p}attn.c_attn.weight`, [e, 3 * e], 0.02);
    put(`${p}attn.c_attn.bias`, [3 * e], 'zero');
    put(`${p}attn.c_proj.weight`, [e, e], resid);
    put(`${p}attn.c_proj.bias`, [e], 'zero');
    put(`${p}ln_2.weight`, [e], 'one');
    put(`${p}ln_2.bias`, [e], 'zero');
    put(`${p}mlp.c_fc.weight`, [e, 4 * e], 0.02);
    put(`${p}mlp.c_fc.bias`, [4 * e], 'zero');
    put(`${p}mlp.c_proj.weight`, [4 * e, e], resid);
    put(`${p}mlp.c_proj.bias`, [e], 'zero');
  }
  put('ln_f.weight', [e], 'one');
  put('ln_f.bias', [e], 'zero');
  return sd;
}

/** Every file of the demo GPT-2 directory, as text (JSON / merges) or a state dict. */
export async function demoGpt2Files(): Promise<{
  config: string;
  vocab: string;
  merges: string;
  weights: StateDict;
}> {
  const { vocab, merges } = await learnBpe(allCaptions());
  const size = Object.keys(vocab).length;
  return {
    config: `${JSON.stringify(demoGpt2Config(size), null, 2)}\n`,
    vocab: `${JSON.stringify(vocab)}\n`,
    merges,
    weights: initGpt2Weights(size),
  };
}

export async function writeDemoGpt2(dir: string): Promise<void> {
  const f = await demoGpt2Files();
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, 'config.json'), f.config);
  await fs.writeFile(path.join(dir, 'vocab.json'), f.vocab);
  await fs.writeFile(path.join(dir, 'merges.txt'), f.merges);
  await saveSafetensors(path.join(dir, 'model.safetensors'), f.weights, { format: 'pt' });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dir = process.argv[2];
  if (!dir) {
    process.stderr.write('usage: node dist/src/cli/demo/gpt2-assets.js DIR\n');
    process.exit(2);
  }
  await writeDemoGpt2(dir);
}
