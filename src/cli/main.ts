#!/usr/bin/env node
/**
 * The `clipcap` command. Each subcommand lives in cli/commands/<name>.ts and only parses, validates and
 * reports; the work happens in the library. Exit codes: 0 success, 1 user error (one line), 2 bad usage.
 */
import { Command, CommanderError } from 'commander';
import { UsageError, UserError, errorMessage } from '../util/errors.js';
import { oneLine } from '../util/text.js';
import { COMMANDS } from './commands/index.js';
import { packageVersion } from './version.js';

export async function main(argv: readonly string[]): Promise<number> {
  const program = new Command();
  program
    .name('clipcap')
    .description('ClipCap image captioning: CLIP prefix + mapping network + GPT-2')
    .version(packageVersion(), '-V, --version', 'print the version of clipcap')
    .exitOverride()
    .showHelpAfterError('(run clipcap --help for usage)')
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  for (const register of COMMANDS) register(program);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help / --version exit through here with code 0.
      return e.exitCode === 0 ? 0 : 2;
    }
    // One line, without control characters from a file name or a file's contents.
    if (e instanceof UsageError) {
      process.stderr.write(`clipcap: ${oneLine(e.message)}\n`);
      return 2;
    }
    if (e instanceof UserError) {
      process.stderr.write(`clipcap: ${oneLine(e.message)}\n`);
      return 1;
    }
    process.stderr.write(
      `clipcap: internal error: ${e instanceof Error ? (e.stack ?? e.message) : errorMessage(e)}\n`,
    );
    return 1;
  }
}

// `clipcap caption ... | head -1`: once the reader closes the pipe, stop quietly, as tools killed by SIGPIPE do,
// instead of an unhandled EPIPE stack. A closed stderr has nowhere to report to.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});
process.stderr.on('error', () => undefined);

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`clipcap: ${errorMessage(e)}\n`);
    process.exitCode = 1;
  },
);
