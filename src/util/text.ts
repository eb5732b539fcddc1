/**
 * Untrusted text inside one-line error messages. Names read from a file (pickle globals, storage keys, tensor
 * names, zip entries) and messages of libraries that quote them can hold anything: an ESC sequence would reach
 * the terminal, a newline would break "one line per error", a 1 MB name would make a 1 MB message. These helpers
 * escape control characters (C0, DEL, C1), line/paragraph separators and bidirectional overrides as `\xNN` /
 * `\uNNNN`, and cut long text with its length.
 */

/** Characters that must not reach a terminal or a log line raw. */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/g;

function escapeChar(c: string): string {
  const code = c.charCodeAt(0);
  return code < 0x100
    ? `\\x${code.toString(16).padStart(2, '0')}`
    : `\\u${code.toString(16).padStart(4, '0')}`;
}

/** At most `max` characters of `s` (then "..." and the full length), with unsafe characters escaped. */
export function safeText(s: string, max = 120): string {
  let t = s;
  let cut = '';
  if (t.length > max) {
    t = t.slice(0, max);
    // Do not end on half a surrogate pair.
    if (/[\ud800-\udbff]$/.test(t)) t = t.slice(0, -1);
    cut = `... (${s.length} characters)`;
  }
  return t.replace(UNSAFE, escapeChar) + cut;
}

/** `s` in double quotes, with quotes, backslashes and unsafe characters escaped, cut at `max` characters. */
export function quoted(s: string, max = 120): string {
  return `"${safeText(
    s.replace(/[\\"]/g, (c) => `\\${c}`),
    max,
  )}"`;
}

/** A shape or index tuple for a message: `[2, 3]`, long ones cut as `[1, 1, 1, 1, 1, 1, 1, 1, ... (70 dims)]`. */
export function shapeText(dims: readonly unknown[], max = 8): string {
  const shown = dims
    .slice(0, max)
    .map((d) => (typeof d === 'string' ? quoted(d, 20) : safeText(String(d), 24)));
  return `[${shown.join(', ')}${dims.length > max ? `, ... (${dims.length} dims)` : ''}]`;
}

/** One line of at most `max` characters: newlines become spaces, unsafe characters are escaped. */
export function oneLine(s: string, max = 2000): string {
  return safeText(s.replace(/\s*[\r\n]+\s*/g, ' '), max);
}
