import { fileURLToPath } from 'node:url';
import { loadSafetensors } from '../../src/weights/safetensors.js';

export const fixture = (rel: string): string => fileURLToPath(new URL(`../fixtures/${rel}`, import.meta.url));
export const local = (rel: string): string => fileURLToPath(new URL(`./fixtures/${rel}`, import.meta.url));

/** One tensor of a fixture safetensors file, with its data typed as the caller expects. */
export async function fixtureTensor<T extends Uint8Array | Float32Array>(
  path: string,
  name: string,
  type: new (...args: never[]) => T,
): Promise<{ shape: readonly number[]; data: T }> {
  const file = await loadSafetensors(path);
  try {
    const t = await file.tensor(name);
    if (!(t.data instanceof type)) throw new Error(`${path}: ${name} is ${t.dtype}, not ${type.name}`);
    return { shape: t.shape, data: t.data as T };
  } finally {
    await file.close();
  }
}

/** How two uint8 images differ: pixels (bytes) that differ and the largest difference. */
export function byteDiff(a: Uint8Array, b: Uint8Array): { count: number; max: number } {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let count = 0;
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d) count++;
    if (d > max) max = d;
  }
  return { count, max };
}
