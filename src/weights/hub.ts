/**
 * A small Hugging Face hub client that shares Python's cache (huggingface_hub's layout), so files downloaded
 * by either are reused by the other:
 *
 *   <cache>/models--<org>--<name>/blobs/<etag>                 the file content (etag = LFS sha256 or git sha1)
 *   <cache>/models--<org>--<name>/snapshots/<commit>/<file>    symlink to ../../blobs/<etag> (a copy if
 *                                                              symlinks are not allowed)
 *   <cache>/models--<org>--<name>/refs/<revision>              the commit hash the revision points to
 *
 * <cache> is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. $HF_ENDPOINT replaces
 * https://huggingface.co, $HF_TOKEN is sent as a Bearer token (to the hub's host only: never to the CDN that
 * LFS downloads redirect to), and HF_HUB_OFFLINE=1 (or `offline`) uses the cache only.
 *
 * A file already in the cache for the revision is returned without any network access (a branch is not
 * re-checked for newer commits unless `refresh`). Downloads go to blobs/<etag>.incomplete, resume from
 * it with a Range request, are checked against the announced size and (for LFS files) sha256, and are
 * renamed into place only when complete.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import type { IncomingMessage } from 'node:http';
import cliProgress from 'cli-progress';
import { UserError } from '../util/errors.js';
import { checkOptionKeys, optionKeys } from '../util/options.js';

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

export type RepoType = 'model' | 'dataset' | 'space';

export interface HubFileOptions {
  /** "org/name" (or "name" for the few legacy repos without an org). */
  repo: string;
  /** Path of the file inside the repo ("config.json", "sub/dir/file.bin"). */
  file: string;
  /** Branch, tag or commit hash. Default "main". */
  revision?: string;
  repoType?: RepoType;
  /** Only use the cache (also HF_HUB_OFFLINE=1). */
  offline?: boolean;
  /** Default $HF_ENDPOINT or https://huggingface.co. */
  endpoint?: string;
  /** Default $HF_TOKEN. */
  token?: string;
  /** Default hubCacheDir(). */
  cacheDir?: string;
  /** Ask the hub even when the cache has the file (to follow a branch that moved). */
  refresh?: boolean;
  /** Download progress (bytes so far, total). Without it, large downloads draw a bar on a TTY stderr. */
  onProgress?: (done: number, total: number) => void;
  /** Idle network timeout in ms (default 60 s). */
  timeoutMs?: number;
}

const HUB_FILE_KEYS = optionKeys<HubFileOptions>({
  repo: true,
  file: true,
  revision: true,
  repoType: true,
  offline: true,
  endpoint: true,
  token: true,
  cacheDir: true,
  refresh: true,
  onProgress: true,
  timeoutMs: true,
});

/** The cache root, as huggingface_hub computes it. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HF_HOME) return path.join(env.HF_HOME, 'hub');
  return path.join(os.homedir(), '.cache', 'huggingface', 'hub');
}

/** HF_HUB_OFFLINE as huggingface_hub reads it (1, true, yes, on). */
export function isOfflineEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return ['1', 'true', 'yes', 'on'].includes((env.HF_HUB_OFFLINE ?? '').trim().toLowerCase());
}

const COMMIT = /^[0-9a-f]{40}$/;

function checkInputs(repo: string, file: string, revision: string): void {
  if (!/^[\w.-]+(\/[\w.-]+)?$/.test(repo) || repo.split('/').some((s) => s === '.' || s === '..')) {
    throw new UserError(`"${repo}" is not a Hugging Face repo id (expected org/name)`);
  }
  const parts = file.split('/');
  if (
    !file ||
    file.startsWith('/') ||
    file.includes('\\') ||
    parts.some((p) => p === '' || p === '.' || p === '..')
  ) {
    throw new UserError(`"${file}" is not a valid file path inside a repo`);
  }
  if (!revision || revision.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    throw new UserError(`"${revision}" is not a valid revision`);
  }
}

