import { fileURLToPath } from 'node:url';
import { crc32, deflateSync } from 'node:zlib';
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

/** A PNG file: signature, IHDR (8-bit gray), one IDAT holding `idat`, IEND. */
export function pngChunks(width: number, height: number, idat: Uint8Array): Buffer {
  const chunk = (type: string, data: Uint8Array): Buffer => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // gray
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', idat),
    chunk('IEND', new Uint8Array(0)),
  ]);
}

/** A valid 8-bit gray PNG of mid-gray pixels: rows of (filter 0, pixels), deflated. */
export function grayPng(width: number, height: number): Buffer {
  const rows = Buffer.alloc((width + 1) * height, 128);
  for (let r = 0; r < height; r++) rows[r * (width + 1)] = 0;
  return pngChunks(width, height, deflateSync(rows, { level: 9 }));
}
