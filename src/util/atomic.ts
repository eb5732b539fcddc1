import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

/** A temp path beside `target`, so the final rename stays on one file system. */
export function tempPathFor(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
}

/**
 * Write a file so that readers see either the old file or the complete new one, never a partial one:
 * write to a temp file beside it, fsync, rename. The temp file is removed on failure.
 */
export async function writeFileAtomic(target: string, data: Uint8Array | string): Promise<void> {
  const tmp = tempPathFor(target);
  try {
    const fh = await fs.open(tmp, 'w');
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, target);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

/**
 * Run `write(tmpPath)` and rename the result onto `target` only when it succeeds; for writers that stream
 * into a path themselves.
 */
export async function withAtomicPath<T>(target: string, write: (tmp: string) => Promise<T>): Promise<T> {
  const tmp = tempPathFor(target);
  try {
    const r = await write(tmp);
    await fs.rename(tmp, target);
    return r;
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

/**
 * Rename the finished directory `stage` onto `final`. When `final` exists it is first renamed aside and removed
 * after, so there is never a moment where `final` is half there (readers see the old directory or the new one).
 */
export async function moveDirIntoPlace(stage: string, final: string, finalExists: boolean): Promise<void> {
  if (!finalExists) {
    await fs.rename(stage, final);
    return;
  }
  const old = `${stage}.old`;
  await fs.rename(final, old);
  await fs.rename(stage, final);
  await fs.rm(old, { recursive: true, force: true });
}