/** models--org--name (or datasets--, spaces--) under the cache root. */
export function repoCacheDir(repo: string, cacheDir = hubCacheDir(), repoType: RepoType = 'model'): string {
  return path.join(cacheDir, `${repoType}s--${repo.replace(/\//g, '--')}`);
}

/** The cached path of a file for a revision, or null (no network). */
export async function cachedHubFile(o: HubFileOptions): Promise<string | null> {
  const revision = o.revision ?? 'main';
  checkInputs(o.repo, o.file, revision);
  const repoDir = repoCacheDir(o.repo, o.cacheDir ?? hubCacheDir(), o.repoType);
  let commit: string | null = COMMIT.test(revision) ? revision : null;
  if (!commit) {
    const ref = await fs.readFile(path.join(repoDir, 'refs', revision), 'utf8').catch(() => null);
    commit = ref !== null && COMMIT.test(ref.trim()) ? ref.trim() : null;
  }
  if (!commit) return null;
  const p = path.join(repoDir, 'snapshots', commit, ...o.file.split('/'));
  // stat follows the symlink: a dangling link (blob deleted) counts as absent.
  return (await fs.stat(p).catch(() => null))?.isFile() ? p : null;
}

/** What stands for an unknown commit in a snapshot path, and what goes there. */
const COMMIT_HELP =
  "<commit>: the repo's 40-hex commit hash (from its page on the hub), also written alone into refs/main " +
  'beside snapshots/';

/** Where a user can put the file by hand: the snapshot path, with `<commit>` when the cache knows none. */
async function snapshotPath(
  o: HubFileOptions,
  revision: string,
): Promise<{ where: string; placeholder: boolean }> {
  const repoDir = repoCacheDir(o.repo, o.cacheDir ?? hubCacheDir(), o.repoType);
  let commit = COMMIT.test(revision) ? revision : null;
  if (!commit) {
    const ref = (await fs.readFile(path.join(repoDir, 'refs', revision), 'utf8').catch(() => null))?.trim();
    commit = ref !== undefined && COMMIT.test(ref) ? ref : null;
  }
  return {
    where: path.join(repoDir, 'snapshots', commit ?? '<commit>', ...o.file.split('/')),
    placeholder: !commit,
  };
}

/** snapshotPath with the placeholder explained. */
async function expectedPath(o: HubFileOptions, revision: string): Promise<string> {
  const p = await snapshotPath(o, revision);
  return p.placeholder ? `${p.where} (${COMMIT_HELP})` : p.where;
}

/**
 * Offline (the option or HF_HUB_OFFLINE): the files among `files` that the cache lacks, each with the exact
 * path to put it at (`placeholder`: the path holds `<commit>`). Empty when online or when all are cached.
 */
export async function missingOfflineFiles(
  files: readonly HubFileOptions[],
): Promise<Array<{ file: string; path: string; placeholder: boolean }>> {
  const out: Array<{ file: string; path: string; placeholder: boolean }> = [];
  for (const o of files) {
    if (!(o.offline || isOfflineEnv())) continue;
    const revision = o.revision ?? 'main';
    checkInputs(o.repo, o.file, revision);
    if ((await cachedHubFile(o)) !== null) continue;
    const what = `${o.repo}/${o.file}${revision === 'main' ? '' : ` (revision ${revision})`}`;
    const p = await snapshotPath(o, revision);
    out.push({ file: what, path: p.where, placeholder: p.placeholder });
  }
  return out;
}

/** One error naming every missing file and where each goes (see missingOfflineFiles). */
export function offlineMissingError(
  missing: ReadonlyArray<{ file: string; path: string; placeholder: boolean }>,
): UserError {
  const list = missing.map((m, i) => `(${i + 1}) ${m.file} at ${m.path}`).join('; ');
  const n = missing.length;
  return new UserError(
    `offline mode is on and ${n === 1 ? '1 file is' : `${n} files are`} not in the Hugging Face cache: ` +
      `download once online, or put ${n === 1 ? 'it' : 'each'} by hand: ${list}` +
      (missing.some((m) => m.placeholder) ? ` (${COMMIT_HELP})` : ''),
  );
}

