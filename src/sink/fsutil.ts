// Small durable-file helpers (pgBackRest's "sync file, sync path" made explicit).
// writeFileAtomic names its temp file for its writer (storage/leftovers.ts) and first removes the
// temp files of the same target whose writer is gone, so a writer killed mid-write leaves nothing
// behind for good, and two writers of one file never share a temp file.
import { open, rename, unlink, writeFile, readFile, stat } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';
import { sweepDirectory, tempName } from '../storage/leftovers.js';

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Write a whole small file atomically: temp name, fsync, rename, fsync the directory. The temp
 * files of `path` that killed writers left (storage/leftovers.ts) are removed first.
 */
export async function writeFileAtomic(path: string, data: Buffer, noSync = false): Promise<void> {
  const dir = dirname(path);
  await sweepDirectory(dir, { target: basename(path) });
  const tmp = join(dir, tempName(basename(path)));
  try {
    // Created afresh, 0600 ('wx': never through a file or link someone left under that name).
    await writeFile(tmp, data, { mode: 0o600, flag: 'wx' });
    if (!noSync) {
      const fh = await open(tmp, 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
    await rename(tmp, path);
  } catch (err) {
    await removeIfExists(tmp).catch(() => undefined); // the error above is the one to report
    throw err;
  }
  if (!noSync) await fsyncDir(dir);
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

export async function removeIfExists(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

export async function sameContent(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([readFile(a), readFile(b)]);
  return x.equals(y);
}

/** A directory whose permissions would let other users change what walstream keeps there. */
export class UnsafeDirectoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsafeDirectoryError';
  }
}

/**
 * Refuse a spool directory that group or others may write to: whoever can write there can
 * replace or remove WAL before it reaches the archive (and the archive would keep their copy).
 * Checked on the directory itself, not followed below it; walstream's own files are 0600.
 */
export async function checkSpoolDirectory(dir: string): Promise<void> {
  const st = await stat(dir);
  if ((st.mode & 0o022) !== 0) {
    const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
    throw new UnsafeDirectoryError(
      `spool directory "${dir}" is writable by ${st.mode & 0o002 ? 'all users' : 'its group'} (mode ${mode}): ` + `anyone who can write there could replace WAL before it is archived; run chmod go-w "${dir}"`,
    );
  }
}
