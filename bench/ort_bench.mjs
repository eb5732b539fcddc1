#!/usr/bin/env node
/**
 * Dev-only peer: the same full-size models on onnxruntime-node (what transformers.js runs on in Node), for
 * bench/compare.mjs. Run from the repository after `npm run build`:
 *
 *   node bench/ort_bench.mjs --what clip|caption --threads N [--runs R] [--onnx DIR] [--smoke]
 *
 * The ONNX files come from bench/export_onnx.py (Debian's torch, opset 17, fp32, weights by the fixture rule),
 * exported on first use into DIR (default .bench-out/onnx, git-ignored: a cache, never committed, never used by
 * tests). Sessions: graph optimizations "all", intra-op threads = N, one inter-op thread, sequential execution.
 * Cases (the same as `clipcap bench clip|caption`, backend "onnxruntime"):
 * - clip bs1, bs16 (images_per_s): pixels preprocessed by clipcap's own PIL-exact preprocessing (so both sides
 *   get the same input) from the first 1 / 16 photos of test/fixtures/images, sorted, repeated; the forward
 *   ends with the (N, 512) embeddings. Before timing, the two golden photos' embeddings are compared with
 *   fullsize_goldens `clip.image_embeds` (embeds_max_rel_diff: max |diff| / max |ref|).
 * - caption greedy_20tok, beam5_20tok (ms) and batch32_beam5 (captions_per_s): from the bench CLIP embeddings
 *   (src/bench/caption.ts benchEmbeddings), mapper graph + the merged KV-cache GPT-2 graph, 20 tokens, no stop
 *   token. The decoders are the official generate2 / generate_beam algorithms with a KV cache, in JavaScript as
 *   transformers.js does them (log-softmax and top-k over the logits on the host, the cache reordered by beam
 *   source). The batch runs all 32 prefixes' beams (160 rows) in one call per step, as clipcap does.
 *   `tokens` records the first embedding's greedy tokens and best beam for compare.mjs to check against clipcap.
 * Prints one JSON document on stdout: {"onnxruntime", "threads", "results", "tokens"?, "embeds_max_rel_diff"?}.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const ort = require('onnxruntime-node');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const what = opt('what', 'caption');
const threads = Number(opt('threads', '2'));
const smoke = args.includes('--smoke');
const onnxDir = path.resolve(repo, opt('onnx', smoke ? '.bench-out/onnx-smoke' : '.bench-out/onnx'));
const python = process.env.CLIPCAP_PYTHON ?? '/usr/bin/python3';
const fixtures = path.join(repo, 'test', 'fixtures');
const EXPORT_VERSION = 1; // bench/export_onnx.py EXPORT_VERSION
const TOKENS = smoke ? 3 : 20;
const BEAM = 5;
const BATCH = 32;
const log = (s) => process.stderr.write(`${s}\n`);

function ensureExported() {
  const manifest = path.join(onnxDir, 'manifest.json');
  if (existsSync(manifest)) {
    const m = JSON.parse(readFileSync(manifest, 'utf8'));
    if (m.export_version === EXPORT_VERSION && m.smoke === smoke) return m;
  }
  log(`exporting the ONNX models into ${onnxDir} (bench/export_onnx.py; a minute or more)...`);
  const r = spawnSync(
    python,
    [
      path.join(repo, 'bench', 'export_onnx.py'),
      '--out',
      onnxDir,
      '--fixtures',
      fixtures,
      ...(smoke ? ['--smoke'] : []),
    ],
    { stdio: ['ignore', 'inherit', 'inherit'] },
  );
  if (r.status !== 0) throw new Error(`bench/export_onnx.py failed (exit ${r.status ?? r.signal})`);
  return JSON.parse(readFileSync(manifest, 'utf8'));
}

const session = (file) =>
  ort.InferenceSession.create(path.join(onnxDir, file), {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  });

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Median seconds of `runs` timed calls after `warmup` untimed ones. */
async function timed(fn, runs, warmup = 1) {
  for (let i = 0; i < warmup; i++) await fn();
  const t = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return median(t);
}

const result = (c, metric, value, runs) => ({ case: c, backend: 'onnxruntime', metric, value, runs });

