/**
 * A small, strict multipart/form-data parser (RFC 7578) for `POST /caption`. The body is already in memory
 * and bounded by the server's body limit; this bounds what is inside it (parts, header sizes, field sizes)
 * and rejects anything malformed with a one-line UserError instead of guessing.
 */
import { UserError } from '../util/errors.js';

export interface MultipartPart {
  /** The form field name (Content-Disposition name="..."). */
  name: string;
  /** The file name when the part is a file upload. */
  filename?: string;
  /** The part's Content-Type, lower-cased, without parameters (absent when not given). */
  contentType?: string;
  data: Uint8Array;
}

export interface MultipartLimits {
  /** Most parts in one body. */
  maxParts: number;
  /** Most bytes of one part's header block. */
  maxHeaderBytes: number;
}

export const DEFAULT_MULTIPART_LIMITS: Readonly<MultipartLimits> = Object.freeze({
  maxParts: 256,
  maxHeaderBytes: 8192,
});

/** The boundary parameter of a multipart/form-data Content-Type; a UserError when missing or invalid. */
export function multipartBoundary(contentType: string): string {
  const m = /;\s*boundary=(?:"([^"]+)"|([^\s;]+))/i.exec(contentType);
  const b = m ? (m[1] ?? m[2]) : undefined;
  // RFC 2046: 1 to 70 characters from a restricted set.
  if (b === undefined || !/^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$/.test(b) || b.endsWith(' '))
    throw new UserError('multipart/form-data needs a valid boundary parameter in Content-Type');
  return b;
}

/** Parameters of a header value such as `form-data; name="image"; filename="a.jpg"`. */
function headerParams(value: string): Map<string, string> {
  const out = new Map<string, string>();
  const re = /;\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))/g;
  for (let m = re.exec(value); m; m = re.exec(value)) {
    const v = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : (m[3] ?? '');
    out.set(m[1].toLowerCase(), v);
  }
  return out;
}

/** Split `body` into its parts; throws a UserError naming what is wrong with the body. */
export function parseMultipart(
  body: Uint8Array,
  boundary: string,
  limits: MultipartLimits = DEFAULT_MULTIPART_LIMITS,
): MultipartPart[] {
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const delim = Buffer.from(`--${boundary}`, 'latin1');
  const bad = (what: string): UserError => new UserError(`malformed multipart body: ${what}`);

  // The first delimiter may be preceded by a preamble (ignored); every later one follows a CRLF.
  let pos: number;
  if (buf.subarray(0, delim.length).equals(delim)) pos = delim.length;
  else {
    const at = buf.indexOf(Buffer.concat([Buffer.from('\r\n'), delim]));
    if (at < 0) throw bad('the boundary never appears');
    pos = at + 2 + delim.length;
  }
  const next = Buffer.concat([Buffer.from('\r\n'), delim]);
  const parts: MultipartPart[] = [];
  for (;;) {
    // After a delimiter: "--" closes the body; otherwise (optional transport padding) CRLF starts a part.
    if (buf[pos] === 0x2d && buf[pos + 1] === 0x2d) return parts; // the epilogue is ignored
    while (buf[pos] === 0x20 || buf[pos] === 0x09) pos++;
    if (buf[pos] !== 0x0d || buf[pos + 1] !== 0x0a) throw bad('expected CRLF after a boundary');
    pos += 2;
    if (parts.length >= limits.maxParts) throw bad(`more than ${limits.maxParts} parts`);

    const headEnd = buf.indexOf('\r\n\r\n', pos, 'latin1');
    // An empty header block is legal: the blank line directly follows the boundary line.
    const emptyHead = buf[pos] === 0x0d && buf[pos + 1] === 0x0a;
    const hEnd = emptyHead ? pos : headEnd;
    if (hEnd < 0) throw bad('a part has no end of headers');
    if (hEnd - pos > limits.maxHeaderBytes) throw bad(`part headers over ${limits.maxHeaderBytes} bytes`);
    const headers = new Map<string, string>();
    const headText = buf.subarray(pos, hEnd).toString('utf8');
    for (const line of headText === '' ? [] : headText.split('\r\n')) {
      const colon = line.indexOf(':');
      if (colon <= 0) throw bad(`bad part header line "${line.slice(0, 60)}"`);
      headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
    }
    const dataStart = emptyHead ? pos + 2 : hEnd + 4;
    const dataEnd = buf.indexOf(next, dataStart);
    if (dataEnd < 0) throw bad('a part is not closed by the boundary (truncated upload?)');

    const disposition = headers.get('content-disposition');
    if (disposition === undefined || !/^form-data\s*(;|$)/i.test(disposition))
      throw bad('every part needs Content-Disposition: form-data');
    const params = headerParams(disposition);
    const name = params.get('name');
    if (name === undefined) throw bad('a part has no field name');
    const type = headers.get('content-type')?.split(';')[0].trim().toLowerCase();
    parts.push({
      name,
      filename: params.get('filename'),
      contentType: type === '' ? undefined : type,
      data: new Uint8Array(buf.buffer, buf.byteOffset + dataStart, dataEnd - dataStart),
    });
    pos = dataEnd + next.length;
  }
}
