// An archived object written to a file of its own, the way restore_command and the prefetch spool
// need it (xlogarchive.c RestoreArchivedFile reads %p only after the command exits 0): into a temp
// file beside the target, named for this process (storage/leftovers.ts), then renamed, so the
// target never holds part of an object or bytes that failed their checksum. The bytes go through
// one buffer (ArchiveStore.getTo) rather than a segment-sized one: fresh memory for 16 MB costs
// more than reading them, on a virtual machine most of all.
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { tempName } from '../storage/leftovers.js';
import type { ArchiveStore } from '../storage/types.js';

/** Looks at every byte on its way to the file; `finish` throws to refuse the file before it is renamed. */
export interface ObjectInspector {
  write(piece: Buffer): void;
  finish(): void;
}

/** Writing the target failed (not the archive): `cause` is the file system's error. */
export class TargetWriteError extends Error {
  constructor(
    readonly path: string,
    override readonly cause: NodeJS.ErrnoException,
  ) {
    super(`cannot write ${JSON.stringify(path)}: ${cause.code ?? cause.message}`);
    this.name = 'TargetWriteError';
  }
}

async function writeAll(fh: FileHandle, piece: Buffer): Promise<void> {
  for (let done = 0; done < piece.length; ) done += (await fh.write(piece, done, piece.length - done)).bytesWritten;
}

/**
 * Write `name` from `store` to `path` (replacing it), fsynced first when `sync`. Returns the
 * object's first `headBytes` bytes (fewer if it is shorter). The store's errors come as they are
 * (NotFoundError before anything is written); the file system's as TargetWriteError. Nothing is
 * left behind on failure.
 */
export async function objectToFile(store: ArchiveStore, name: string, path: string, opts: { sync: boolean; headBytes: number; inspect?: ObjectInspector }): Promise<Buffer> {
  const tmp = join(dirname(path), tempName(basename(path)));
  let fh: FileHandle | undefined;
  let head = Buffer.alloc(0);
  const target = async <T>(op: () => Promise<T>): Promise<T> => {
    try {
      return await op();
    } catch (err) {
      throw new TargetWriteError(path, err as NodeJS.ErrnoException);
    }
  };
  // Opened at the first byte: an object that is not there leaves nothing to remove.
  const file = async (): Promise<FileHandle> => (fh ??= await target(() => open(tmp, 'wx', 0o600)));
  let written = false;
  try {
    const write = async (piece: Buffer): Promise<void> => {
      const f = await file();
      if (head.length < opts.headBytes) head = Buffer.concat([head, piece.subarray(0, opts.headBytes - head.length)]);
      opts.inspect?.write(piece);
      await target(() => writeAll(f, piece));
    };
    if (store.getTo) await store.getTo(name, write);
    else await write((await store.get(name)).data);
    const f = await file(); // an empty object: an empty file
    opts.inspect?.finish();
    if (opts.sync) await target(() => f.sync());
    fh = undefined;
    await target(() => f.close());
    await target(() => rename(tmp, path));
    written = true;
    return head;
  } finally {
    if (!written) {
      await fh?.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
    }
  }
}
