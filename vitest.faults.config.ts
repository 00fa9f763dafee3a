import { defineConfig } from 'vitest/config';
import base from './vitest.config.js';

// `npm run test:faults`: only the fault suite, with its full iteration counts
// (WALSTREAM_FAULT_MODE=full) and room for them in the timeouts. (Not mergeConfig: it would add
// this include to the base one instead of replacing it.)
export default defineConfig({
  test: {
    ...base.test,
    include: ['test/faults/**/*.test.ts'],
    testTimeout: 1_800_000,
    hookTimeout: 300_000,
  },
});