async function benchClip(manifest) {
  const runs = Number(opt('runs', '5'));
  const { preprocessImage, loadSafetensors } = await import(path.join(repo, 'dist/src/index.js'));
  const size = manifest.clip.image;
  const vision = await session('clip_vision.onnx');
  const pixelsOf = async (files) => {
    const plane = 3 * size * size;
    const data = new Float32Array(files.length * plane);
    for (let i = 0; i < files.length; i++)
      data.set((await preprocessImage(files[i], { size })).pixelValues, i * plane);
    return new ort.Tensor('float32', data, [files.length, 3, size, size]);
  };
  const encode = async (px) => (await vision.run({ pixel_values: px })).image_embeds;
  const out = { results: [] };
  if (!smoke) {
    const golden = JSON.parse(readFileSync(path.join(fixtures, 'fullsize_goldens.json'), 'utf8')).images;
    const st = await loadSafetensors(path.join(fixtures, 'fullsize_goldens.safetensors'));
    const ref = (await st.tensor('clip.image_embeds')).data;
    await st.close();
    const got = (await encode(await pixelsOf(golden.map((n) => path.join(fixtures, 'images', n))))).data;
    let diff = 0;
    let scale = 0;
    for (let i = 0; i < ref.length; i++) {
      diff = Math.max(diff, Math.abs(got[i] - ref[i]));
      scale = Math.max(scale, Math.abs(ref[i]));
    }
    out.embeds_max_rel_diff = diff / scale;
    log(
      `onnxruntime CLIP embeddings vs clip.image_embeds: max |diff| / max |ref| = ${out.embeds_max_rel_diff.toExponential(2)}`,
    );
  }
  const dir = path.join(fixtures, 'images');
  const names = readdirSync(dir)
    .filter((n) => /\.jpe?g$/i.test(n))
    .sort();
  const files = Array.from({ length: 16 }, (_, i) => path.join(dir, names[i % names.length]));
  for (const n of [1, 16]) {
    const px = await pixelsOf(files.slice(0, n));
    const t = await timed(() => encode(px), runs);
    log(`onnxruntime bs${n}: ${(n / t).toFixed(2)} images/s`);
    out.results.push(result(`bs${n}`, 'images_per_s', n / t, runs));
  }
  return out;
}

/** GPT-2 with its cache: `past` holds per layer [key, value] ort.Tensors (rows, H, P, D). */
class Gpt2Kv {
  constructor(sess, cfg) {
    this.sess = sess;
    this.L = cfg.n_layer;
    this.H = cfg.n_head;
    this.D = cfg.n_embd / cfg.n_head;
    this.E = cfg.n_embd;
    this.V = cfg.vocab_size;
  }

  emptyPast(rows) {
    const t = new ort.Tensor('float32', new Float32Array(0), [rows, this.H, 0, this.D]);
    return Array.from({ length: this.L }, () => [t, t]);
  }

  /** prefix (rows, K, E) ort.Tensor or null, ids (rows) token ids or null; returns { logits Float32Array (rows, V), past }. */
  async step(rows, prefix, ids, past) {
    const feeds = {
      inputs_embeds: prefix ?? new ort.Tensor('float32', new Float32Array(0), [rows, 0, this.E]),
      input_ids: new ort.Tensor('int64', BigInt64Array.from(ids ?? [], BigInt), [rows, ids ? 1 : 0]),
    };
    for (let i = 0; i < this.L; i++) {
      feeds[`past_key_${i}`] = past[i][0];
      feeds[`past_value_${i}`] = past[i][1];
    }
    const out = await this.sess.run(feeds);
    const next = Array.from({ length: this.L }, (_, i) => [
      out[`present_key_${i}`],
      out[`present_value_${i}`],
    ]);
    return { logits: out.logits.data, past: next };
  }

  /** The cache with row r taken from row source[r]. */
  reorder(past, source) {
    return past.map((kv) =>
      kv.map((t) => {
        const [, H, P, D] = t.dims;
        const n = H * P * D;
        const src = t.data;
        const dst = new Float32Array(source.length * n);
        for (let r = 0; r < source.length; r++)
          dst.set(src.subarray(source[r] * n, source[r] * n + n), r * n);
        return new ort.Tensor('float32', dst, [source.length, H, P, D]);
      }),
    );
  }
}

/** log-softmax of row r of (rows, V) logits, in float64 (the official softmax().log()). */
function logSoftmaxRow(logits, r, V, out) {
  let max = -Infinity;
  const base = r * V;
  for (let v = 0; v < V; v++) if (logits[base + v] > max) max = logits[base + v];
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp(logits[base + v] - max);
  const lse = max + Math.log(sum);
  for (let v = 0; v < V; v++) out[v] = logits[base + v] - lse;
}

/** Insert (score, index) into the descending top-k lists (k small). */
function pushTop(topS, topI, score, index) {
  const k = topS.length;
  if (!(score > topS[k - 1])) return;
  let j = k - 1;
  while (j > 0 && topS[j - 1] < score) {
    topS[j] = topS[j - 1];
    topI[j] = topI[j - 1];
    j--;
  }
  topS[j] = score;
  topI[j] = index;
}

async function greedy(gpt, prefix, T) {
  const rows = prefix.dims[0];
  let { logits, past } = await gpt.step(rows, prefix, null, gpt.emptyPast(rows));
  const toks = Array.from({ length: rows }, () => []);
  for (let t = 0; t < T; t++) {
    const ids = [];
    for (let r = 0; r < rows; r++) {
      let best = 0;
      for (let v = 1; v < gpt.V; v++) if (logits[r * gpt.V + v] > logits[r * gpt.V + best]) best = v;
      toks[r].push(best);
      ids.push(best);
    }
    if (t === T - 1) break;
    ({ logits, past } = await gpt.step(rows, null, ids, past));
  }
  return toks;
}

