/**
 * A local stand-in for huggingface.co on 127.0.0.1: serves files under the hub's URL scheme
 * (`/{owner}/{name}/resolve/{revision}/{file}`) with the headers the hub sends (ETag, X-Repo-Commit,
 * X-Linked-Etag / X-Linked-Size, Content-Length, ranges), and logs every request.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface HubServer {
  endpoint: string;
  /** "METHOD /path" of every request so far. */
  requests: string[];
  close(): Promise<void>;
}

/** repos: repo id -> { file name in the repo -> local path }. */
export async function startHub(repos: Record<string, Record<string, string>>): Promise<HubServer> {
  const commit = 'c0ffee'.padEnd(40, '0');
  const requests: string[] = [];
  const cache = new Map<string, Buffer>();
  const server: Server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const m = /^\/(.+?)\/resolve\/([^/]+)\/(.+)$/.exec(decodeURIComponent(req.url ?? ''));
    const local = m ? repos[m[1]]?.[m[3]] : undefined;
    if (!m || !local) {
      res.writeHead(404, { 'content-type': 'application/json', 'x-error-code': 'EntryNotFound' });
      res.end(JSON.stringify({ error: 'Entry not found' }));
      return;
    }
    let body = cache.get(local);
    if (!body) {
      body = readFileSync(local);
      cache.set(local, body);
    }
    const sha = createHash('sha256').update(body).digest('hex');
    const headers: Record<string, string> = {
      etag: `"${sha}"`,
      'x-linked-etag': `"${sha}"`,
      'x-linked-size': String(body.length),
      'x-repo-commit': commit,
      'accept-ranges': 'bytes',
      'content-type': 'application/octet-stream',
    };
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    let status = 200;
    let part = body;
    if (range) {
      const start = Number(range[1]);
      const end = range[2] ? Number(range[2]) : body.length - 1;
      part = body.subarray(start, end + 1);
      status = 206;
      headers['content-range'] = `bytes ${start}-${end}/${body.length}`;
    }
    headers['content-length'] = String(part.length);
    res.writeHead(status, headers);
    res.end(req.method === 'HEAD' ? undefined : part);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
