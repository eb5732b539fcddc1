import { describe, expect, it } from 'vitest';
import { runDemo } from '../../src/cli/commands/demo.js';
import type { CliIO } from '../../src/cli/commands/caption.js';

export function bufferIO(): CliIO & { out: string; err: string } {
  const io = {
    out: '',
    err: '',
    progress: false,
    stdout: (s: string) => void (io.out += s),
    stderr: (s: string) => void (io.err += s),
  };
  return io;
}

describe('clipcap demo', () => {
  it('captions the bundled photos offline with the bundled tiny models and says the weights are random', async () => {
    const io = bufferIO();
    const failed = await runDemo({ decode: 'beam', format: 'text' }, io);
    console.log(io.out);
    expect(failed).toBe(0);
    const lines = io.out.trim().split('\n');
    expect(lines[0]).toMatch(/TINY RANDOM weights/);
    expect(lines.length).toBe(4);
    for (const l of lines.slice(1)) expect(l).toMatch(/assets\/demo\/images\/\S+\.jpg\t.+/);
  });
});
