/**
 * `clipcap serve`'s flags, in-process: defaults that exceed their limits and conflicting flags are usage
 * errors naming the flags, a port in use is a one-line user error before any model is loaded, and the help
 * shows --batch-size (its old name --max-batch still parses, hidden).
 */
import { Command } from 'commander';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { register } from '../../src/cli/commands/serve.js';
import { UsageError, UserError } from '../../src/util/errors.js';

function program(): { cmd: Command; out: () => string } {
  let out = '';
  const cmd = new Command()
    .name('clipcap')
    .exitOverride()
    .configureOutput({ writeOut: (s) => void (out += s), writeErr: (s) => void (out += s) });
  register(cmd);
  return { cmd, out: () => out };
}

const run = (args: string[]): Promise<unknown> =>
  program().cmd.parseAsync(['serve', ...args], { from: 'user' });

describe('clipcap serve flags', () => {
  it('refuses defaults over their limits and conflicting flags, naming the flags', async () => {
    await expect(run(['--beam-size', '50'])).rejects.toThrow(
      new UsageError(
        '--beam-size 50 is over --limit-beam-size 16: raise --limit-beam-size or lower --beam-size',
      ),
    );
    await expect(run(['--max-tokens', '500'])).rejects.toThrow(
      /--max-tokens 500 is over --limit-max-tokens 128/,
    );
    await expect(run(['--batch-size', '2', '--max-batch', '3'])).rejects.toThrow(/--batch-size only/);
    await expect(run(['--limit-beam-size', '200', '--beam-size', '5'])).rejects.toThrow(
      /--batch-rows must be/,
    );
    await expect(run(['--max-body-mb', '200'])).rejects.toThrow(
      /--body-budget-mb must be at least --max-body-mb/,
    );
  });

  it('a port in use is a one-line error before the model loads', async () => {
    const blocker = net.createServer();
    const port = await new Promise<number>((resolve) =>
      blocker.listen(0, '127.0.0.1', () => resolve((blocker.address() as net.AddressInfo).port)),
    );
    try {
      const e = await run(['--port', String(port), '--model', '/nonexistent-model-dir']).catch(
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(UserError);
      expect((e as Error).message).toBe(
        `cannot listen on 127.0.0.1:${port}: the port is in use: choose another --port (0 picks a free one) or stop the other server`,
      );
    } finally {
      blocker.close();
    }
  });

  it('--help shows --batch-size and the limits, not the deprecated --max-batch', async () => {
    const p = program();
    await p.cmd.parseAsync(['serve', '--help'], { from: 'user' }).catch(() => undefined);
    expect(p.out()).toMatch(/--batch-size <n>/);
    expect(p.out()).toMatch(/--limit-beam-size <n>[\s\S]*?\(default: 16\)/);
    expect(p.out()).toMatch(/--compute-timeout <s>[\s\S]*?\(default: 60\)/);
    expect(p.out()).not.toMatch(/--max-batch/);
  });
});
