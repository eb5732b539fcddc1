/**
 * The real `clipcap serve` process (src/cli/main.ts through vite-node): it listens, captions, logs one line
 * per request on stderr, survives hostile requests (the `//` target that once killed it while others were in
 * flight, huge knobs, bad bodies, clients that vanish), and exits 0 after SIGTERM. A second server on the same
 * port is a one-line user error, before any model is loaded.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FIX = path.join(ROOT, 'test', 'fixtures');
const NAMES = (JSON.parse(readFileSync(path.join(FIX, 'goldens.json'), 'utf8')) as { images: string[] })
  .images;
const photo = (i: number): Buffer => readFileSync(path.join(FIX, 'images', NAMES[i]));

function serve(args: string[]): {
  child: ChildProcessWithoutNullStreams;
  err: () => string;
  exited: Promise<number | null>;
} {
  const child = spawn(
    path.join(ROOT, 'node_modules', '.bin', 'vite-node'),
    [
      'src/cli/main.ts',
      '--',
      'serve',
      '--clipcap',
      path.join(FIX, 'clipcap_mlp_tiny.pt'),
      '--clip',
      path.join(FIX, 'clip_tiny'),
      '--gpt2',
      path.join(FIX, 'gpt2_tiny'),
      '--offline',
      ...args,
    ],
    { cwd: ROOT, env: { ...process.env, HF_HUB_OFFLINE: '1' }, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, err: () => err, exited };
}

/** One raw request over a fresh socket; resolves with the status line's code (0: none before close). */
function rawStatus(port: number, text: string | Buffer, endAfterMs?: number): Promise<number> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let data = '';
    s.on('data', (d: Buffer) => (data += d.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0)));
    s.write(text);
    if (endAfterMs !== undefined) setTimeout(() => s.destroy(), endAfterMs);
  });
}

describe('clipcap serve (process)', () => {
  it('serves, survives hostile requests, logs each request and shuts down on SIGTERM', async () => {
    const { child, err, exited } = serve(['--port', '0', '--max-tokens', '5', '--decode', 'greedy']);
    try {
      const port = await new Promise<number>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no "listening" line:\n${err()}`)), 120_000);
        const look = (): void => {
          const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(err());
          if (m) {
            clearTimeout(t);
            resolve(Number(m[1]));
          }
        };
        child.stderr.on('data', look);
        child.on('exit', () => reject(new Error(`exited early:\n${err()}`)));
      });
      const base = `http://127.0.0.1:${port}`;
      const post = (q: string, body: Buffer | string, type = 'image/jpeg'): Promise<Response> =>
        fetch(base + q, { method: 'POST', body, headers: { 'content-type': type } });

      // The request that killed the old server, sent while others are in flight.
      const inFlight = Array.from({ length: 8 }, (_, i) => post('/caption', photo(i % 3)));
      const hostile = await Promise.all([
        rawStatus(port, 'GET // HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
        rawStatus(port, 'GET /%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
        rawStatus(port, 'POST /caption HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n'),
        rawStatus(port, 'GET / HTTP/1.1\r\nX: ' + 'y'.repeat(20_000) + '\r\n\r\n'),
        // A client that announces a body and vanishes.
        rawStatus(
          port,
          'POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 9999\r\n\r\nab',
          100,
        ),
      ]);
      expect(hostile).toEqual([404, 404, 400, 431, 0]);
      for (const r of await Promise.all(inFlight)) expect(r.status).toBe(200);

      const knobs = await post('/caption?decode=beam&beam_size=1000', photo(0));
      expect(knobs.status).toBe(400);
      expect(((await knobs.json()) as { error: string }).error).toMatch(
        /^beam_size must be an integer from 1 to 16/,
      );
      const tokens = await post('/caption?max_tokens=1000000000', photo(0));
      expect(tokens.status).toBe(400);
      const json = await post('/caption', '[['.repeat(100_000), 'application/json');
      expect(json.status).toBe(400);

      const res = await post('/caption', photo(0));
      expect(res.status).toBe(200);
      const j = (await res.json()) as { results: { index: number; tokens: number[] }[] };
      // --max-tokens 5 is the server's default for requests.
      expect(j.results[0].tokens.length).toBeLessThanOrEqual(5);
      expect(j.results[0].tokens.length).toBeGreaterThan(0);
      const page = await fetch(`${base}/`);
      expect(page.status).toBe(200);
      expect(await page.text()).toMatch(/<title>clipcap<\/title>/);
      const health = (await (await fetch(`${base}/health`)).json()) as { model: { description: string } };
      expect(health.model.description).toBe('clipcap_mlp_tiny.pt');

      // A second server on the same port: one line, exit 1, before loading a model.
      const second = serve(['--port', String(port)]);
      expect(await second.exited).toBe(1);
      expect(second.err().trim()).toMatch(
        new RegExp(
          `^clipcap: cannot listen on 127\\.0\\.0\\.1:${port}: the port is in use: choose another --port`,
        ),
      );
      expect(second.err().trim().split('\n')).toHaveLength(1);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    expect(err()).toMatch(/^POST \/caption 200 .* 1 input$/m);
    expect(err()).toMatch(/^GET \/\/ 404 /m);
    expect(err()).toMatch(/SIGTERM: finishing requests in flight/);
    expect(err()).not.toMatch(/internal error|TypeError|at .*\.ts:\d+/);
  }, 180_000);
});
