/**
 * `clipcap bench serve`: the HTTP server under load. A createServer over the full-size captioner (GPT-2 small +
 * the 512 -> 3840 -> 7680 MLP mapper, weights by the fixture rule; tiny models with --smoke) on its own thread
 * (ClipCapWorker, as `clipcap serve` runs it) listens on
 * 127.0.0.1; a load generator in a worker thread (so the server's event loop is not shared with the clients)
 * runs 1, 8 and 32 concurrent clients, each sending one embedding request after another (greedy, 20 tokens,
 * no stop token, so every request does the same work). After one untimed request per client, requests started
 * within --seconds (each client at least one) are timed to their answer; requests/s is their number over the
 * time to the last answer.
 *
 * Cases (metric): clientsN (requests_per_s, with peak_rss_mb), clientsN_p50 and clientsN_p99 (ms, request
 * latency). The generator is bounded: loopback only, at most 64 clients, at most 600 s per level.
 */
import http from 'node:http';
import { Worker } from 'node:worker_threads';
import { ClipCapWorker } from '../pipeline/worker.js';
import { createServer } from '../server/index.js';
import { UsageError } from '../util/errors.js';
import { SMOKE_GPT2, SMOKE_MAPPER, benchEmbeddings } from './caption.js';
import { benchEngine, collectGarbage, peakRssMb, resetPeakRss } from './common.js';
import { machineInfo } from './report.js';
import type { BenchReport, BenchResult, BenchRunOptions } from './report.js';

const LEVELS = [1, 8, 32];
const TOKENS = 20;
const SMOKE_TOKENS = 3;
const DEFAULT_SECONDS = 10;
const SMOKE_SECONDS = 1;
const MAX_CLIENTS = 64;

/**
 * The load generator, run as a CommonJS worker: `clients` loops, each POSTing its body to 127.0.0.1:port over a
 * keep-alive connection and waiting for the whole answer: one untimed request each, then requests for `seconds`
 * (each client at least one). Posts back { latenciesMs, errors, seconds }.
 */
const GENERATOR = `
const http = require('node:http');
const { parentPort, workerData } = require('node:worker_threads');
const { port, path, bodies, clients, seconds } = workerData;
const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
function once(body) {
  return new Promise((resolve) => {
    const req = http.request(
      { host: '127.0.0.1', port, path, method: 'POST', agent,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
      (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); res.on('error', (e) => resolve('0 ' + e.code)); },
    );
    req.on('error', (e) => resolve('0 ' + (e.code || e.message)));
    req.end(body);
  });
}
(async () => {
  // Warm-up: one untimed request per client, all at once.
  await Promise.all(Array.from({ length: clients }, (_, c) => once(bodies[c % bodies.length])));
  const start = performance.now();
  const end = start + seconds * 1000;
  const latenciesMs = [];
  const errors = {}; // status (or "0 CODE": no answer, with the socket error's code) -> count
  let last = start;
  // Requests started before \`end\` are timed to their answer; every client times at least one.
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let i = 1; performance.now() < end || i === 1; i++) {
      const s = performance.now();
      const status = await once(bodies[(c + i * clients) % bodies.length]);
      const e = performance.now();
      last = Math.max(last, e);
      if (status === 200) latenciesMs.push(e - s);
      else errors[status] = (errors[status] || 0) + 1;
    }
  }));
  agent.destroy();
  parentPort.postMessage({ latenciesMs, errors, seconds: (last - start) / 1000 });
})();
`;

export interface LevelResult {
  latenciesMs: number[];
  /** Failed requests by HTTP status ("0 CODE": the connection failed, with the socket error code). */
  errors: Record<string, number>;
  seconds: number;
}

export function runGenerator(data: {
  port: number;
  path: string;
  bodies: string[];
  clients: number;
  seconds: number;
}): Promise<LevelResult> {
  return new Promise((resolve, reject) => {
    const w = new Worker(GENERATOR, { eval: true, workerData: data });
    w.once('message', (m: LevelResult) => resolve(m));
    w.once('error', reject);
    w.once('exit', (code) => {
      if (code !== 0) reject(new Error(`the load generator exited with ${code}`));
    });
  });
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function secondsOption(v: string | boolean | undefined, dflt: number): number {
  if (typeof v !== 'string') return dflt;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n <= 0 || n > 600)
    throw new UsageError(`--seconds must be a number in (0, 600], got "${v}"`);
  return n;
}

