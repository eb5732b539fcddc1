/**
 * One turn of the event loop (timers, I/O, the test runner's RPC), for tests whose synchronous work (native
 * kernels, big loops) would otherwise hold the worker's loop past vitest's 60 s RPC timeout on a loaded machine.
 */
export function yieldToLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * A yield at most every `ms` of synchronous work: call it inside a loop (`await slice()`), it returns a resolved
 * promise until `ms` have passed since the last real yield.
 */
export function yieldEvery(ms = 200): () => Promise<void> {
  let last = performance.now();
  return async () => {
    if (performance.now() - last < ms) return;
    await yieldToLoop();
    last = performance.now();
  };
}
