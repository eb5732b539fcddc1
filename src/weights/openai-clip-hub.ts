/**
 * OpenAI's published CLIP files by the names `clip.available_models()` lists (`--clip RN50x4`), downloaded into
 * the cache `clip.load` itself uses, so Python and clipcap share one copy:
 *
 *   ~/.cache/clip/<basename of the URL>        e.g. ~/.cache/clip/RN50x4.pt, ~/.cache/clip/ViT-L-14-336px.pt
 *
 * Each URL carries the file's sha256 as its second-to-last path segment (clip/clip.py `_download` checks it);
 * a cached file is verified against it on every use, as clip.load does, and a mismatch downloads it again.
 * Downloads go to `<file>.incomplete`, resume from it with a Range request (hub.ts's downloader), are verified
 * and only then renamed into place. Offline (`offline` or HF_HUB_OFFLINE=1) or unreachable without the file:
 * a UserError naming the URL and the exact path to put it at.
 *
 * $CLIPCAP_OPENAI_CLIP_ENDPOINT replaces https://openaipublic.azureedge.net (a mirror; the tests' local server).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UserError } from '../util/errors.js';
import { download, HttpStatus, isOfflineEnv, sha256File } from './hub.js';

export const OPENAI_CLIP_ENDPOINT = 'https://openaipublic.azureedge.net';

/** clip.available_models() -> "<sha256>/<file>" under <endpoint>/clip/models/ (openai/CLIP clip/clip.py _MODELS). */
export const OPENAI_CLIP_MODELS: Readonly<Record<string, string>> = {
  RN50: 'afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt',
  RN101: '8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt',
  RN50x4: '7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt',
  RN50x16: '52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt',
  RN50x64: 'be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt',
  'ViT-B/32': '40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt',
  'ViT-B/16': '5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt',
  'ViT-L/14': 'b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt',
  'ViT-L/14@336px': '3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt',
};

export interface OpenAIClipFileOptions {
  /** Use only the cache (also HF_HUB_OFFLINE=1). */
  offline?: boolean;
  /** Default ~/.cache/clip (clip.load's download_root). */
  cacheDir?: string;
  /** Default $CLIPCAP_OPENAI_CLIP_ENDPOINT or https://openaipublic.azureedge.net. */
  endpoint?: string;
  /** The name table (tests add entries for fixture files). Default OPENAI_CLIP_MODELS. */
  models?: Readonly<Record<string, string>>;
  onProgress?: (done: number, total: number) => void;
  /** Idle network timeout in ms (default 60 s). */
  timeoutMs?: number;
}

/** clip.load's default download_root. */
export function openaiClipCacheDir(): string {
  return path.join(os.homedir(), '.cache', 'clip');
}

/** Whether `name` is one of the published model names (`RN50x4`, `ViT-B/32`, ...). */
export function isOpenAIClipName(
  name: string,
  models: Readonly<Record<string, string>> = OPENAI_CLIP_MODELS,
): boolean {
  return Object.prototype.hasOwnProperty.call(models, name);
}

/** Downloads in flight in this process, by target path. */
const inflight = new Map<string, Promise<void>>();

/**
 * The local path of OpenAI's CLIP file `name` (a `clip.available_models()` name), downloading and verifying
 * it into ~/.cache/clip when it is missing or does not match its sha256.
 */
export async function openaiClipFile(name: string, o: OpenAIClipFileOptions = {}): Promise<string> {
  const models = o.models ?? OPENAI_CLIP_MODELS;
  if (!isOpenAIClipName(name, models)) {
    throw new UserError(`unknown OpenAI CLIP model ${name}; available: ${Object.keys(models).join(', ')}`);
  }
  const [sha256, file] = models[name].split('/');
  const endpoint = (o.endpoint ?? process.env.CLIPCAP_OPENAI_CLIP_ENDPOINT ?? OPENAI_CLIP_ENDPOINT).replace(
    /\/+$/,
    '',
  );
  const url = new URL(`${endpoint}/clip/models/${sha256}/${file}`);
  const target = path.join(o.cacheDir ?? openaiClipCacheDir(), file);

  const stat = await fs.stat(target).catch(() => null);
  if (stat?.isFile()) {
    if ((await sha256File(target)) === sha256) return target;
    if (o.offline || isOfflineEnv()) {
      throw new UserError(
        `${target} does not match the sha256 of OpenAI's ${name} (${sha256}) and offline mode is on; download ${url.href} again into that path`,
      );
    }
    // as clip.load: "exists, but the SHA256 checksum does not match; re-downloading the file"
    process.stderr.write(`clipcap: ${target} does not match its sha256; downloading it again\n`);
  } else if (o.offline || isOfflineEnv()) {
    throw new UserError(
      `OpenAI CLIP ${name} is not in the cache and offline mode is on; download ${url.href} once online, or put the file at ${target}`,
    );
  }

  let job = inflight.get(target);
  if (!job) {
    job = fetchVerified(url, target, sha256, name, o).finally(() => inflight.delete(target));
    inflight.set(target, job);
  }
  await job;
  return target;
}

async function fetchVerified(
  url: URL,
  target: string,
  sha256: string,
  name: string,
  o: OpenAIClipFileOptions,
): Promise<void> {
  await fs.mkdir(path.dirname(target), { recursive: true });
  const incomplete = `${target}.incomplete`;
  try {
    // hub.ts's resumable GET (its repo/file only label the progress bar)
    await download(url, incomplete, undefined, url.host, undefined, {
      repo: 'openai/CLIP',
      file: path.basename(target),
      onProgress: o.onProgress,
      timeoutMs: o.timeoutMs,
    });
  } catch (e) {
    // 416: the partial file is already whole (an earlier run stopped before verifying it); verify it below
    const whole = e instanceof HttpStatus && e.status === 416;
    if (!whole) {
      const partial = (await fs.stat(incomplete).catch(() => null))?.size ?? 0;
      const why = e instanceof HttpStatus ? `HTTP ${e.status}` : e instanceof Error ? e.message : String(e);
      throw new UserError(
        `downloading OpenAI CLIP ${name} from ${url.href} failed (${why}) after ${partial} bytes; run the command again to resume, or put the file at ${target}`,
        { cause: e },
      );
    }
  }
  const got = await sha256File(incomplete);
  if (got !== sha256) {
    await fs.rm(incomplete, { force: true });
    throw new UserError(
      `downloading OpenAI CLIP ${name} from ${url.href}: sha256 ${got} does not match the ${sha256} its URL names; the download was corrupted, run the command again`,
    );
  }
  await fs.rename(incomplete, target);
}
