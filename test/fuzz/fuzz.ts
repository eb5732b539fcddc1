/**
 * A seeded, bounded mutation fuzzer for the file parsers (#13). Each target takes seed files, mutates them a
 * few bytes at a time (bit flips, interesting integers, inserted, deleted, duplicated and spliced chunks,
 * truncation) and runs the parser on every mutant. The only acceptable outcomes are success or a UserError
 * whose message is one short line without control characters; each case must finish in bounded time, and the
 * process's peak memory must stay bounded. Runs are deterministic: a failure names its seed file and case number
 * and saves the input under the system temp directory.
 *
 * CLIPCAP_FUZZ_SCALE (default 1) multiplies the number of cases, for longer runs by hand; CLIPCAP_FUZZ_VERBOSE=1
 * logs every kind of refusal message; CLIPCAP_FUZZ_CASE_MS tightens the per-case time bound (default 5000 ms,
 * loose because CI machines are shared while cases take milliseconds) to find the slowest inputs.
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UserError } from '../../src/util/errors.js';

/** mulberry32: a small seeded PRNG; returns a function giving floats in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const INTERESTING_8 = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x2e, 0x28, 0x30];
const INTERESTING_32 = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0x10000, 0xffff, 0x40000000];

/** One mutant of `input` (1 to 4 mutations), `other` a second seed to splice from. */
export function mutate(input: Uint8Array, other: Uint8Array, next: () => number): Uint8Array {
  let b: Uint8Array = Uint8Array.from(input);
  const int = (n: number): number => Math.floor(next() * n);
  const count = 1 + int(4);
  for (let m = 0; m < count; m++) {
    const at = b.length ? int(b.length) : 0;
    switch (int(8)) {
      case 0: // flip a few bits
        for (let k = 0; k <= int(4) && b.length; k++) b[int(b.length)] ^= 1 << int(8);
        break;
      case 1: // an interesting byte
        if (b.length) b[at] = INTERESTING_8[int(INTERESTING_8.length)];
        break;
      case 2: {
        // an interesting 32- or 64-bit little-endian integer (lengths, counts, offsets)
        const v = INTERESTING_32[int(INTERESTING_32.length)];
        const wide = next() < 0.3;
        for (let k = 0; k < (wide ? 8 : 4) && at + k < b.length; k++)
          b[at + k] = k < 4 ? (v >>> (8 * k)) & 255 : v ? 0xff : 0;
        break;
      }
      case 3: {
        // insert random bytes
        const n = 1 + int(16);
        const ins = Uint8Array.from({ length: n }, () => int(256));
        b = concat(b.subarray(0, at), ins, b.subarray(at));
        break;
      }
      case 4: // delete a chunk
        b = concat(b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + int(64))));
        break;
      case 5: {
        // duplicate a chunk of itself somewhere else
        const from = int(b.length + 1);
        const chunk = b.slice(from, from + 1 + int(256));
        b = concat(b.subarray(0, at), chunk, b.subarray(at));
        break;
      }
      case 6: {
        // splice in a chunk of the other seed
        const from = int(other.length + 1);
        const chunk = other.slice(from, from + 1 + int(512));
        b = concat(b.subarray(0, at), chunk, b.subarray(Math.min(b.length, at + chunk.length)));
        break;
      }
      default: // truncate
        b = b.slice(0, at);
    }
  }
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export interface FuzzTarget {
  name: string;
  /** Seed inputs by name. */
  seeds: ReadonlyArray<[string, Uint8Array]>;
  /** Cases at CLIPCAP_FUZZ_SCALE = 1. */
  cases: number;
  /** PRNG seed. */
  seed: number;
  /** Run the parser on one input; resolve on success, reject with a UserError on refusal. */
  run(input: Uint8Array, caseId: string): Promise<unknown>;
  /** Optional structured mutation (e.g. of a pickle inside a zip) used for some cases instead of `mutate`. */
  mutateStructured?(input: Uint8Array, next: () => number): Uint8Array | undefined;
  /** Largest wall time of one case, ms. */
  caseMs?: number;
}

