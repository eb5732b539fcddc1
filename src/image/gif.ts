/**
 * Pillow opens a GIF's first frame as a palette image and `convert("RGB")` ignores transparency: a transparent
 * pixel gets the palette colour of the transparent index. libvips instead renders the frame onto a transparent
 * canvas, so those pixels come out as (0, 0, 0, alpha 0). To match Pillow we read which colour the transparent
 * index has from the GIF's own header and put it back where alpha is 0.
 */

/** The RGB colour of the first frame's transparent palette index, or undefined when it has none. */
export function gifTransparentColour(bytes: Uint8Array): [number, number, number] | undefined {
  const sig = String.fromCharCode(...bytes.subarray(0, 6));
  if (sig !== 'GIF87a' && sig !== 'GIF89a') return undefined;
  let p = 6;
  if (bytes.length < p + 7) return undefined;
  const screenFlags = bytes[p + 4];
  p += 7;
  let palette: Uint8Array | undefined;
  if (screenFlags & 0x80) {
    const size = 3 * (1 << ((screenFlags & 7) + 1));
    palette = bytes.subarray(p, p + size);
    p += size;
  }
  let transparentIndex: number | undefined;
  // Walk the blocks up to the first image descriptor: only the extension right before it applies to frame 0.
  while (p < bytes.length) {
    const introducer = bytes[p];
    if (introducer === 0x21) {
      const label = bytes[p + 1];
      p += 2;
      if (label === 0xf9 && bytes[p] >= 4) {
        // Graphic Control Extension: [size=4][flags][delay lo][delay hi][transparent index]
        transparentIndex = bytes[p + 1] & 1 ? bytes[p + 4] : undefined;
      }
      // Skip the data sub-blocks (length-prefixed, ending with a zero length).
      while (p < bytes.length && bytes[p] !== 0) p += bytes[p] + 1;
      p += 1;
    } else if (introducer === 0x2c) {
      if (p + 10 > bytes.length) return undefined;
      const imageFlags = bytes[p + 9];
      if (imageFlags & 0x80) {
        const size = 3 * (1 << ((imageFlags & 7) + 1));
        palette = bytes.subarray(p + 10, p + 10 + size);
      }
      if (transparentIndex === undefined || !palette || palette.length < 3 * (transparentIndex + 1))
        return undefined;
      const i = 3 * transparentIndex;
      return [palette[i], palette[i + 1], palette[i + 2]];
    } else {
      return undefined; // trailer or malformed: no frame
    }
  }
  return undefined;
}

/** rgba (pixels, 4) -> rgb (pixels, 3), with fully transparent pixels set to `colour`. */
export function fillTransparent(rgba: Uint8Array, pixels: number, colour: readonly number[]): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  for (let i = 0, p = 0, o = 0; i < pixels; i++, p += 4, o += 3) {
    const clear = rgba[p + 3] === 0;
    out[o] = clear ? colour[0] : rgba[p];
    out[o + 1] = clear ? colour[1] : rgba[p + 1];
    out[o + 2] = clear ? colour[2] : rgba[p + 2];
  }
  return out;
}
