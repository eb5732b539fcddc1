/**
 * Running the toolkit's Java jars (METEOR, SPICE): which `java` to run, and a child process whose output
 * is read line by line. The command is configurable so that tests (and unusual installs) can substitute
 * another executable that speaks the same protocol.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { UserError } from '../util/errors.js';

/** `java`, or a command with leading arguments such as `[process.execPath, 'fake-java.mjs']`. */
export type JavaCommand = string | readonly string[];

/** Raised when the Java executable cannot be started (not installed / not on PATH). */
export class JavaNotFoundError extends Error {
  constructor(readonly command: string) {
    super(`${command} was not found (install Java 8+ and put it on PATH, or set CLIPCAP_JAVA)`);
    this.name = 'JavaNotFoundError';
  }
}

/** The command to run: the option, else $CLIPCAP_JAVA, else `java` from PATH. */
export function resolveJava(java?: JavaCommand): string[] {
  if (java !== undefined) return typeof java === 'string' ? [java] : [...java];
  const env = process.env.CLIPCAP_JAVA;
  return env !== undefined && env !== '' ? [env] : ['java'];
}

/** Check that a jar the user named exists; its directory becomes the working directory, as in pycocoevalcap. */
export function checkJar(jar: string, what: string, option: string): { dir: string; name: string } {
  const abs = path.resolve(jar);
  if (!existsSync(abs) || !statSync(abs).isFile()) {
    throw new UserError(`${jar}: ${what} jar not found (check the path given to ${option})`);
  }
  return { dir: path.dirname(abs), name: path.basename(abs) };
}

/** Reads a child's stdout as lines; keeps the tail of its stderr for error messages. */
export class JavaProcess {
  readonly child: ChildProcessWithoutNullStreams;
  private buffer = '';
  private readonly lines: string[] = [];
  private waiter: { resolve: (line: string) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  private stderrTail = '';
  readonly exited: Promise<number | null>;

  constructor(
    readonly label: string,
    command: readonly string[],
    args: readonly string[],
    options: { cwd: string; env?: NodeJS.ProcessEnv },
  ) {
    this.child = spawn(command[0], [...command.slice(1), ...args], {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stdout.setEncoding('utf8');
    this.child.stderr.setEncoding('utf8');
    this.child.stdout.on('data', (chunk: string) => this.onData(chunk));
    this.child.stderr.on('data', (chunk: string) => {
      this.stderrTail = (this.stderrTail + chunk).slice(-4000);
    });
    // Writing to a child that has died raises EPIPE on stdin; the exit is reported instead.
    this.child.stdin.on('error', () => undefined);
    this.exited = new Promise((resolve) => {
      this.child.on('error', (e: NodeJS.ErrnoException) => {
        this.fail(e.code === 'ENOENT' ? new JavaNotFoundError(command[0]) : e);
        resolve(null);
      });
      this.child.on('close', (code) => {
        this.fail(
          new UserError(`${this.label} exited (code ${code}) before answering${this.stderrSummary()}`),
        );
        resolve(code);
      });
    });
  }

  private stderrSummary(): string {
    const last = this.stderrTail
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '')
      .slice(-3)
      .join(' | ');
    return last === '' ? '' : `: ${last}`;
  }

  /** The last lines the child wrote on stderr, for error messages. */
  stderr(): string {
    return this.stderrSummary();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl = this.buffer.indexOf('\n');
    while (nl >= 0) {
      this.lines.push(this.buffer.slice(0, nl));
      this.buffer = this.buffer.slice(nl + 1);
      nl = this.buffer.indexOf('\n');
    }
    this.wake();
  }

  private fail(e: Error): void {
    if (this.failure === undefined) this.failure = e;
    this.wake();
  }

  private wake(): void {
    if (this.waiter === undefined) return;
    const w = this.waiter;
    if (this.lines.length > 0) {
      this.waiter = undefined;
      w.resolve(this.lines.shift() as string);
    } else if (this.failure !== undefined) {
      this.waiter = undefined;
      w.reject(this.failure);
    }
  }

  /** The next line of stdout (without its '\n'); rejects if the child ends first. */
  readLine(): Promise<string> {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.wake();
    });
  }

  write(text: string): void {
    this.child.stdin.write(text, 'utf8');
  }

  /** Close stdin and wait for the exit (killing the child if it lingers). */
  async close(graceMs = 5000): Promise<void> {
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Wait for the child to finish; throws on a start failure or a non-zero exit (like check_call). */
  async waitSuccess(): Promise<void> {
    this.child.stdin.end();
    const code = await this.exited;
    if (code === null && this.failure !== undefined && !(this.failure instanceof UserError))
      throw this.failure;
    if (code !== 0) throw new UserError(`${this.label} failed (exit code ${code})${this.stderrSummary()}`);
  }
}
