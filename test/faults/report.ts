// The fault suite's run parameters and result rows: bounded (CI, the default) or full
// (WALSTREAM_FAULT_MODE=full, `npm run test:faults`) iteration counts, the run's seed and a
// seeded PRNG per test file, and the rows every scenario records for the final table.
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { inject } from 'vitest';
import { faultMode, parseSeed, type FaultRow } from './table.js';

export { faultMode, type FaultMode, type FaultRow } from './table.js';

declare module 'vitest' {
  export interface ProvidedContext {
    walstreamFaultReportDir: string;
    walstreamFaultSeed: number;
  }
}

/** The iteration count for this run's mode. */
export function iterations(bounded: number, full: number): number {
  return faultMode() === 'full' ? full : bounded;
}

/** The run's seed: from the global setup, else WALSTREAM_FAULT_SEED, else a fixed one. */
export function faultSeed(): number {
  let provided: number | undefined;
  try {
    provided = inject('walstreamFaultSeed');
  } catch {
    provided = undefined;
  }
  return typeof provided === 'number' ? provided : (parseSeed(process.env['WALSTREAM_FAULT_SEED']) ?? 1);
}

export interface Rng {
  /** Uniform in [0, 1). */
  (): number;
  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number;
  pick<T>(items: readonly T[]): T;
}

/** mulberry32, seeded from the run's seed and a per-file salt (so files do not share a sequence). */
export function makeRng(seed: number, salt: string): Rng {
  let h = seed >>> 0;
  for (let i = 0; i < salt.length; i++) h = Math.imul(h ^ salt.charCodeAt(i), 0x9e3779b1) >>> 0;
  let a = h;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const rng = next as Rng;
  rng.int = (lo, hi) => lo + Math.floor(next() * (hi - lo + 1));
  rng.pick = (items) => items[Math.floor(next() * items.length)]!;
  return rng;
}

/** A file's PRNG, with the seed printed so a failing run can be repeated (WALSTREAM_FAULT_SEED). */
export function fileRng(salt: string): Rng {
  const seed = faultSeed();
  console.log(`[faults] ${salt}: mode ${faultMode()}, seed ${seed} (repeat with WALSTREAM_FAULT_SEED=${seed})`);
  return makeRng(seed, salt);
}

/** Add a row to the run's table (call it before asserting, so a failing scenario shows too). */
export function recordRow(row: FaultRow): void {
  let dir: string | undefined;
  try {
    dir = inject('walstreamFaultReportDir');
  } catch {
    dir = undefined;
  }
  const line = `${JSON.stringify(row)}\n`;
  if (typeof dir === 'string' && dir !== '') appendFileSync(join(dir, 'rows.jsonl'), line);
  else console.log(`[faults] ${line.trim()}`);
}
