/**
 * `clipcap bench WHAT [--format text|json] [--runs N] [--threads N] [bench options]`: runs one benchmark
 * from src/bench/registry.ts and prints an aligned table, or with --format json the document DESIGN.md
 * specifies ({ bench, machine, results: [{ case, backend, metric, value, runs }] }) on stdout. Progress
 * goes to stderr.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { BENCHES } from '../../bench/registry.js';
import { formatTable } from '../../bench/report.js';
import { UsageError } from '../../util/errors.js';
import { threadsOption } from '../options.js';

function positiveInt(name: string, max: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v.trim()) || n < 1 || n > max) {
      throw new InvalidArgumentError(`${name} must be an integer from 1 to ${max}.`);
    }
    return n;
  };
}

interface BenchCliOptions {
  format: string;
  runs?: number;
  threads?: number;
  [extra: string]: string | number | boolean | undefined;
}

export function register(program: Command): void {
  const names = Object.keys(BENCHES);
  const cmd = program
    .command('bench')
    .argument('<what>', `the benchmark: ${names.join(', ')}`)
    .description(`benchmark this machine (${names.map((n) => `${n}: ${BENCHES[n].description}`).join('; ')})`)
    .option('--format <text|json>', 'output format', 'text')
    .option('--runs <N>', 'timed runs per case (values are medians)', positiveInt('--runs', 1000))
    .addOption(threadsOption());
  // Every bench's own options (the registry says which bench reads each one); an option several benches
  // declare is added once, with their descriptions joined.
  const descriptions = new Map<string, string[]>();
  for (const entry of Object.values(BENCHES)) {
    for (const o of entry.options ?? []) {
      const list = descriptions.get(o.flags) ?? [];
      if (!list.includes(o.description)) list.push(o.description);
      descriptions.set(o.flags, list);
    }
  }
  for (const [flags, list] of descriptions) cmd.option(flags, list.join('; '));
  cmd.action(async (what: string, opts: BenchCliOptions) => {
    const entry = BENCHES[what];
    if (!entry) throw new UsageError(`unknown benchmark "${what}": use one of ${names.join(', ')}`);
    if (opts.format !== 'text' && opts.format !== 'json') {
      throw new UsageError(`--format must be text or json, got "${opts.format}"`);
    }
    const { format, runs, threads, ...rest } = opts;
    const extra: Record<string, string | boolean | undefined> = {};
    for (const [k, v] of Object.entries(rest)) extra[k] = typeof v === 'number' ? String(v) : v;
    const report = await entry.run({
      runs,
      threads,
      extra,
      log: (line) => process.stderr.write(`${line}\n`),
    });
    process.stdout.write(format === 'json' ? `${JSON.stringify(report, null, 2)}\n` : formatTable(report));
  });
}