export interface FuzzReport {
  cases: number;
  ok: number;
  refused: number;
  slowestMs: number;
  /** Distinct refusal messages (numbers and paths elided), with counts: what the parser said. */
  messages: Map<string, number>;
}

/** Largest peak RSS (bytes) a fuzz run may reach: inputs are kilobytes, so this is far above any honest use. */
export const MAX_RSS_BYTES = 2 * 1024 ** 3;

export async function fuzz(t: FuzzTarget): Promise<FuzzReport> {
  const scale = Number(process.env.CLIPCAP_FUZZ_SCALE ?? '1');
  const total = Math.max(1, Math.round(t.cases * (Number.isFinite(scale) && scale > 0 ? scale : 1)));
  const next = rng(t.seed);
  const report: FuzzReport = { cases: total, ok: 0, refused: 0, slowestMs: 0, messages: new Map() };
  const peakBefore = process.resourceUsage().maxRSS * 1024;
  const caseMs = Number(process.env.CLIPCAP_FUZZ_CASE_MS ?? t.caseMs ?? 5000);
  for (let i = 0; i < total; i++) {
    const [seedName, seed] = t.seeds[Math.floor(next() * t.seeds.length)];
    const other = t.seeds[Math.floor(next() * t.seeds.length)][1];
    const input =
      (t.mutateStructured && next() < 0.5 ? t.mutateStructured(seed, next) : undefined) ??
      mutate(seed, other, next);
    const caseId = `${t.name} case ${i} (seed file ${seedName}, PRNG seed ${t.seed})`;
    const fail = (why: string): never => {
      const saved = path.join(os.tmpdir(), `clipcap-fuzz-${t.name}-${i}.bin`);
      writeFileSync(saved, input);
      throw new Error(`${caseId}: ${why}; input saved to ${saved}`);
    };
    const t0 = performance.now();
    try {
      await t.run(input, caseId);
      report.ok++;
    } catch (e) {
      if (!(e instanceof UserError))
        fail(`not a UserError: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      const msg = (e as Error).message;
      // eslint-disable-next-line no-control-regex
      if (/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(msg))
        fail(`control character in the message ${JSON.stringify(msg)}`);
      if (msg.length > 1000) fail(`a ${msg.length}-character message`);
      report.refused++;
      const key = msg
        .replace(/\/[^\s:]*\//g, '')
        .replace(/\d+/g, 'N')
        .slice(0, 160);
      report.messages.set(key, (report.messages.get(key) ?? 0) + 1);
    }
    const ms = performance.now() - t0;
    report.slowestMs = Math.max(report.slowestMs, ms);
    if (ms > caseMs) fail(`took ${ms.toFixed(0)} ms (bound ${caseMs} ms)`);
  }
  const rss = process.resourceUsage().maxRSS * 1024;
  // The peak is per process: only a peak this run raised counts (a worker may have run heavier files before).
  if (rss > MAX_RSS_BYTES && rss > peakBefore)
    throw new Error(
      `${t.name}: peak RSS ${(rss / 2 ** 20).toFixed(0)} MiB over ${MAX_RSS_BYTES / 2 ** 20} MiB`,
    );
  return report;
}

/** A one-line summary for the test log. */
export function summary(name: string, r: FuzzReport): string {
  const top = [...r.messages.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, process.env.CLIPCAP_FUZZ_VERBOSE ? undefined : 3)
    .map(([m, n]) => `${n}x "${m}"`)
    .join(process.env.CLIPCAP_FUZZ_VERBOSE ? '\n  ' : ', ');
  return `${name}: ${r.cases} cases, ${r.ok} loaded, ${r.refused} clean refusals (${r.messages.size} kinds; top ${top}), slowest ${r.slowestMs.toFixed(0)} ms, peak RSS ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`;
}
