/**
 * The real `clipcap serve` process (src/cli/main.ts through vite-node): it listens, captions, logs one line
 * per request on stderr, and exits 0 after SIGTERM.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FIX = path.join(ROOT, 'test', 'fixtures');

describe('clipcap serve (process)', () => {
  it('serves, logs each request and shuts down on SIGTERM', async () => {
    const child = spawn(
      path.join(ROOT, 'node_modules', '.bin', 'vite-node'),
      [
        'src/cli/main.ts',
        '--',
        'serve',
        '--port',
        '0',
        '--clipcap',
        path.join(FIX, 'clipcap_mlp_tiny.pt'),
        '--clip',
        path.join(FIX, 'clip_tiny'),
        '--gpt2',
        path.join(FIX, 'gpt2_tiny'),
        '--offline',
        '--max-tokens',
        '5',
        '--decode',
        'greedy',
      ],
      { cwd: ROOT, env: { ...process.env, HF_HUB_OFFLINE: '1' }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let err = '';
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const port = await new Promise<number>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no "listening" line:\n${err}`)), 120_000);
        child.stderr.on('data', (d: Buffer) => {
          err += d.toString();
          const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(err);
          if (m) {
            clearTimeout(t);
            resolve(Number(m[1]));
          }
        });
        child.on('exit', () => reject(new Error(`exited early:\n${err}`)));
      });
      const name = (JSON.parse(readFileSync(path.join(FIX, 'goldens.json'), 'utf8')) as { images: string[] })
        .images[0];
      const res = await fetch(`http://127.0.0.1:${port}/caption`, {
        method: 'POST',
        body: readFileSync(path.join(FIX, 'images', name)),
        headers: { 'content-type': 'image/jpeg' },
      });
      expect(res.status).toBe(200);
      const j = (await res.json()) as { results: { index: number; tokens: number[] }[] };
      // --max-tokens 5 is the server's default for requests.
      expect(j.results[0].tokens.length).toBeLessThanOrEqual(5);
      expect(j.results[0].tokens.length).toBeGreaterThan(0);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    expect(err).toMatch(/^POST \/caption 200 .* 1 input$/m);
    expect(err).toMatch(/SIGTERM: finishing requests in flight/);
  });
});
