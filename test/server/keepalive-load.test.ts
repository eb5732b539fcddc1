/**
 * `clipcap bench serve` once left requests unanswered (#13: at 32 clients on full-size weights, 16 x 408 and
 * 2 x ECONNRESET in one run). The load generator starts its timed loop when every client's first request is
 * answered; with batches smaller than the number of clients, the clients answered first sit idle on kept-alive
 * connections while the next batch computes. With compute on the server's thread, the server's idle close
 * (keep-alive timeout) and headers deadline could only fire when that batch ended, at the moment the waiting
 * clients were released and sent their next requests on those same connections: the close raced the request
 * (ECONNRESET) and the deadline's 408 was read as its answer. With the model on a worker thread (ClipCapWorker)
 * the timers fire on time, while the clients are idle, and a client's next request opens a new connection.
 *
 * This runs the bench's own load generator against a model that answers after 0.8 s without blocking the thread
 * (as ClipCapWorker does), with server timeouts far shorter than the batches so that idle connections are closed
 * during the warm-up: every request must be answered. (The blocking case is a race of about a millisecond, too
 * rare at this scale to test; the figures above are from the full-size bench.)
 */
import { describe, expect, it } from 'vitest';
import { runGenerator } from '../../src/bench/serve.js';
import type { CaptionInput, CaptionResult } from '../../src/pipeline/types.js';
import { createServer, type CaptionModel } from '../../src/server/index.js';

const CALL_MS = 800;
const answer = (inputs: readonly CaptionInput[]): CaptionResult[] =>
  inputs.map((_, index) => ({ index, caption: 'x', tokens: [1] }));

const offThread: CaptionModel = {
  caption: (inputs) => new Promise((resolve) => setTimeout(() => resolve(answer(inputs)), CALL_MS)),
};

async function load(model: CaptionModel): Promise<Record<string, number>> {
  const srv = createServer(model, {
    batchSize: 2,
    batchWindowMs: 0,
    timeouts: { idleMs: 200, headersMs: 400, computeMs: 60_000 },
  });
  try {
    const { port } = await srv.listen(0, '127.0.0.1');
    const r = await runGenerator({
      port,
      path: '/caption',
      bodies: [JSON.stringify({ embedding: [1, 2, 3] })],
      clients: 4,
      seconds: 1,
    });
    return r.errors;
  } finally {
    await srv.close();
  }
}

describe('bench serve load generator against kept-alive connections', () => {
  it('compute off the server thread: every request is answered', async () => {
    expect(await load(offThread)).toEqual({});
  }, 120_000);
});
