// Temporary local archives for unit tests: directories made in a test and removed after it
// (afterEach, registered by tempArchives), a LocalStore over a new one, and the rejection a call
// is expected to end in.
import { afterEach } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalStore, type LocalStoreOptions } from '../../src/storage/local.js';

export interface TempArchives {
  /** A new empty directory, removed after the test. */
  tmp(): string;
  /** A local archive in a new directory, removed after the test. */
  archive(opts?: LocalStoreOptions): { dir: string; store: LocalStore };
}

/** Call at the top of a test file: directories named walstream-<prefix>-*, removed after each test. */
export function tempArchives(prefix: string): TempArchives {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const tmp = (): string => {
    const d = mkdtempSync(join(tmpdir(), `walstream-${prefix}-`));
    dirs.push(d);
    return d;
  };
  return {
    tmp,
    archive(opts = {}) {
      const dir = tmp();
      return { dir, store: new LocalStore(dir, opts) };
    },
  };
}

/** What `p` rejects with (the test fails when it resolves). */
export async function failure(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}
