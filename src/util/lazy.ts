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
