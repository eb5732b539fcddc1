import type { Command } from 'commander';
import { UserError } from '../../util/errors.js';

export function register(program: Command): void {
  program
    .command('serve')
    .description('(not available yet in this version)')
    .allowUnknownOption()
    .action(() => {
      throw new UserError('clipcap serve is not available yet in this version');
    });
}
