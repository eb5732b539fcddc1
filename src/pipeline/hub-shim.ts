/**
 * TEMPORARY stand-in for the weights layer's hub client (src/weights, not landed yet): the Hugging Face
 * cache layout (models--org--name/{blobs,snapshots,refs}) with a plain download. Replaced by the real
 * client (resume, checksums, progress) as soon as it lands.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UserError } from '../util/errors.js';

export interface HubFileRequest {
  repo: string;
  file: string;
  revision?: string;
  offline?: boolean;
}

export function hubCacheDir(): string {
  if (process.env.HF_HUB_CACHE) return process.env.HF_HUB_CACHE;
  if (process.env.HF_HOME) return path.join(process.env.HF_HOME, 'hub');
  return path.join(os.homedir(), '.cache', 'huggingface', 'hub');
}

export async function hubFile(r: HubFileRequest): Promise<string> {
  const revision = r.revision ?? 'main';
  const repoDir = path.join(hubCacheDir(), `models--${r.repo.replace(/\//g, '--')}`);
  const ref = await fs.readFile(path.join(repoDir, 'refs', revision), 'utf8').catch(() => null);
  const commit = ref?.trim() ?? (/^[0-9a-f]{40}$/.test(revision) ? revision : null);
  if (commit) {
    const p = path.join(repoDir, 'snapshots', commit, r.file);
    if (await fs.stat(p).catch(() => null)) return p;
  }
  const offline =
    r.offline || ['1', 'true', 'yes', 'on'].includes((process.env.HF_HUB_OFFLINE ?? '').toLowerCase());
  const where = path.join(repoDir, 'snapshots', commit ?? '<commit>', r.file);
  if (offline)
    throw new UserError(
      `${r.repo}/${r.file} is not in the Hugging Face cache and offline mode is on; download it once online or put it at ${where}`,
    );
  const endpoint = (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/$/, '');
  const url = `${endpoint}/${r.repo}/resolve/${encodeURIComponent(revision)}/${r.file}`;
  let res: Response;
  try {
    res = await fetch(url, {
      headers: process.env.HF_TOKEN ? { authorization: `Bearer ${process.env.HF_TOKEN}` } : {},
    });
  } catch (e) {
    throw new UserError(
      `cannot download ${r.repo}/${r.file} from ${endpoint} (${(e as Error & { cause?: Error }).cause?.message ?? (e as Error).message}); check the network, or put the file at ${where}`,
    );
  }
  if (!res.ok)
    throw new UserError(
      `cannot download ${r.repo}/${r.file}: HTTP ${res.status}${res.status === 404 ? ' (no such repo or file)' : ''}`,
    );
  const data = new Uint8Array(await res.arrayBuffer());
  const sha = res.headers.get('x-repo-commit') ?? commit ?? revision;
  const etag = (res.headers.get('x-linked-etag') ?? res.headers.get('etag') ?? `${sha}-${r.file}`)
    .replace(/^W\//, '')
    .replace(/"/g, '');
  const blob = path.join(repoDir, 'blobs', etag);
  await fs.mkdir(path.dirname(blob), { recursive: true });
  const tmp = `${blob}.incomplete`;
  await fs.writeFile(tmp, data);
  await fs.rename(tmp, blob);
  const snap = path.join(repoDir, 'snapshots', sha, r.file);
  await fs.mkdir(path.dirname(snap), { recursive: true });
  await fs.rm(snap, { force: true });
  await fs.symlink(path.relative(path.dirname(snap), blob), snap).catch(() => fs.copyFile(blob, snap));
  await fs.mkdir(path.join(repoDir, 'refs'), { recursive: true });
  if (!/^[0-9a-f]{40}$/.test(revision)) await fs.writeFile(path.join(repoDir, 'refs', revision), sha);
  return snap;
}
