#!/usr/bin/env node
/**
 * Dev-only: what `--weights bf16|int8` costs in accuracy, on the full-size models (CLIP ViT-B/32, the MLP
 * mapper and GPT-2 small, weights by the fixture rule) and the 12 fixture photos. Run from the repository after
 * `npm run build` (needs the native backend):
 *
 *   node bench/quant_accuracy.mjs [--threads 2] [--max-tokens 67] [--json out.json]
 *
 * CLIP embeds the photos once (f32); then for each format, with GPT-2's weights rounded by
 * Gpt2Model.quantizeWeights (the mapper and CLIP stay f32):
 * - token agreement with f32: photos whose greedy caption tokens (and best beam-5 tokens) equal f32's exactly,
 *   and the share of positions equal up to the first difference;
 * - logit error: f32's greedy tokens are fed to every model (teacher forcing, the same prefix), and at each
 *   step the (12, 50257) logits are compared with f32's: max |Δ| and max |Δ| / max |f32 logit|.
 * Prints a table and, with --json, writes the figures.
 */
import { readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => import(path.join(repo, 'dist/src', p));
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const threads = Number(opt('threads', '2'));
const maxTokens = Number(opt('max-tokens', '67'));
const jsonOut = opt('json', null);
const log = (s) => process.stderr.write(`${s}\n`);

const { loadNativeBackend } = await dist('engine/native.js');
const { preprocessImage } = await dist('image/index.js');
const { ClipVisionModel } = await dist('models/clip.js');
const { ClipCapModel } = await dist('models/clipcap.js');
const { syntheticClipVision, syntheticGpt2, syntheticMapper } = await dist('models/synthetic.js');
const { ClipCap } = await dist('pipeline/caption.js');
const { captionerParts } = await dist('pipeline/load.js');
const { runPrefixTensor, feedTokensTensor } = await dist('generate/steps.js');

const loaded = loadNativeBackend();
if (!('backend' in loaded)) throw new Error(`native backend: ${loaded.error}`);
const be = loaded.backend;
be.setThreads(threads);

// 1. CLIP embeddings of the photos (f32, once).
const dir = path.join(repo, 'test/fixtures/images');
const files = readdirSync(dir)
  .filter((n) => /\.jpe?g$/i.test(n))
  .sort();
const v = syntheticClipVision();
const clip = ClipVisionModel.fromWeights(be, v.config, v.weights, 'ViT-B/32 (fixture rule)');
const plane = 3 * 224 * 224;
const pixels = new Float32Array(files.length * plane);
for (let i = 0; i < files.length; i++)
  pixels.set((await preprocessImage(path.join(dir, files[i]))).pixelValues, i * plane);
const embT = clip.encodeImages(pixels);
const emb = await be.download(embT);
be.free(embT);
clip.dispose();
const D = emb.length / files.length;
const embeddings = files.map((f, i) => ({ embedding: emb.slice(i * D, (i + 1) * D), name: f }));
log(`embedded ${files.length} photos`);

// 2. One captioner per format.
const formats = ['f32', 'bf16', 'int8'];
const models = {};
const captioners = {};
for (const f of formats) {
  const m = syntheticMapper();
  const model = ClipCapModel.create(
    be,
    { mapper: m.config, mapperWeights: m.weights, gpt2: syntheticGpt2() },
    f,
  );
  if (f !== 'f32') model.gpt2.quantizeWeights(f);
  models[f] = model;
  captioners[f] = new ClipCap(await captionerParts(model, { description: f }));
}

const out = { photos: files.length, max_tokens: maxTokens, formats: {} };
const tokens = {};
for (const f of formats) {
  const t0 = Date.now();
  const opts = { maxTokens, batchSize: files.length };
  const greedy = await captioners[f].caption(embeddings, { ...opts, method: 'greedy' });
  const beam = await captioners[f].caption(embeddings, { ...opts, method: 'beam', beamSize: 5 });
  tokens[f] = { greedy: greedy.map((r) => r.tokens), beam: beam.map((r) => r.tokens) };
  log(`${f}: captioned in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
}

/** Photos with identical sequences, and positions equal before each sequence's first difference / all. */
function agreement(a, b) {
  let same = 0;
  let prefix = 0;
  let total = 0;
  a.forEach((x, i) => {
    const y = b[i];
    if (JSON.stringify(x) === JSON.stringify(y)) same++;
    let k = 0;
    while (k < x.length && k < y.length && x[k] === y[k]) k++;
    prefix += k;
    total += x.length;
  });
  return { identical: same, prefix_share: prefix / total };
}

// 3. Teacher-forced logits along f32's greedy tokens.
const err = Object.fromEntries(formats.map((f) => [f, { maxAbs: 0, maxRel: 0 }]));
{
  const n = files.length;
  const steps = Math.min(...tokens.f32.greedy.map((t) => t.length));
  const host = {};
  const caches = {};
  for (const f of formats) {
    const prefix = await models[f].prefixEmbeddings(emb);
    const run = runPrefixTensor(models[f].gpt2, prefix, steps + 1);
    be.free(prefix);
    caches[f] = run.cache;
    host[f] = await be.download(run.logits);
    be.free(run.logits);
  }
  for (let s = 0; ; s++) {
    let scale = 0;
    for (const x of host.f32) scale = Math.max(scale, Math.abs(x));
    for (const f of formats) {
      let d = 0;
      for (let i = 0; i < host.f32.length; i++) d = Math.max(d, Math.abs(host[f][i] - host.f32[i]));
      err[f].maxAbs = Math.max(err[f].maxAbs, d);
      err[f].maxRel = Math.max(err[f].maxRel, d / scale);
    }
    if (s >= steps - 1) break;
    const next = Array.from({ length: n }, (_, i) => tokens.f32.greedy[i][s]);
    for (const f of formats) {
      const l = feedTokensTensor(models[f].gpt2, caches[f], next);
      host[f] = await be.download(l);
      be.free(l);
    }
  }
  for (const f of formats) caches[f].dispose();
}

console.log(
  `| weights | greedy identical | greedy tokens before 1st diff | beam-5 best identical | beam tokens before 1st diff | max logit error (abs) | max logit error / max logit |`,
);
console.log('|---|---|---|---|---|---|---|');
for (const f of formats) {
  const g = agreement(tokens.f32.greedy, tokens[f].greedy);
  const b = agreement(tokens.f32.beam, tokens[f].beam);
  out.formats[f] = { greedy: g, beam: b, logit_max_abs: err[f].maxAbs, logit_max_rel: err[f].maxRel };
  console.log(
    `| ${f} | ${g.identical}/${files.length} | ${(100 * g.prefix_share).toFixed(1)}% | ${b.identical}/${files.length} | ` +
      `${(100 * b.prefix_share).toFixed(1)}% | ${err[f].maxAbs.toExponential(2)} | ${err[f].maxRel.toExponential(2)} |`,
  );
}
if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ ...out, tokens }, null, 1));
for (const f of formats) captioners[f].dispose();
