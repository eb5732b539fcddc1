/**
 * `clipcap merge`: the shards of a sharded extraction (`extract --shard i/N`) into one feature file and one
 * captions sidecar, rows in shard order. (`train --data` also takes the shards directly.)
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UserError } from '../util/errors.js';
import { captionsSidecarPath, readEmbeddings } from '../data/embeddings.js';
import { writeCaptionsSidecar, writeEmbeddings, type CaptionRecord } from './extract.js';

export interface MergeResult {
  rows: number;
  dim: number;
  captions: number;
  files: string[];
}

/**
 * Concatenate feature files. When every file says it is a shard (metadata `shard` i/N), they are put in shard
 * order and every shard of N must be there; otherwise the given order is kept.
 */
export async function mergeFeatures(files: readonly string[], out: string): Promise<MergeResult> {
  if (files.length === 0) throw new UserError('merge: no feature files given');
  const parts = [];
  for (const f of files) parts.push({ file: f, e: await readEmbeddings(f) });
  const shards = parts.map((p) => /^(\d+)\/(\d+)$/.exec(p.e.metadata.shard ?? ''));
  if (shards.every((m) => m !== null)) {
    const n = Number((shards[0] as RegExpExecArray)[2]);
    const idx = shards.map((m) => Number((m as RegExpExecArray)[1]));
    if (shards.some((m) => Number((m as RegExpExecArray)[2]) !== n))
      throw new UserError('merge: the files come from shardings with different N; merge one sharding');
    const missing = [...Array(n).keys()].filter((i) => !idx.includes(i));
    if (missing.length > 0)
      throw new UserError(
        `merge: shard ${missing.map((i) => `${i}/${n}`).join(', ')} missing; extract it first`,
      );
    if (idx.length !== n) throw new UserError('merge: a shard is given twice');
    parts.sort((a, b) => Number(a.e.metadata.shard.split('/')[0]) - Number(b.e.metadata.shard.split('/')[0]));
  }
  const dim = parts[0].e.dim;
  const model = parts[0].e.metadata.model;
  for (const p of parts) {
    if (p.e.dim !== dim)
      throw new UserError(`merge: ${p.file} holds ${p.e.dim}-d rows, ${parts[0].file} ${dim}-d`);
    if (p.e.metadata.model !== model)
      throw new UserError(
        `merge: ${p.file} was extracted with ${p.e.metadata.model ?? 'an unknown model'}, ${parts[0].file} with ${model ?? 'an unknown model'}`,
      );
  }
  const rows = parts.reduce((n, p) => n + p.e.rows, 0);
  const data = new Float32Array(rows * dim);
  const inputs: string[] = [];
  const records: Array<CaptionRecord & { embedding: number }> = [];
  const withSidecar = await Promise.all(
    parts.map((p) =>
      fs.stat(captionsSidecarPath(p.file)).then(
        () => true,
        () => false,
      ),
    ),
  );
  if (withSidecar.some((x) => x) && !withSidecar.every((x) => x))
    throw new UserError(
      `merge: ${parts[withSidecar.indexOf(false)].file} has no captions sidecar but others do; extract every shard with --captions`,
    );
  let at = 0;
  for (const p of parts) {
    data.set(p.e.data, at * dim);
    try {
      inputs.push(...(JSON.parse(p.e.metadata.inputs ?? '[]') as string[]));
    } catch {
      throw new UserError(`merge: ${p.file}: its "inputs" metadata is not a JSON list`);
    }
    if (withSidecar[0]) {
      const side = captionsSidecarPath(p.file);
      const text = await fs.readFile(side, 'utf8');
      text.split('\n').forEach((l, i) => {
        if (l.trim() === '') return;
        const r = JSON.parse(l) as CaptionRecord & { embedding: number };
        if (!Number.isInteger(r.embedding) || r.embedding < 0 || r.embedding >= p.e.rows)
          throw new UserError(`${side}: line ${i + 1} "embedding" is not a row of ${path.basename(p.file)}`);
        records.push({ ...r, embedding: r.embedding + at });
      });
    }
    at += p.e.rows;
  }
  await writeEmbeddings(out, data, dim, { model: model ?? 'unknown', inputs });
  if (withSidecar[0]) await writeCaptionsSidecar(out, records);
  return { rows, dim, captions: records.length, files: parts.map((p) => p.file) };
}
