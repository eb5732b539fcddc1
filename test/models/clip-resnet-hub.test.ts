/**
 * `--clip RN50x4` and the other clip.available_models() names: OpenAI's URL into ~/.cache/clip/<file> (the path
 * clip.load uses), against a local HTTP server that serves the tiny ResNet CLIP archive (with Range support and
 * a first response cut off halfway, to test resuming). No real weights are downloaded.
 */
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { getBackend } from '../../src/engine/index.js';
import { loadImageEncoder } from '../../src/pipeline/load.js';
import { OPENAI_CLIP_MODELS, openaiClipCacheDir, openaiClipFile } from '../../src/weights/openai-clip-hub.js';
import { fixture } from './helpers.js';

const ARCHIVE = fixture('clip_rn_tiny', 'clip_rn_tiny.pt');

let body: Buffer;
let sha: string;
let server: http.Server;
let endpoint: string;
let tmp: string;
/** Requests seen: path and Range header. */
const seen: { url: string; range: string | undefined }[] = [];
/** Cut the next full (non-Range) response after this many bytes. */
let cutNextAt: number | null = null;
/** Serve these bytes instead of the archive. */
let override: Buffer | null = null;

beforeAll(async () => {
  body = await fs.readFile(ARCHIVE);
  sha = createHash('sha256').update(body).digest('hex');
  server = http.createServer((req, res) => {
    seen.push({ url: req.url ?? '', range: req.headers.range });
    if (!/^\/clip\/models\/[0-9a-f]{64}\/[\w.@-]+\.pt$/.test(req.url ?? '')) {
      res.writeHead(404).end();
      return;
    }
    const data = override ?? body;
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (m) {
      const from = Number(m[1]);
      if (from >= data.length) {
        res.writeHead(416, { 'content-range': `bytes */${data.length}` }).end();
        return;
      }
      res.writeHead(206, {
        'content-length': data.length - from,
        'content-range': `bytes ${from}-${data.length - 1}/${data.length}`,
      });
      res.end(data.subarray(from));
      return;
    }
    res.writeHead(200, { 'content-length': data.length });
    if (cutNextAt !== null) {
      const at = cutNextAt;
      cutNextAt = null;
      res.write(data.subarray(0, at), () => res.destroy());
      return;
    }
    res.end(data);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

beforeEach(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'clipcap-openai-'));
  seen.length = 0;
  cutNextAt = null;
  override = null;
  return () => fs.rm(tmp, { recursive: true, force: true });
});

describe('OpenAI CLIP downloads into clip.load’s cache', () => {
  it('every clip.available_models() name maps to its URL file and the sha256 the URL carries', () => {
    expect(Object.keys(OPENAI_CLIP_MODELS)).toEqual([
      'RN50',
      'RN101',
      'RN50x4',
      'RN50x16',
      'RN50x64',
      'ViT-B/32',
      'ViT-B/16',
      'ViT-L/14',
      'ViT-L/14@336px',
    ]);
    for (const v of Object.values(OPENAI_CLIP_MODELS)) expect(v).toMatch(/^[0-9a-f]{64}\/[\w@-]+\.pt$/);
    expect(OPENAI_CLIP_MODELS['ViT-L/14@336px']).toMatch(/\/ViT-L-14-336px\.pt$/);
    expect(openaiClipCacheDir()).toBe(path.join(os.homedir(), '.cache', 'clip'));
  });

  it('an interrupted download fails naming the path, then resumes with a Range request and verifies', async () => {
    const models = { 'RN-tiny': `${sha}/clip_rn_tiny.pt` };
    const target = path.join(tmp, 'clip_rn_tiny.pt');
    cutNextAt = Math.floor(body.length / 2);
    await expect(openaiClipFile('RN-tiny', { endpoint, cacheDir: tmp, models })).rejects.toThrow(
      `run the command again to resume, or put the file at ${target}`,
    );
    expect(existsSync(target)).toBe(false);
    const partial = (await fs.stat(`${target}.incomplete`)).size;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(body.length);

    expect(await openaiClipFile('RN-tiny', { endpoint, cacheDir: tmp, models })).toBe(target);
    expect(seen.map((s) => s.url)).toEqual([
      `/clip/models/${sha}/clip_rn_tiny.pt`,
      `/clip/models/${sha}/clip_rn_tiny.pt`,
    ]);
    expect(seen[1].range).toBe(`bytes=${partial}-`);
    expect((await fs.readFile(target)).equals(body)).toBe(true);
    expect(existsSync(`${target}.incomplete`)).toBe(false);

    // cached and verified: no request at all, even with the server unreachable
    seen.length = 0;
    expect(await openaiClipFile('RN-tiny', { endpoint: 'http://127.0.0.1:9', cacheDir: tmp, models })).toBe(
      target,
    );
    expect(seen).toEqual([]);

    // and it loads as a ResNet image encoder at its resolution
    const enc = await loadImageEncoder(target, { backend: getBackend() });
    expect([enc.imageSize, enc.projectionDim]).toEqual([288, 24]);
    enc.dispose();
  });

  it('a complete .incomplete left by an earlier run is verified (HTTP 416) and moved into place', async () => {
    const models = { 'RN-tiny': `${sha}/clip_rn_tiny.pt` };
    const target = path.join(tmp, 'clip_rn_tiny.pt');
    await fs.writeFile(`${target}.incomplete`, body);
    expect(await openaiClipFile('RN-tiny', { endpoint, cacheDir: tmp, models })).toBe(target);
    expect((await fs.readFile(target)).equals(body)).toBe(true);
  });

  it('RN50x4 is fetched from its published path; content that does not match the URL’s sha256 is refused', async () => {
    const target = path.join(tmp, 'RN50x4.pt');
    // the tiny archive is served in place of RN50x4.pt: the sha256 in the URL cannot match
    await expect(openaiClipFile('RN50x4', { endpoint, cacheDir: tmp })).rejects.toThrow(
      /sha256 [0-9a-f]{64} does not match the 7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd its URL names/,
    );
    expect(seen[0].url).toBe(
      '/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt',
    );
    expect(existsSync(target)).toBe(false);
    expect(existsSync(`${target}.incomplete`)).toBe(false);
  });

  it('a cached file whose sha256 does not match is downloaded again', async () => {
    const models = { 'RN-tiny': `${sha}/clip_rn_tiny.pt` };
    const target = path.join(tmp, 'clip_rn_tiny.pt');
    await fs.writeFile(target, 'damaged');
    expect(await openaiClipFile('RN-tiny', { endpoint, cacheDir: tmp, models })).toBe(target);
    expect(seen.length).toBe(1);
    expect((await fs.readFile(target)).equals(body)).toBe(true);
  });

  it('offline without the file: the error names the URL and the exact path in ~/.cache/clip', async () => {
    const home = process.env.HOME;
    process.env.HOME = tmp;
    try {
      const expected = path.join(tmp, '.cache', 'clip', 'RN50x4.pt');
      await expect(loadImageEncoder('RN50x4', { offline: true })).rejects.toThrow(
        `OpenAI CLIP RN50x4 is not in the cache and offline mode is on; download https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt once online, or put the file at ${expected}`,
      );
      await expect(loadImageEncoder('ViT-L/14@336px', { offline: true })).rejects.toThrow(
        path.join(tmp, '.cache', 'clip', 'ViT-L-14-336px.pt'),
      );
    } finally {
      process.env.HOME = home;
    }
    expect(seen).toEqual([]);
  });

  it('an unreachable server: a clear error naming the path, nothing left in place', async () => {
    const models = { 'RN-tiny': `${sha}/clip_rn_tiny.pt` };
    await expect(
      openaiClipFile('RN-tiny', { endpoint: 'http://127.0.0.1:9', cacheDir: tmp, models }),
    ).rejects.toThrow(`or put the file at ${path.join(tmp, 'clip_rn_tiny.pt')}`);
    expect(existsSync(path.join(tmp, 'clip_rn_tiny.pt'))).toBe(false);
  });

  it('an unknown name lists the available ones', async () => {
    await expect(openaiClipFile('RN18')).rejects.toThrow(
      /unknown OpenAI CLIP model RN18; available: RN50, RN101/,
    );
  });
});