function levelsOption(v: string | boolean | undefined): number[] {
  if (typeof v !== 'string') return LEVELS;
  const out = v.split(',').map((s) => Number(s.trim()));
  if (out.length === 0 || !out.every((n) => Number.isInteger(n) && n >= 1 && n <= MAX_CLIENTS))
    throw new UsageError(
      `--clients must be a comma-separated list of integers from 1 to ${MAX_CLIENTS}, got "${v}"`,
    );
  return out;
}

export async function runServeBench(opts: BenchRunOptions): Promise<BenchReport> {
  const smoke = opts.extra.smoke === true;
  const seconds = secondsOption(opts.extra.seconds, smoke ? SMOKE_SECONDS : DEFAULT_SECONDS);
  const levels = levelsOption(opts.extra.clients);
  const T = smoke ? SMOKE_TOKENS : TOKENS;
  const eng = benchEngine(opts);
  const what = smoke
    ? 'tiny GPT-2 + MLP mapper (fixture rule, --smoke)'
    : 'GPT-2 small + MLP mapper 512-3840-7680, synthetic weights (fixture rule)';
  // As `clipcap serve` runs it: the model on its own thread (ClipCapWorker), the server's loop free.
  const captioner = await ClipCapWorker.start({
    synthetic: smoke ? { gpt2: SMOKE_GPT2, mapper: SMOKE_MAPPER, description: what } : { description: what },
    backend: eng.name,
    threads: opts.threads,
  });
  const srv = createServer(captioner, {
    decodeDefaults: { method: 'greedy', maxTokens: T, stop: 'none' },
    timeouts: { computeMs: 600_000 },
  });
  const extra: Record<string, string | number | boolean> = {
    ...eng.extra,
    model: what,
    tokens: T,
    decode: 'greedy',
    seconds_per_level: seconds,
    batch_size: srv.options.batchSize,
    batch_window_ms: srv.options.batchWindowMs,
  };
  if (smoke) extra.smoke = true;
  const results: BenchResult[] = [];
  try {
    const { port } = await srv.listen(0, '127.0.0.1');
    const bodies = benchEmbeddings(32, captioner.embeddingSize).map((e) =>
      JSON.stringify({ embedding: Array.from(e) }),
    );
    // One request first: the answer must be a caption of T tokens (else the bench measures errors).
    const check = await new Promise<string>((resolve, reject) => {
      const req = http.request(
        {
          host: '127.0.0.1',
          port,
          path: '/caption',
          method: 'POST',
          headers: { 'content-type': 'application/json' },
        },
        (res) => {
          let s = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => (s += d));
          res.on('end', () => resolve(s));
        },
      );
      req.on('error', reject);
      req.end(bodies[0]);
    });
    const tokens = (JSON.parse(check) as { results?: { tokens?: number[] }[] }).results?.[0]?.tokens;
    if (tokens?.length !== T)
      throw new Error(`bench serve: the check request answered ${check.slice(0, 200)}`);
    for (const clients of levels) {
      collectGarbage();
      await new Promise((r) => setTimeout(r, 50));
      resetPeakRss();
      const calls0 = srv.modelCalls;
      const r = await runGenerator({ port, path: '/caption', bodies, clients, seconds });
      const rss = peakRssMb();
      const lat = [...r.latenciesMs].sort((a, b) => a - b);
      const rate = lat.length / r.seconds;
      const p50 = percentile(lat, 50);
      const p99 = percentile(lat, 99);
      const calls = srv.modelCalls - calls0;
      const failed = Object.values(r.errors).reduce((a, b) => a + b, 0);
      const errorText = Object.entries(r.errors)
        .map(([k, v]) => `${v} x ${k.startsWith('0') ? `no answer (${k.slice(2)})` : k}`)
        .join(', ');
      opts.log(
        `clients ${clients}: ${rate.toFixed(2)} requests/s, p50 ${p50.toFixed(0)} ms, p99 ${p99.toFixed(0)} ms, ` +
          `${lat.length} requests (${failed} errors${failed > 0 ? `: ${errorText}` : ''}), ${calls} model calls, peak RSS ${rss.toFixed(0)} MiB`,
      );
      if (failed > 0) extra[`clients${clients}_errors`] = errorText;
      results.push(
        {
          case: `clients${clients}`,
          backend: eng.name,
          metric: 'requests_per_s',
          value: rate,
          runs: 1,
          peak_rss_mb: rss,
        },
        { case: `clients${clients}_p50`, backend: eng.name, metric: 'ms', value: p50, runs: lat.length },
        { case: `clients${clients}_p99`, backend: eng.name, metric: 'ms', value: p99, runs: lat.length },
      );
    }
  } finally {
    await srv.close();
    await captioner.close();
  }
  return { bench: 'serve', machine: machineInfo(eng.threads, eng.avx2, extra), results };
}
