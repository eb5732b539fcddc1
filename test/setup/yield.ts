/**
 * Give the event loop a turn after every test and hook.
 *
 * vitest's runner goes from one test to the next with promise continuations only (microtasks), so a file of
 * synchronous tests (native kernels are synchronous) holds the worker's event loop for their total time. The
 * worker's RPC to the main process has a fixed 60 s timeout armed when a task update is sent: if the loop stays
 * blocked past it, the timer fires before the reply is read and the run ends with "[vitest-worker]: Timeout
 * calling onTaskUpdate" (exit 1) although every test passed. One macrotask turn between tests bounds a blocked
 * stretch by the longest single test, not by a whole file; long tests yield between their own heavy steps
 * (see test/yield.ts).
 */
import { afterEach, beforeEach } from 'vitest';
import { yieldToLoop } from '../yield.js';

beforeEach(yieldToLoop);
afterEach(yieldToLoop);