interface Head {
  commit: string;
  etag: string;
  size: number | undefined;
  /** LFS files: the sha256 to verify. */
  sha256: string | undefined;
  /** Where to GET the content (the CDN for LFS files). */
  url: URL;
}

function request(
  url: URL,
  method: 'HEAD' | 'GET',
  headers: Record<string, string>,
  timeoutMs: number,
): Promise<IncomingMessage> {
  const lib = url.protocol === 'https:' ? https : url.protocol === 'http:' ? http : null;
  if (!lib) return Promise.reject(new Error(`unsupported URL ${url.href}`));
  return new Promise((resolve, reject) => {
    const req = lib.request(url, { method, headers: { 'user-agent': 'clipcap', ...headers } }, resolve);
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no response for ${timeoutMs / 1000} s`)));
    req.on('error', reject);
    req.end();
  });
}

function header(res: IncomingMessage, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function normalizeEtag(e: string): string {
  return e.replace(/^W\//, '').replace(/"/g, '');
}

/** HEAD the resolve URL, following same-host redirects (renamed repos) but not the CDN redirect. */
async function headFile(
  o: HubFileOptions,
  revision: string,
  endpoint: string,
  token: string | undefined,
): Promise<Head> {
  const prefix = o.repoType === 'dataset' ? 'datasets/' : o.repoType === 'space' ? 'spaces/' : '';
  const file = o.file.split('/').map(encodeURIComponent).join('/');
  let url = new URL(
    `${endpoint.replace(/\/+$/, '')}/${prefix}${o.repo}/resolve/${encodeURIComponent(revision)}/${file}`,
  );
  const timeout = o.timeoutMs ?? 60_000;
  for (let hop = 0; ; hop++) {
    const headers: Record<string, string> = { 'accept-encoding': 'identity' };
    if (token) headers.authorization = `Bearer ${token}`;
    const res = await request(url, 'HEAD', headers, timeout);
    res.resume();
    const status = res.statusCode ?? 0;
    const location = header(res, 'location');
    if (status >= 300 && status < 400 && location) {
      const next = new URL(location, url);
      if (next.host === url.host && hop < 10 && !header(res, 'x-repo-commit')) {
        url = next;
        continue;
      }
    }
    if (status === 404) throw new HttpStatus(404, header(res, 'x-error-code'));
    if (status === 401 || status === 403) throw new HttpStatus(status, header(res, 'x-error-code'));
    if (status >= 400) throw new HttpStatus(status, undefined);
    const commit = header(res, 'x-repo-commit');
    const etagRaw = header(res, 'x-linked-etag') ?? header(res, 'etag');
    if (!commit || !COMMIT.test(commit) || !etagRaw) {
      throw new UserError(
        `${url.origin} did not answer like the Hugging Face hub (no X-Repo-Commit / ETag headers); check HF_ENDPOINT`,
      );
    }
    const etag = normalizeEtag(etagRaw);
    if (!/^[\w.-]+$/.test(etag))
      throw new UserError(`${url.origin} sent an invalid ETag ${JSON.stringify(etagRaw)}`);
    const sizeRaw = header(res, 'x-linked-size') ?? header(res, 'content-length');
    const size = sizeRaw !== undefined && /^\d+$/.test(sizeRaw) ? Number(sizeRaw) : undefined;
    const linked = header(res, 'x-linked-etag');
    return {
      commit,
      etag,
      size,
      sha256: linked && /^[0-9a-f]{64}$/.test(normalizeEtag(linked)) ? normalizeEtag(linked) : undefined,
      url: status >= 300 && status < 400 && location ? new URL(location, url) : url,
    };
  }
}

/** An HTTP error status (also from openai-clip-hub.ts's downloads). */
export class HttpStatus extends Error {
  constructor(
    readonly status: number,
    readonly code: string | undefined,
  ) {
    super(`HTTP ${status}`);
  }
}

/**
 * GET `url` into `incomplete`, resuming from its current size. Authorization goes only to `authHost`.
 * Returns when the body has been fully written. (Also OpenAI's CLIP downloads, openai-clip-hub.ts.)
 */
export async function download(
  url: URL,
  incomplete: string,
  total: number | undefined,
  authHost: string,
  token: string | undefined,
  o: HubFileOptions,
): Promise<void> {
  const have = (await fs.stat(incomplete).catch(() => null))?.size ?? 0;
  const timeout = o.timeoutMs ?? 60_000;
  let res: IncomingMessage;
  let current = url;
  for (let hop = 0; ; hop++) {
    const headers: Record<string, string> = { 'accept-encoding': 'identity' };
    if (token && current.host === authHost) headers.authorization = `Bearer ${token}`;
    if (have > 0) headers.range = `bytes=${have}-`;
    res = await request(current, 'GET', headers, timeout);
    const location = header(res, 'location');
    const status = res.statusCode ?? 0;
    if (status >= 300 && status < 400 && location && hop < 10) {
      res.resume();
      current = new URL(location, current);
      continue;
    }
    break;
  }
  const status = res.statusCode ?? 0;
  let start: number;
  if (status === 206 && have > 0) {
    const m = /^bytes (\d+)-/.exec(header(res, 'content-range') ?? '');
    if (!m || Number(m[1]) !== have) {
      res.resume();
      throw new Error('the server resumed at the wrong offset');
    }
    start = have;
  } else if (status === 200) {
    start = 0; // no resume support: start over
  } else if (status === 416 && total !== undefined && have === total) {
    res.resume();
    return; // already complete
  } else {
    res.resume();
    throw new HttpStatus(status, undefined);
  }
  const fh = await fs.open(incomplete, start === 0 ? 'w' : 'a');
  const showBar = !o.onProgress && total !== undefined && total > 10 * 2 ** 20 && process.stderr.isTTY;
  const bar = showBar
    ? new cliProgress.SingleBar({
        stream: process.stderr,
        format: `${o.repo}/${o.file} [{bar}] {percentage}% | {value}/{total} MB | ETA {eta_formatted}`,
        formatValue: (v, _opt, type) =>
          type === 'value' || type === 'total' ? (v / 2 ** 20).toFixed(1) : String(v),
        hideCursor: true,
      })
    : undefined;
  let done = start;
  bar?.start(total as number, done);
  try {
    // Sequential writes: every byte received before a failure is on disk, ready to resume from.
    res.setTimeout(timeout, () => res.destroy(new Error(`stalled for ${timeout / 1000} s`)));
    for await (const chunk of res as AsyncIterable<Buffer>) {
      await fh.write(chunk);
      done += chunk.length;
      o.onProgress?.(done, total ?? done);
      bar?.update(done);
    }
    if (!res.complete) throw new Error('connection closed before the end of the file');
    await fh.sync();
  } finally {
    bar?.stop();
    await fh.close();
  }
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Point snapshots/<commit>/<file> at the blob: a relative symlink, or a copy where links are not allowed. */
async function linkSnapshot(blob: string, pointer: string): Promise<void> {
  await fs.mkdir(path.dirname(pointer), { recursive: true });
  await fs.rm(pointer, { force: true });
  try {
    await fs.symlink(path.relative(path.dirname(pointer), blob), pointer);
  } catch {
    await fs.copyFile(blob, pointer);
  }
}

async function writeRef(repoDir: string, revision: string, commit: string): Promise<void> {
  if (revision === commit) return;
  const ref = path.join(repoDir, 'refs', ...revision.split('/'));
  await fs.mkdir(path.dirname(ref), { recursive: true });
  const cur = await fs.readFile(ref, 'utf8').catch(() => null);
  if (cur?.trim() !== commit) await fs.writeFile(ref, commit);
}

/** Downloads in flight in this process, by blob path: concurrent calls for one file share one download. */
const inflight = new Map<string, Promise<void>>();

/** Download, verify and move the blob into place (see hubFile). */
async function fetchBlob(
  head: Head,
  blob: string,
  pointer: string,
  what: string,
  endpoint: string,
  token: string | undefined,
  o: HubFileOptions,
): Promise<void> {
  await fs.mkdir(path.dirname(blob), { recursive: true });
  const incomplete = `${blob}.incomplete`;
  try {
    await download(head.url, incomplete, head.size, new URL(endpoint).host, token, o);
  } catch (e) {
    const partial = (await fs.stat(incomplete).catch(() => null))?.size ?? 0;
    const why = e instanceof HttpStatus ? `HTTP ${e.status}` : (e as Error).message;
    throw new UserError(
      `downloading ${what} failed (${why}) after ${partial} bytes; run the command again to resume, or put the file at ${pointer}`,
      { cause: e },
    );
  }
  const size = (await fs.stat(incomplete)).size;
  if (head.size !== undefined && size !== head.size) {
    await fs.rm(incomplete, { force: true });
    throw new UserError(
      `downloading ${what}: got ${size} bytes, expected ${head.size}; run the command again`,
    );
  }
  if (head.sha256 !== undefined) {
    const got = await sha256File(incomplete);
    if (got !== head.sha256) {
      await fs.rm(incomplete, { force: true });
      throw new UserError(
        `downloading ${what}: sha256 ${got} does not match the hub's ${head.sha256}; the download was corrupted, run the command again`,
      );
    }
  }
  await fs.rename(incomplete, blob);
}