/** generate_beam with a KV cache for N prefixes (no stop token: every beam runs T tokens); best beam first. */
async function beam(gpt, prefix, T, B = BEAM) {
  const N = prefix.dims[0];
  const V = gpt.V;
  const lp = new Float64Array(V);
  let { logits, past } = await gpt.step(N, prefix, null, gpt.emptyPast(N));
  let scores = new Float64Array(N * B);
  let tokens = [];
  const lengths = new Float64Array(N * B).fill(1);
  const source0 = [];
  for (let n = 0; n < N; n++) {
    logSoftmaxRow(logits, n, V, lp);
    const topS = new Float64Array(B).fill(-Infinity);
    const topI = new Int32Array(B);
    for (let v = 0; v < V; v++) pushTop(topS, topI, lp[v], v);
    for (let b = 0; b < B; b++) {
      scores[n * B + b] = topS[b];
      tokens.push([topI[b]]);
      source0.push(n);
    }
  }
  past = gpt.reorder(past, source0);
  for (let t = 1; t < T; t++) {
    ({ logits, past } = await gpt.step(
      N * B,
      null,
      tokens.map((x) => x[x.length - 1]),
      past,
    ));
    const source = [];
    const nextTokens = [];
    const nextScores = new Float64Array(N * B);
    for (let n = 0; n < N; n++) {
      const topS = new Float64Array(B).fill(-Infinity);
      const topI = new Int32Array(B);
      for (let b = 0; b < B; b++) {
        const r = n * B + b;
        logSoftmaxRow(logits, r, V, lp);
        const len = lengths[r] + 1; // no beam has stopped (no stop token)
        for (let v = 0; v < V; v++) pushTop(topS, topI, (scores[r] + lp[v]) / len, b * V + v);
      }
      for (let b = 0; b < B; b++) {
        const src = n * B + Math.floor(topI[b] / V);
        source.push(src);
        nextTokens.push([...tokens[src], topI[b] % V]);
        nextScores[n * B + b] = topS[b] * (lengths[src] + 1);
      }
    }
    for (let r = 0; r < N * B; r++) lengths[r] += 1;
    scores = nextScores;
    tokens = nextTokens;
    past = gpt.reorder(past, source);
  }
  // Each prefix's beams are already sorted by score / length (the top-k order).
  return Array.from({ length: N }, (_, n) => tokens.slice(n * B, n * B + B));
}

async function benchCaption(manifest) {
  const runs = Number(opt('runs', '3'));
  const batchRuns = Number(opt('batch-runs', '1'));
  const { benchEmbeddings } = await import(path.join(repo, 'dist/src/bench/caption.js'));
  const mapper = await session('mapper.onnx');
  const gpt = new Gpt2Kv(await session('gpt2_kv.onnx'), manifest.gpt2);
  const D = manifest.mapper.prefix_size;
  const embeds = benchEmbeddings(BATCH, D);
  const prefixOf = async (n) => {
    const data = new Float32Array(n * D);
    for (let i = 0; i < n; i++) data.set(embeds[i], i * D);
    return (await mapper.run({ clip_embedding: new ort.Tensor('float32', data, [n, D]) })).prefix;
  };
  const out = { results: [], tokens: {} };
  const cases = [
    [
      'beam5_20tok',
      async () => (out.tokens.beam5_20tok = (await beam(gpt, await prefixOf(1), TOKENS))[0][0]),
    ],
    [
      'greedy_20tok',
      async () => (out.tokens.greedy_20tok = (await greedy(gpt, await prefixOf(1), TOKENS))[0]),
    ],
  ];
  for (const [id, fn] of cases) {
    const ms = (await timed(fn, runs)) * 1000;
    log(`onnxruntime ${id}: ${ms.toFixed(0)} ms (${(ms / TOKENS).toFixed(1)} ms/token)`);
    out.results.push(result(id, 'ms', ms, runs));
    out.results.push(result(`${id}_per_token`, 'ms_per_token', ms / TOKENS, runs));
  }
  await beam(gpt, await prefixOf(2), 2); // warm-up at batch shapes
  const t = await timed(
    async () => {
      const b = await beam(gpt, await prefixOf(BATCH), TOKENS);
      if (b.length !== BATCH || b.some((x) => x[0].length !== TOKENS)) throw new Error('batch: wrong output');
    },
    batchRuns,
    0,
  );
  log(`onnxruntime batch32_beam5: ${(BATCH / t).toFixed(2)} captions/s`);
  out.results.push(result('batch32_beam5', 'captions_per_s', BATCH / t, batchRuns));
  return out;
}

const manifest = ensureExported();
const out = what === 'clip' ? await benchClip(manifest) : await benchCaption(manifest);
process.stdout.write(
  `${JSON.stringify({ onnxruntime: ort.env.versions.common, threads, onnx: onnxDir, ...out })}\n`,
);
