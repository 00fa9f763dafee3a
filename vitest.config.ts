import { defineConfig } from 'vitest/config';

// The CI machine has 2 cores and integration tests start real PostgreSQL
// clusters: run test files in at most 2 forked workers.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Builds dist/ first when a source file is newer (the CLI tests run bin/walstream, which
    // loads dist/); prints the fault suite's table (what it survived) at the end of a run that
    // includes it; removes the staged package copies PostgreSQL ran walstream from.
    globalSetup: ['test/support/build-setup.ts', 'test/faults/report-setup.ts', 'test/support/stage-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
    pool: 'forks',
    maxWorkers: 2,
    fileParallelism: true,
  },
});