/**
 * The local path of `file` from hub repo `repo` at `revision`, downloading it into the cache if needed.
 * Offline or unreachable without a cached copy: a UserError that names the repo, the file and the exact
 * cache path where it can be put by hand.
 */
export async function hubFile(o: HubFileOptions): Promise<string> {
  checkOptionKeys(o, HUB_FILE_KEYS, 'hubFile options');
  const revision = o.revision ?? 'main';
  checkInputs(o.repo, o.file, revision);
  const what = `${o.repo}/${o.file}${revision === 'main' ? '' : ` (revision ${revision})`}`;
  const cached = await cachedHubFile(o);
  if (cached && !o.refresh) return cached;
  if (o.offline || isOfflineEnv()) {
    if (cached) return cached;
    const p = await snapshotPath(o, revision);
    throw offlineMissingError([{ file: what, path: p.where, placeholder: p.placeholder }]);
  }
  const endpoint = o.endpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_ENDPOINT;
  const token = o.token ?? process.env.HF_TOKEN ?? undefined;
  const repoDir = repoCacheDir(o.repo, o.cacheDir ?? hubCacheDir(), o.repoType);

  let head: Head;
  try {
    head = await headFile(o, revision, endpoint, token || undefined);
  } catch (e) {
    if (e instanceof UserError) throw e;
    if (e instanceof HttpStatus) {
      const reason =
        e.status === 404
          ? e.code === 'RepositoryNotFound'
            ? 'no such repo (or it is private: set HF_TOKEN)'
            : e.code === 'RevisionNotFound'
              ? `no revision ${revision}`
              : 'no such repo or file'
          : e.status === 401 || e.status === 403
            ? 'access denied (a gated or private repo: accept its terms on the hub and set HF_TOKEN)'
            : `the hub answered HTTP ${e.status}`;
      throw new UserError(`cannot download ${what} from ${endpoint}: ${reason}`);
    }
    if (cached) return cached; // unreachable hub: fall back to the cache, as huggingface_hub does
    throw new UserError(
      `cannot reach ${endpoint} to download ${what} (${(e as Error).message}); check the network, or put the file at ${await expectedPath(o, revision)}`,
      { cause: e },
    );
  }

  const pointer = path.join(repoDir, 'snapshots', head.commit, ...o.file.split('/'));
  const blob = path.join(repoDir, 'blobs', head.etag);
  if (!(await fs.stat(blob).catch(() => null))?.isFile()) {
    let job = inflight.get(blob);
    if (!job) {
      job = fetchBlob(head, blob, pointer, what, endpoint, token || undefined, o).finally(() =>
        inflight.delete(blob),
      );
      inflight.set(blob, job);
    }
    await job;
  }
  await linkSnapshot(blob, pointer);
  await writeRef(repoDir, revision, head.commit);
  return pointer;
}
