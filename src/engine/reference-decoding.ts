/**
 * The reference kernels of the decoding ops (backend.ts "decoding"): plain loops, the oracle the native
 * kernels (native/decoding.cc) are compared with.
 */

/**
 * Per row of x (rows, V): s = x / t (rounded to float32 when t !== 1), lse = log Σ exp(s - max) + max in
 * float64, summed in index order; the k largest float32(s - lse), best first, the lower index first among
 * equal values, into values / indices (rows, k).
 */
export function logSoftmaxTopKRows(
  x: Float32Array,
  rows: number,
  V: number,
  k: number,
  t: number,
  values: Float32Array,
  indices: Int32Array,
): void {
  const s = new Float32Array(V);
  const topV = new Float64Array(k);
  const topI = new Int32Array(k);
  for (let r = 0; r < rows; r++) {
    const off = r * V;
    let max = -Infinity;
    for (let v = 0; v < V; v++) {
      s[v] = t === 1 ? x[off + v] : x[off + v] / t;
      if (s[v] > max) max = s[v];
    }
    let lse = max;
    if (max !== -Infinity && max === max) {
      let sum = 0;
      for (let v = 0; v < V; v++) sum += Math.exp(s[v] - max);
      lse = max + Math.log(sum);
    }
    // Insertion into a sorted list of k: a value enters only when strictly larger than the current k-th, so
    // an equal value with a higher index never displaces an earlier one. NaN never ranks; rows holding fewer
    // than k comparable values fill the rest with -Infinity at index 0.
    let n = 0;
    for (let v = 0; v < V; v++) {
      const lp = Math.fround(s[v] - lse);
      if (n === k && !(lp > topV[k - 1])) continue;
      if (n < k && !(lp >= -Infinity)) continue;
      let pos = n < k ? n++ : k - 1;
      while (pos > 0 && lp > topV[pos - 1]) {
        topV[pos] = topV[pos - 1];
        topI[pos] = topI[pos - 1];
        pos--;
      }
      topV[pos] = lp;
      topI[pos] = v;
    }
    for (let j = 0; j < k; j++) {
      values[r * k + j] = j < n ? topV[j] : -Infinity;
      indices[r * k + j] = j < n ? topI[j] : 0;
    }
  }
}
