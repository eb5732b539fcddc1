import type { Command } from 'commander';
import { register as caption } from './caption.js';
import { register as extract } from './extract.js';
import { register as train } from './train.js';
import { register as merge } from './merge.js';
import { register as evalCmd } from './eval.js';
import { register as convert } from './convert.js';
import { register as serve } from './serve.js';
import { register as bench } from './bench.js';
import { register as demo } from './demo.js';

/** Every subcommand, in the order `clipcap --help` lists them. */
export const COMMANDS: ReadonlyArray<(program: Command) => void> = [
  caption,
  extract,
  merge,
  train,
  evalCmd,
  convert,
  serve,
  bench,
  demo,
];
