import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // A turn of the event loop between tests keeps the worker's RPC alive (see the file).
    setupFiles: ['test/setup/yield.ts'],
    // Kernel and full-size model tests are CPU heavy; the CI machine has 2 cores.
    testTimeout: 600_000,
    hookTimeout: 600_000,
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
  },
});
