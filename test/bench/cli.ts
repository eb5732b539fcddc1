/** `clipcap bench ARGS...` through the CLI, for the bench tests. */
import { vi } from 'vitest';
import { Command } from 'commander';
import { register } from '../../src/cli/commands/bench.js';

/** Runs `clipcap bench ARGS...` in-process (stderr silenced); its stdout. */
export async function benchCli(args: readonly string[]): Promise<string> {
  const program = new Command().exitOverride();
  register(program);
  let out = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
    out += String(s);
    return true;
  });
  const errSpy = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    await program.parseAsync(['bench', ...args], { from: 'user' });
  } finally {
    spy.mockRestore();
    errSpy.mockRestore();
  }
  return out;
}
