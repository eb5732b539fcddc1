/**
 * `--help` says one thing one way: every command's option help writes defaults as `(default: X)`, and the
 * options several commands share (--backend with CLIPCAP_BACKEND / CLIPCAP_THREADS, --offline with
 * HF_HUB_OFFLINE, --threads, --max-pixels, --clip) read the same everywhere (src/cli/options.ts builds them).
 */
import { Command, type Option } from 'commander';
import { describe, expect, it } from 'vitest';
import { COMMANDS } from '../../src/cli/commands/index.js';
import { BACKEND_HELP, OFFLINE_HELP, THREADS_HELP } from '../../src/cli/options.js';

function commands(): Command[] {
  const program = new Command().name('clipcap');
  for (const register of COMMANDS) register(program);
  return program.commands as Command[];
}

/** Every option's help line as `clipcap CMD --help` prints it (description plus commander's suffix). */
function helpLines(): Array<{ command: string; flag: string; text: string }> {
  return commands().flatMap((c) => {
    const help = c.createHelp();
    return (c.options as Option[]).map((o) => ({
      command: c.name(),
      flag: o.long ?? o.flags,
      text: help.optionDescription(o).replace(/\s+/g, ' '),
    }));
  });
}

describe('clipcap --help', () => {
  it('lists every command', () => {
    expect(commands().map((c) => c.name())).toEqual([
      'caption',
      'extract',
      'merge',
      'train',
      'eval',
      'convert',
      'serve',
      'bench',
      'demo',
    ]);
  });

  it('writes every default as (default: X)', () => {
    const lines = helpLines();
    expect(lines.length).toBeGreaterThan(50);
    const bad = lines.filter((l) => /(^|[(;,]\s*)default(?!:)/i.test(l.text));
    expect(bad).toEqual([]);
  });

  it('explains a shared option the same way in every command that takes it', () => {
    const lines = helpLines();
    for (const flag of ['--backend', '--offline', '--threads', '--max-pixels', '--clip']) {
      // bench's --clip names real weights for a benchmark, another notion.
      const texts = new Set(
        lines
          .filter((l) => l.flag === flag && !(flag === '--clip' && l.command === 'bench'))
          .map((l) => l.text),
      );
      expect(texts.size, `${flag}: ${[...texts].join(' | ')}`).toBe(1);
    }
    const textOf = (flag: string): string => lines.find((l) => l.flag === flag)?.text ?? '';
    expect(textOf('--backend')).toContain(BACKEND_HELP);
    expect(textOf('--offline')).toBe(OFFLINE_HELP);
    expect(textOf('--threads')).toBe(THREADS_HELP);
    // The environment variables are explained only by those shared options.
    for (const env of ['CLIPCAP_THREADS', 'CLIPCAP_BACKEND', 'HF_HUB_OFFLINE'])
      for (const l of lines.filter((x) => x.text.includes(env)))
        expect(['--backend', '--offline', '--threads'], `${l.command} ${l.flag}`).toContain(l.flag);
  });

  it('offers --offline wherever hub files load and --backend wherever models run', () => {
    const has = (flag: string): string[] =>
      commands()
        .filter((c) => (c.options as Option[]).some((o) => o.long === flag))
        .map((c) => c.name());
    expect(has('--offline')).toEqual(['caption', 'extract', 'train', 'eval', 'convert', 'serve']);
    expect(has('--backend')).toEqual(['caption', 'extract', 'train', 'eval', 'serve', 'demo']);
  });
});
