#!/usr/bin/env node
/**
 * A stand-in for `java` in the METEOR / SPICE bridge tests. It accepts the command lines pycocoevalcap
 * uses and speaks the same protocols with simple, documented formulas instead of the real metrics:
 *
 * METEOR (`-jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`, line protocol on stdin/stdout):
 *   "SCORE ||| ref1 ||| ... ||| hyp"  ->  one stats line "m h r k": m = clipped unigram matches with the
 *       best reference (most matches, then the shorter one), h = hypothesis length, r = that reference's
 *       length, k = request number (to check that the stats come back verbatim).
 *   "EVAL ||| stats1 ||| ..."  ->  one line per image with F = 10PR / (R + 9P) (P = m/h, R = m/r; 0 when
 *       m = 0), then the corpus F from the summed m, h, r (not the mean of the per-image lines).
 * SPICE (`-jar -Xmx8G spice-1.0.jar IN [-cache DIR] -out OUT -subset -silent`, JSON files):
 *   per item, unique-word precision / recall / F1 of "test" against the union of "refs" as
 *   scores.All = {pr, re, f, ...} (f null when "test" is empty), plus an "Object" category; written in
 *   REVERSED input order so that callers must map results by image_id.
 *
 * FAKE_JAVA_LOG=file appends one JSON line per event (argv, cwd, LC_ALL, received lines, SPICE input).
 * FAKE_JAVA_MODE=crash makes it print a Java-like exception on stderr and exit 1.
 */
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const args = process.argv.slice(2);
const log = (event) => {
  if (process.env.FAKE_JAVA_LOG) appendFileSync(process.env.FAKE_JAVA_LOG, JSON.stringify(event) + '\n');
};
const die = (msg) => {
  process.stderr.write(msg + '\n');
  process.exit(2);
};

log({ argv: args, cwd: process.cwd(), LC_ALL: process.env.LC_ALL ?? null });
if (process.env.FAKE_JAVA_MODE === 'crash') {
  process.stderr.write('Exception in thread "main" java.lang.OutOfMemoryError: Java heap space\n');
  process.exit(1);
}
if (args[0] !== '-jar' || !/^-Xmx\d+G$/.test(args[1] ?? ''))
  die(`fake-java: unexpected arguments ${args.join(' ')}`);
const jar = path.basename(args[2] ?? '');

const words = (s) => s.split(' ').filter((w) => w !== '');
const counts = (ws) => {
  const m = new Map();
  for (const w of ws) m.set(w, (m.get(w) ?? 0) + 1);
  return m;
};
const fmean = (m, h, r) => {
  if (m === 0) return 0;
  const p = m / h;
  const rec = m / r;
  return (10 * p * rec) / (rec + 9 * p);
};

if (jar.includes('meteor')) {
  const rest = args.slice(3).join(' ');
  if (rest !== '- - -stdio -l en -norm') die(`fake-java: unexpected METEOR options ${rest}`);
  const issued = [];
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  rl.on('line', (line) => {
    log({ line });
    const parts = line.split(' ||| ');
    if (parts[0] === 'SCORE') {
      const hyp = words(parts[parts.length - 1]);
      const hc = counts(hyp);
      let best = { m: -1, r: 0 };
      for (const ref of parts.slice(1, -1)) {
        const rw = words(ref);
        const rc = counts(rw);
        let m = 0;
        for (const [w, c] of hc) m += Math.min(c, rc.get(w) ?? 0);
        if (m > best.m || (m === best.m && rw.length < best.r)) best = { m, r: rw.length };
      }
      const stats = `${best.m} ${hyp.length} ${best.r} ${issued.length}`;
      issued.push(stats);
      process.stdout.write(stats + '\n');
    } else if (parts[0] === 'EVAL') {
      const stats = parts.slice(1);
      let M = 0;
      let H = 0;
      let R = 0;
      stats.forEach((s, i) => {
        if (s !== issued[i]) die(`fake-java: EVAL stats ${i} is "${s}", expected "${issued[i]}"`);
        const [m, h, r] = s.split(' ').map(Number);
        M += m;
        H += h;
        R += r;
        process.stdout.write(`${fmean(m, h, r)}\n`);
      });
      process.stdout.write(`${fmean(M, H, R)}\n`);
    } else {
      die(`fake-java: unknown METEOR request ${line.slice(0, 40)}`);
    }
  });
} else if (jar.includes('spice')) {
  const inFile = args[3];
  const opts = args.slice(4);
  const outAt = opts.indexOf('-out');
  if (outAt < 0 || !opts.includes('-subset') || !opts.includes('-silent'))
    die(`fake-java: unexpected SPICE options ${opts.join(' ')}`);
  const items = JSON.parse(readFileSync(inFile, 'utf8'));
  log({ spiceInput: items });
  const results = items.map((it) => {
    const test = new Set(words(it.test));
    const refs = new Set(it.refs.flatMap(words));
    const tp = [...test].filter((w) => refs.has(w)).length;
    const pr = test.size === 0 ? null : tp / test.size;
    const re = refs.size === 0 ? null : tp / refs.size;
    const f = pr === null || re === null ? null : tp === 0 ? 0 : (2 * pr * re) / (pr + re);
    const all = { pr, re, f, fn: refs.size - tp, numImages: 1, fp: test.size - tp, tp };
    return { image_id: it.image_id, scores: { All: all, Object: { ...all } } };
  });
  writeFileSync(opts[outAt + 1], JSON.stringify(results.reverse()));
} else {
  die(`fake-java: unknown jar ${jar}`);
}
