import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach, vi } from 'vitest';
import { createHash } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cachedHubFile, hubCacheDir, hubFile, repoCacheDir } from '../../src/weights/hub.js';
import { UserError } from '../../src/util/errors.js';

const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
const COMMIT = '0123456789abcdef0123456789abcdef01234567';
const TOKEN = 'hf_test_token';

interface FakeFile {
  content: Buffer;
  /** LFS files are redirected to the CDN and announce their sha256 as X-Linked-Etag. */
  lfs: boolean;
  /** Announce this sha256 instead of the real one (checksum mismatch). */
  announcedSha?: string;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

const config = readFileSync(path.join(FIX, 'gpt2_tiny', 'config.json'));
const weights = readFileSync(path.join(FIX, 'clip_tiny', 'model.safetensors'));
const corrupt = Buffer.from('not what the hub announced');

const files = new Map<string, FakeFile>([
  ['org/model/config.json', { content: config, lfs: false }],
  ['org/model/model.safetensors', { content: weights, lfs: true }],
  ['org/model/sub/dir/extra.json', { content: Buffer.from('{"x": 1}'), lfs: false }],
  ['org/bad/model.safetensors', { content: corrupt, lfs: true, announcedSha: sha256(Buffer.from('other')) }],
  ['org/flaky/model.safetensors', { content: weights, lfs: true }],
]);

interface Seen {
  server: 'hub' | 'cdn';
  method: string;
  url: string;
  auth: string | undefined;
  range: string | undefined;
}
let seen: Seen[] = [];
/** CDN paths whose next GET stops after this many bytes (connection dropped). */
const dropAfter = new Map<string, number>();

let hub: http.Server;
let cdn: http.Server;
let hubUrl: string;
let cdnUrl: string;
let cache: string;

function listen(s: http.Server): Promise<string> {
  return new Promise((resolve) =>
    s.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(s.address() as AddressInfo).port}`)),
  );
}

beforeAll(async () => {
  hub = http.createServer((req, res) => {
    seen.push({
      server: 'hub',
      method: req.method ?? '',
      url: req.url ?? '',
      auth: req.headers.authorization,
      range: req.headers.range,
    });
    const m = /^\/([\w.-]+)\/([\w.-]+)\/resolve\/([^/]+)\/(.+)$/.exec(req.url ?? '');
    if (!m) return void res.writeHead(404).end();
    const [, org, name, rev, file] = m;
    if (org === 'old') {
      // A renamed repo: a relative redirect on the hub's own host.
      return void res.writeHead(307, { location: `/org/${name}/resolve/${rev}/${file}` }).end();
    }
    if (rev !== 'main' && rev !== COMMIT)
      return void res.writeHead(404, { 'x-error-code': 'RevisionNotFound' }).end();
    const f = files.get(`${org}/${name}/${decodeURIComponent(file)}`);
    if (!f) {
      const known = [...files.keys()].some((k) => k.startsWith(`${org}/${name}/`));
      return void res
        .writeHead(404, { 'x-error-code': known ? 'EntryNotFound' : 'RepositoryNotFound' })
        .end();
    }
    if (f.lfs) {
      const sha = f.announcedSha ?? sha256(f.content);
      return void res
        .writeHead(302, {
          location: `${cdnUrl}/blob/${org}-${name}`,
          'x-repo-commit': COMMIT,
          'x-linked-etag': `"${sha}"`,
          'x-linked-size': String(f.content.length),
          etag: '"pointer-file-etag"',
        })
        .end();
    }
    res.writeHead(200, {
      etag: `"${createHash('sha1').update(f.content).digest('hex')}"`,
      'x-repo-commit': COMMIT,
      'content-length': f.content.length,
    });
    res.end(req.method === 'HEAD' ? undefined : f.content);
  });
  cdn = http.createServer((req, res) => {
    seen.push({
      server: 'cdn',
      method: req.method ?? '',
      url: req.url ?? '',
      auth: req.headers.authorization,
      range: req.headers.range,
    });
    const key = (req.url ?? '').replace(/^\/blob\//, '').replace('-', '/');
    const f = files.get(`${key}/model.safetensors`);
    if (!f) return void res.writeHead(404).end();
    let body = f.content;
    const r = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (r) {
      const start = Number(r[1]);
      res.writeHead(206, {
        'content-range': `bytes ${start}-${body.length - 1}/${body.length}`,
        'content-length': body.length - start,
      });
      body = body.subarray(start);
    } else res.writeHead(200, { 'content-length': body.length });
    const drop = dropAfter.get(req.url ?? '');
    if (drop !== undefined) {
      dropAfter.delete(req.url ?? '');
      res.write(body.subarray(0, drop), () => setTimeout(() => res.socket?.destroy(), 50));
      return;
    }
    res.end(body);
  });
  hubUrl = await listen(hub);
  cdnUrl = await listen(cdn);
});

afterAll(async () => {
  await new Promise((r) => hub.close(r));
  await new Promise((r) => cdn.close(r));
});

beforeEach(async () => {
  seen = [];
  cache = await fs.mkdtemp(path.join(os.tmpdir(), 'clipcap-hub-'));
  vi.unstubAllEnvs();
  vi.stubEnv('HF_HUB_OFFLINE', '');
});

afterEach(async () => {
  vi.unstubAllEnvs();
  await fs.rm(cache, { recursive: true, force: true });
});

const opts = (repo: string, file: string) => ({
  repo,
  file,
  endpoint: hubUrl,
  cacheDir: cache,
  token: TOKEN,
});

async function failure(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(UserError);
    return (e as Error).message;
  }
  throw new Error('no error');
}

describe('hubFile', () => {
  it('downloads an LFS file through the CDN redirect into the huggingface_hub cache layout, then serves it from the cache', async () => {
    const p = await hubFile(opts('org/model', 'model.safetensors'));
    const repoDir = repoCacheDir('org/model', cache);
    expect(p).toBe(path.join(repoDir, 'snapshots', COMMIT, 'model.safetensors'));
    expect(await fs.readlink(p)).toBe(path.join('..', '..', 'blobs', sha256(weights)));
    expect((await fs.readFile(p)).equals(weights)).toBe(true);
    expect((await fs.readFile(path.join(repoDir, 'refs', 'main'), 'utf8')).trim()).toBe(COMMIT);
    // The token went to the hub, never to the CDN.
    expect(seen.filter((s) => s.server === 'hub').every((s) => s.auth === `Bearer ${TOKEN}`)).toBe(true);
    expect(seen.filter((s) => s.server === 'cdn').map((s) => s.auth)).toEqual([undefined]);
    const before = seen.length;
    expect(await hubFile(opts('org/model', 'model.safetensors'))).toBe(p);
    expect(seen.length).toBe(before); // no network
    expect(await cachedHubFile(opts('org/model', 'model.safetensors'))).toBe(p);
  });

  it('downloads a regular (non-LFS) file and a file in a subfolder; follows a same-host redirect', async () => {
    const p = await hubFile(opts('org/model', 'config.json'));
    expect((await fs.readFile(p)).equals(config)).toBe(true);
    const sub = await hubFile(opts('org/model', 'sub/dir/extra.json'));
    expect(sub).toBe(
      path.join(repoCacheDir('org/model', cache), 'snapshots', COMMIT, 'sub', 'dir', 'extra.json'),
    );
    expect(await fs.readFile(sub, 'utf8')).toBe('{"x": 1}');
    const renamed = await hubFile(opts('old/model', 'config.json'));
    expect((await fs.readFile(renamed)).equals(config)).toBe(true);
    expect(seen.some((s) => s.url.startsWith('/old/'))).toBe(true);
  });

  it('concurrent calls for one file share one download', async () => {
    const [a, b] = await Promise.all([
      hubFile(opts('org/model', 'model.safetensors')),
      hubFile(opts('org/model', 'model.safetensors')),
    ]);
    expect(a).toBe(b);
    expect(seen.filter((s) => s.server === 'cdn')).toHaveLength(1);
    expect((await fs.readFile(a)).equals(weights)).toBe(true);
  });

  it('404: names the repo and file', async () => {
    expect(await failure(hubFile(opts('org/model', 'missing.bin')))).toBe(
      `cannot download org/model/missing.bin from ${hubUrl}: no such repo or file`,
    );
    expect(await failure(hubFile(opts('org/nothing', 'config.json')))).toMatch(
      /org\/nothing\/config\.json.*no such repo/,
    );
    expect(await failure(hubFile({ ...opts('org/model', 'config.json'), revision: 'v9' }))).toMatch(
      /no revision v9/,
    );
  });

  it('resumes a download cut mid-file with a Range request', async () => {
    dropAfter.set('/blob/org-flaky', 1_000_000);
    const msg = await failure(hubFile(opts('org/flaky', 'model.safetensors')));
    const blob = path.join(repoCacheDir('org/flaky', cache), 'blobs', sha256(weights));
    const partial = (await fs.stat(`${blob}.incomplete`)).size;
    expect(msg).toMatch(
      new RegExp(
        `downloading org/flaky/model.safetensors failed \\(.*\\) after ${partial} bytes; run the command again to resume`,
      ),
    );
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(weights.length);
    await expect(fs.stat(path.join(repoCacheDir('org/flaky', cache), 'snapshots'))).rejects.toThrow(/ENOENT/);
    seen = [];
    const p = await hubFile(opts('org/flaky', 'model.safetensors'));
    expect(seen.find((s) => s.server === 'cdn')?.range).toBe(`bytes=${partial}-`);
    expect((await fs.readFile(p)).equals(weights)).toBe(true);
    await expect(fs.stat(`${blob}.incomplete`)).rejects.toThrow(/ENOENT/);
  });

  it('rejects a checksum mismatch and leaves nothing in the cache', async () => {
    expect(await failure(hubFile(opts('org/bad', 'model.safetensors')))).toMatch(
      /downloading org\/bad\/model\.safetensors: sha256 [0-9a-f]{64} does not match the hub's/,
    );
    const repoDir = repoCacheDir('org/bad', cache);
    await expect(fs.stat(path.join(repoDir, 'snapshots'))).rejects.toThrow(/ENOENT/);
    expect(await fs.readdir(path.join(repoDir, 'blobs'))).toEqual([]);
  });

  it('offline mode: cache hit without network, miss names the exact cache path', async () => {
    const p = await hubFile(opts('org/model', 'config.json'));
    seen = [];
    expect(await hubFile({ ...opts('org/model', 'config.json'), offline: true })).toBe(p);
    vi.stubEnv('HF_HUB_OFFLINE', '1');
    expect(await hubFile(opts('org/model', 'config.json'))).toBe(p);
    expect(await failure(hubFile(opts('org/model', 'model.safetensors')))).toBe(
      'offline mode is on and 1 file is not in the Hugging Face cache: download once online, or put it by hand: ' +
        `(1) org/model/model.safetensors at ${path.join(repoCacheDir('org/model', cache), 'snapshots', COMMIT, 'model.safetensors')}`,
    );
    // No commit known for the revision: the placeholder is explained (a 40-hex hash, also written into refs/main).
    expect(await failure(hubFile(opts('org/other', 'config.json')))).toMatch(
      /\(1\) org\/other\/config\.json at .*models--org--other\/snapshots\/<commit>\/config\.json \(<commit>: the repo's 40-hex commit hash \(from its page on the hub\), also written alone into refs\/main beside snapshots\/\)$/,
    );
    expect(seen).toEqual([]);
  });

  it('unreachable hub: names the cache path; bad repo ids and paths are refused before any request', async () => {
    const closed = http.createServer();
    const url = await listen(closed);
    await new Promise((r) => closed.close(r));
    expect(await failure(hubFile({ ...opts('org/model', 'config.json'), endpoint: url }))).toMatch(
      new RegExp(
        `^cannot reach ${url} to download org/model/config\\.json \\(.*\\); check the network, or put the file at .*models--org--model/snapshots/<commit>/config\\.json`,
      ),
    );
    expect(await failure(hubFile(opts('../etc', 'config.json')))).toMatch(/not a Hugging Face repo id/);
    expect(await failure(hubFile(opts('org/model', '../../x')))).toMatch(/not a valid file path/);
    expect(seen).toEqual([]);
  });

  it('cache root: HF_HUB_CACHE, then HF_HOME/hub, then ~/.cache/huggingface/hub', () => {
    expect(hubCacheDir({ HF_HUB_CACHE: '/a', HF_HOME: '/b' })).toBe('/a');
    expect(hubCacheDir({ HF_HOME: '/b' })).toBe(path.join('/b', 'hub'));
    expect(hubCacheDir({})).toBe(path.join(os.homedir(), '.cache', 'huggingface', 'hub'));
  });
});
