import { defineConfig } from 'vitest/config';

// The CI machine has 2 cores and integration tests start real PostgreSQL
// clusters: run test files in at most 2 forked workers.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
    pool: 'forks',
    maxWorkers: 2,
    fileParallelism: true,
  },
});
