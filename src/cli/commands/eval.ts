import type { Command } from 'commander';
import { UserError } from '../../util/errors.js';

export function register(program: Command): void {
  program
    .command('eval')
    .description('(not available yet in this version)')
    .allowUnknownOption()
    .action(() => {
      throw new UserError('clipcap eval is not available yet in this version');
    });
}
