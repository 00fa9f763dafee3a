// Shared access to the real PostgreSQL 15 1 MiB segment under fixtures/pg15-1mb (not a test file).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { gunzipSync } from 'node:zlib';

export const FIXTURE_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'fixtures', 'pg15-1mb');
export const FIXTURE_NAME = '000000010000000000000007';
export const FIXTURE_GZ_PATH = join(FIXTURE_DIR, `${FIXTURE_NAME}.gz`);
export const FIXTURE_SEG_NO = 7n;
export const FIXTURE_TLI = 1;
export const FIXTURE_SEG_SIZE = 1024 * 1024;
export const FIXTURE_BLOCK_SIZE = 8192;
export const FIXTURE_MAGIC = 0xd110;
export const FIXTURE_START = FIXTURE_SEG_NO * BigInt(FIXTURE_SEG_SIZE);

let cached: Buffer | undefined;

/** A fresh copy of the uncompressed fixture segment (callers may corrupt it freely). */
export function fixtureSegment(): Buffer {
  cached ??= gunzipSync(readFileSync(FIXTURE_GZ_PATH));
  return Buffer.from(cached);
}

export function fixtureSystemId(): bigint {
  return BigInt(readFileSync(join(FIXTURE_DIR, 'system_identifier'), 'utf8').trim());
}

/** Deterministic pseudo-random generator (mulberry32) so failures reproduce. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
