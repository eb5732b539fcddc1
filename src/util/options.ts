/**
 * Option objects are checked for unknown keys at run time: a TypeScript caller sees a mistyped key as a type
 * error, a JavaScript caller would otherwise have it silently ignored (`{ maxTokens: 3 }` where the option is
 * named otherwise). Each API lists its keys once, as a `Record<keyof Options, true>`, so the compiler keeps the
 * list and the type in step.
 */

/** The keys of an options type, checked by the compiler to be exactly those of T. */
export function optionKeys<T extends object>(keys: Record<keyof T, true>): readonly string[] {
  return Object.keys(keys);
}

/** Levenshtein distance, for "did you mean". */
function distance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = d[j];
      d[j] = Math.min(
        d[j] + 1,
        d[j - 1] + 1,
        prev + (a[i - 1].toLowerCase() === b[j - 1].toLowerCase() ? 0 : 1),
      );
      prev = cur;
    }
  }
  return d[b.length];
}

/**
 * Throw a TypeError naming every unknown key of `options` (with the closest known key when one is near) and
 * the known ones. `what` names the call, e.g. "ClipCap.load options".
 */
export function checkOptionKeys(options: unknown, known: readonly string[], what: string): void {
  if (options === undefined || options === null) return;
  if (typeof options !== 'object' || Array.isArray(options))
    throw new TypeError(
      `${what} must be an object, got ${Array.isArray(options) ? 'an array' : typeof options}`,
    );
  const unknown = Object.keys(options).filter((k) => !known.includes(k));
  if (unknown.length === 0) return;
  const hints = unknown.map((k) => {
    const near = known
      .map((c) => ({ c, d: distance(k, c) }))
      .filter((x) => x.d <= Math.max(2, Math.floor(k.length / 3)))
      .sort((x, y) => x.d - y.d)[0];
    return near !== undefined ? `"${k}" (did you mean "${near.c}"?)` : `"${k}"`;
  });
  throw new TypeError(
    `${what}: unknown option${unknown.length > 1 ? 's' : ''} ${hints.join(', ')}; known: ${known.join(', ')}`,
  );
}
