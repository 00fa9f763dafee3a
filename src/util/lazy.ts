// Node's built-in modules that only some paths use, loaded on first use instead of at startup: a
// restore_command or archive_command call (one process per WAL file) loads only what its own
// path needs. Builtins are loaded once per process; this only defers the first load.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/** A function returning built-in module `id`, loading it on the first call. */
export function builtin<T>(id: string): () => T {
  let loaded: T | undefined;
  return () => {
    loaded ??= require(id) as T;
    return loaded;
  };
}

/**
 * node:fs and node:util as `require` returns them, for the modules of the calls PostgreSQL makes
 * once per WAL file (those in dist/cli/run-bundle.js). An ES module's `import ... from 'node:fs'`
 * makes Node build an ES-module view of the whole module, which reads every export: node:fs's
 * ReadStream getter then loads Node's stream modules, node:util's its argument parser, diff and
 * worker modules, none of which such a call uses (2-4 ms of a push, docs/benchmarks.md).
 * test/unit/fast-path.test.ts checks that the bundle imports neither.
 */
export const fs = require('node:fs') as typeof import('node:fs');
export const util = require('node:util') as typeof import('node:util');
