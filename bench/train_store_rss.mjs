// Peak RSS of loading a large synthetic training store (clipcap extract layout: FILE.safetensors with
// clip_embedding [N, D] + FILE.captions.jsonl), the way `clipcap train` reads it (streamed captions, token ids
// kept in one array). Dev tool, run on the build: node bench/train_store_rss.mjs [rows] [dim] [dir]
// Prints one JSON line. The store is generated once in `dir` (default a temp dir) and reused.
import { existsSync, mkdirSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const rows = Number(process.argv[2] ?? 1_000_000);
const dim = Number(process.argv[3] ?? 512);
const dir = process.argv[4] ?? path.join(tmpdir(), `clipcap-store-${rows}x${dim}`);
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => pathToFileURL(path.join(root, 'dist', 'src', p)).href;

const file = path.join(dir, 'store.safetensors');
if (!existsSync(file)) {
  mkdirSync(dir, { recursive: true });
  // Header + data written in chunks (never the whole matrix in memory).
  const header = JSON.stringify({
    __metadata__: { format: 'clipcap-embeddings/1', model: 'synthetic' },
    clip_embedding: { dtype: 'F32', shape: [rows, dim], data_offsets: [0, rows * dim * 4] },
  });
  const h = Buffer.from(header.padEnd(Math.ceil(header.length / 8) * 8, ' '));
  const fd = openSync(file, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  writeSync(fd, len);
  writeSync(fd, h);
  const chunk = new Float32Array(4096 * dim);
  let s = 1;
  for (let r = 0; r < rows; r += 4096) {
    const n = Math.min(4096, rows - r);
    for (let i = 0; i < n * dim; i++) chunk[i] = ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
    writeSync(fd, Buffer.from(chunk.buffer, 0, n * dim * 4));
  }
  closeSync(fd);
  const words = [
    'a',
    'man',
    'dog',
    'riding',
    'on',
    'top',
    'of',
    'the',
    'red',
    'bus',
    'with',
    'two',
    'people',
    'near',
    'kitchen',
    'table',
  ];
  const sfd = openSync(path.join(dir, 'store.captions.jsonl'), 'w');
  let buf = '';
  for (let r = 0; r < rows; r++) {
    const n = 8 + (r % 7);
    const cap = Array.from({ length: n }, (_, i) => words[(r * 7 + i * 3) % words.length]).join(' ');
    buf += `${JSON.stringify({ image_id: r, caption: `${cap}.`, embedding: r })}\n`;
    if (buf.length > 1 << 20) {
      writeSync(sfd, buf);
      buf = '';
    }
  }
  writeSync(sfd, buf);
  closeSync(sfd);
}

const { Gpt2Tokenizer } = await import(dist('text/gpt2-tokenizer.js'));
const { readTrainingFiles, TrainingSetBuilder } = await import(dist('train/data.js'));
const before = process.resourceUsage().maxRSS / 1024;
const t0 = performance.now();
const b = new TrainingSetBuilder(await Gpt2Tokenizer.load());
await readTrainingFiles([file], b);
const set = b.build(file);
const seconds = (performance.now() - t0) / 1000;
const peak = process.resourceUsage().maxRSS / 1024;
console.log(
  JSON.stringify({
    rows,
    dim,
    captions: set.count,
    max_seq_len: set.maxSeqLen,
    features_on_disk_mb: ((rows * dim * 4) / 2 ** 20).toFixed(0),
    token_ids_mb: (
      (set.tokenIds.byteLength + set.tokenOffsets.byteLength + set.captionRow.byteLength) /
      2 ** 20
    ).toFixed(1),
    rss_before_mb: before.toFixed(0),
    peak_rss_mb: peak.toFixed(0),
    seconds: seconds.toFixed(1),
  }),
);
