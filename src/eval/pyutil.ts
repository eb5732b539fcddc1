/**
 * The few Python / NumPy behaviours that pycocoevalcap's scores depend on, reproduced exactly so that
 * already-tokenized strings score the same here as there (to ~1e-15).
 */

/**
 * Python's `str.isspace()` set, which `str.split()` (no argument) splits on. It differs from JS `\s`:
 * Python includes U+001C..U+001F and U+0085, and excludes U+FEFF.
 */
const PY_WHITESPACE = new Set<number>([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002,
  0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);

export function isPyWhitespace(code: number): boolean {
  return PY_WHITESPACE.has(code);
}

/** Python `s.split()`: split on runs of whitespace, no empty strings. */
export function pySplit(s: string): string[] {
  const out: string[] = [];
  let start = -1;
  for (let i = 0; i < s.length; i++) {
    const ws = PY_WHITESPACE.has(s.charCodeAt(i));
    if (ws) {
      if (start >= 0) {
        out.push(s.slice(start, i));
        start = -1;
      }
    } else if (start < 0) {
      start = i;
    }
  }
  if (start >= 0) out.push(s.slice(start));
  return out;
}

/** Python `s.split(" ")`: split on every single space; `""` gives `[""]`. (JS `split(' ')` is identical.) */
export function pySplitSpace(s: string): string[] {
  return s.split(' ');
}

/** Python `s.rstrip()` (no argument): remove trailing Python whitespace. */
export function pyRstrip(s: string): string {
  let end = s.length;
  while (end > 0 && PY_WHITESPACE.has(s.charCodeAt(end - 1))) end--;
  return s.slice(0, end);
}

/**
 * NumPy's pairwise summation of a float64 array (`np.add.reduce`, used by `np.mean` and `np.sum` on a
 * contiguous 1-D array): blocks of < 8 are summed left to right, blocks up to 128 with 8 interleaved
 * accumulators, longer ones split in halves (rounded down to a multiple of 8).
 */
export function pairwiseSum(a: ArrayLike<number>, start = 0, n = a.length - start): number {
  if (n < 8) {
    let res = 0;
    for (let i = 0; i < n; i++) res += a[start + i];
    return res;
  }
  if (n <= 128) {
    const r = [0, 0, 0, 0, 0, 0, 0, 0];
    for (let j = 0; j < 8; j++) r[j] = a[start + j];
    let i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (let j = 0; j < 8; j++) r[j] += a[start + i + j];
    }
    let res = r[0] + r[1] + (r[2] + r[3]) + (r[4] + r[5] + (r[6] + r[7]));
    for (; i < n; i++) res += a[start + i];
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return pairwiseSum(a, start, n2) + pairwiseSum(a, start + n2, n - n2);
}

/** `np.mean(np.array(values))` for float64 values (NaN for an empty array, as NumPy). */
export function npMean(values: ArrayLike<number>): number {
  if (values.length === 0) return NaN;
  return pairwiseSum(values) / values.length;
}
