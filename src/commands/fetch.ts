// walstream fetch %f %p — restore_command (xlogarchive.c RestoreArchivedFile;
// replication-protocol.md §7). Found: written to %p atomically, decompressed and verified, exit 0.
// Not in the archive: exit 1 at once, PostgreSQL's normal "not available".
// Anything else (an unreachable archive after retries, a corrupt object) depends on the recovery:
// in a standby (standby.signal in the data directory, the command's working directory) "not
// available" only means "try streaming, ask again later", so exit 1; in archive recovery or
// point-in-time recovery it would mean "end of WAL" and silently cut the recovery short, so
// walstream exits 126 instead, which makes PostgreSQL stop the recovery with a FATAL error.
import { existsSync } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { NotFoundError, StorageError, type ArchiveStore } from '../storage/types.js';
import { POSTGRES_WAL_FILE_RE } from '../wal/segment.js';
import type { Logger } from '../util/log.js';

export interface FetchOptions {
  name: string;
  dest: string;
  store: ArchiveStore;
  log: Logger;
  /** Attempts for transient failures before giving up (default 5). */
  attempts?: number;
  retryMinMs?: number;
}

/** Exit status meaning "not available" to PostgreSQL. */
export const EXIT_NOT_AVAILABLE = 1;
/** Exit status above 125: PostgreSQL stops the recovery (FATAL) rather than end it early. */
export const EXIT_ABORT_RECOVERY = 126;

export class FetchError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'FetchError';
  }
}

/** In a standby, "not available" is harmless; in any other recovery it ends the recovery. */
export function failureExitCode(cwd: string = process.cwd()): number {
  return existsSync(join(cwd, 'standby.signal')) ? EXIT_NOT_AVAILABLE : EXIT_ABORT_RECOVERY;
}

export async function fetch(o: FetchOptions): Promise<void> {
  if (!POSTGRES_WAL_FILE_RE.test(o.name)) {
    throw new FetchError(`"${o.name.slice(0, 80)}" is not a WAL file name`, EXIT_NOT_AVAILABLE);
  }
  const attempts = o.attempts ?? 5;
  let delay = o.retryMinMs ?? 200;
  let data: Buffer | undefined;
  for (let attempt = 1; data === undefined; attempt++) {
    try {
      data = (await o.store.get(o.name)).data;
    } catch (err) {
      if (err instanceof NotFoundError) throw new FetchError(`${o.name} is not in the archive`, EXIT_NOT_AVAILABLE);
      const e = err as Error;
      const transient = !(err instanceof StorageError) || err.transient;
      if (!transient || attempt >= attempts) {
        const code = failureExitCode();
        const what = code === EXIT_ABORT_RECOVERY ? 'stopping the recovery rather than ending it early' : 'the standby will stream instead and ask again';
        throw new FetchError(`cannot fetch ${o.name}: ${e.message} (${what})`, code);
      }
      o.log.warn(`cannot fetch ${o.name} (attempt ${attempt} of ${attempts}): ${e.message}; retrying`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
  // Write next to %p under a temporary name, then rename: PostgreSQL never sees half a file.
  const tmp = join(dirname(o.dest), `.${basename(o.dest)}.walstream-tmp`);
  try {
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(data);
    } finally {
      await fh.close();
    }
    await rename(tmp, o.dest);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new FetchError(`cannot write ${o.dest}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, failureExitCode());
  }
  o.log.verbose(`restored ${o.name}`);
}
