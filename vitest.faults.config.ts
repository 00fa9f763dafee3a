import { defineConfig, mergeConfig } from 'vitest/config';
import base from './vitest.config.js';

// `npm run test:faults`: only the fault suite, with its full iteration counts
// (WALSTREAM_FAULT_MODE=full) and room for them in the timeouts.
export default mergeConfig(
  base,
  defineConfig({
    test: {
      include: ['test/faults/**/*.test.ts'],
      testTimeout: 1_800_000,
      hookTimeout: 300_000,
    },
  }),
);
