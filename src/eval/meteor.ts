/**
 * METEOR through the toolkit's jar, driven the way pycocoevalcap's meteor/meteor.py drives it:
 *
 *   cd <jar dir> && LC_ALL=C java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm
 *
 * For each image write `SCORE ||| ref1 ||| ref2 ... ||| hyp` and read one line of sufficient statistics
 * (the hypothesis loses any "|||" and has "  " replaced by " " once, as in the toolkit; the references are
 * sent as they are). Then write `EVAL ||| stats1 ||| stats2 ...` and read one score line per image followed
 * by the corpus score, which the jar computes from the aggregated statistics (so it is NOT the mean of
 * the per-image scores). The jar needs its data/ folder (paraphrase-en.gz) beside it.
 */
import { type JavaCommand, JavaProcess, checkJar, resolveJava } from './java.js';
import { UserError } from '../util/errors.js';

export interface MeteorOptions {
  /** Path to meteor-1.5.jar (with data/paraphrase-en.gz beside it). */
  jar: string;
  /** The Java command (default: $CLIPCAP_JAVA or `java`). */
  java?: JavaCommand;
  /** Maximum heap, as in pycocoevalcap. */
  memory?: string;
}

export interface MeteorResult {
  score: number;
  perImage: number[];
}

/** The hypothesis sanitising of meteor.py `_stat`: one pass of each replacement, like Python's str.replace. */
export function meteorHypothesis(hyp: string): string {
  return hyp.split('|||').join('').split('  ').join(' ');
}

/** The SCORE request line (without its newline). */
export function meteorScoreLine(hyp: string, refs: readonly string[]): string {
  return ['SCORE', refs.join(' ||| '), meteorHypothesis(hyp)].join(' ||| ');
}

/** Python float() of a line the jar printed (after strip()). */
function parseScore(line: string, what: string): number {
  const t = line.trim();
  if (/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t)) return Number(t);
  if (/^[-+]?nan$/i.test(t)) return NaN;
  if (/^[-+]?(inf|infinity)$/i.test(t)) return t.startsWith('-') ? -Infinity : Infinity;
  throw new UserError(
    `METEOR printed ${JSON.stringify(line.slice(0, 200))} where a ${what} score was expected`,
  );
}

/**
 * METEOR 1.5 scores of `candidates[i]` against `references[i]` (strings as pycocoevalcap passes them:
 * PTB-tokenized unless tokenization is off). Throws JavaNotFoundError when Java cannot be started.
 */
export async function computeMeteor(
  candidates: readonly string[],
  references: ReadonlyArray<readonly string[]>,
  opts: MeteorOptions,
): Promise<MeteorResult> {
  if (candidates.length !== references.length) {
    throw new Error(
      `computeMeteor: ${candidates.length} candidates but ${references.length} reference lists`,
    );
  }
  if (candidates.length === 0) throw new Error('computeMeteor: no images');
  const { dir, name } = checkJar(opts.jar, 'METEOR', '--meteor-jar');
  const proc = new JavaProcess(
    `METEOR (${name})`,
    resolveJava(opts.java),
    ['-jar', `-Xmx${opts.memory ?? '2G'}`, name, '-', '-', '-stdio', '-l', 'en', '-norm'],
    // meteor.py sets LC_ALL=C for the child (this also fixes the JVM's default charset).
    { cwd: dir, env: { ...process.env, LC_ALL: 'C' } },
  );
  try {
    // Requests are pipelined: the jar answers them in order.
    for (let i = 0; i < candidates.length; i++)
      proc.write(meteorScoreLine(candidates[i], references[i]) + '\n');
    const stats: string[] = [];
    for (let i = 0; i < candidates.length; i++) stats.push((await proc.readLine()).trim());
    proc.write(['EVAL', ...stats].join(' ||| ') + '\n');
    const perImage: number[] = [];
    for (let i = 0; i < candidates.length; i++) perImage.push(parseScore(await proc.readLine(), 'per-image'));
    const score = parseScore(await proc.readLine(), 'corpus');
    return { score, perImage };
  } finally {
    await proc.close();
  }
}
