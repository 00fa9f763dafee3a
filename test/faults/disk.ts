// A directory that can be made full and given space again, for the disk-full faults.
//  - As root (CI): a small tmpfs mounted on it; fill() writes a ballast file leaving a few
//    bytes, free() removes it. Writes then fail with ENOSPC exactly as on a full disk.
//  - Otherwise (mount not permitted): an ordinary directory, and fill() lowers the receiver's
//    RLIMIT_FSIZE (prlimit --pid) so no file can grow past a few kB: new segment files fail with
//    EFBIG, the same failure path; free() raises the limit again.
import { closeSync, mkdtempSync, openSync, rmSync, statfsSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../harness/exec.js';

export class FullDisk {
  private ballast: string | undefined;
  private limited: number | undefined;

  private constructor(
    readonly dir: string,
    readonly kind: 'tmpfs' | 'rlimit',
  ) {}

  /** A directory of `sizeMB` (tmpfs) or an ordinary one (rlimit fallback). */
  static async create(prefix: string, sizeMB: number): Promise<FullDisk> {
    const dir = mkdtempSync(join(tmpdir(), `walstream-fault-${prefix}-`));
    const mounted = await run(['mount', '-t', 'tmpfs', '-o', `size=${sizeMB}m,mode=0700`, `walstream-${prefix}`, dir], { check: false, timeoutMs: 10_000 }).catch(() => undefined);
    return new FullDisk(dir, mounted?.exitCode === 0 ? 'tmpfs' : 'rlimit');
  }

  /** Bytes free in the directory's file system. */
  freeBytes(): number {
    const st = statfsSync(this.dir);
    return st.bavail * st.bsize;
  }

  /** Make the disk full, leaving about `leaveBytes` (tmpfs), or limit the receiver `pid`'s file size. */
  async fill(pid: number, leaveBytes = 16 * 1024): Promise<void> {
    if (this.kind === 'tmpfs') {
      this.ballast = join(this.dir, 'ballast');
      const fd = openSync(this.ballast, 'w');
      const chunk = Buffer.alloc(64 * 1024, 0xaa);
      try {
        for (;;) {
          const want = this.freeBytes() - leaveBytes;
          if (want <= 0) break;
          writeSync(fd, chunk, 0, Math.min(chunk.length, want));
        }
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
      } finally {
        closeSync(fd);
      }
    } else {
      await run(['prlimit', '--pid', String(pid), `--fsize=${leaveBytes}:unlimited`]);
      this.limited = pid;
    }
  }

  /** Space returns. */
  async free(): Promise<void> {
    if (this.ballast) {
      unlinkSync(this.ballast);
      this.ballast = undefined;
    }
    if (this.limited !== undefined) {
      await run(['prlimit', '--pid', String(this.limited), '--fsize=unlimited:unlimited'], { check: false });
      this.limited = undefined;
    }
  }

  /** The error a full disk gives here. */
  get errorPattern(): RegExp {
    return this.kind === 'tmpfs' ? /ENOSPC|no space left/i : /EFBIG|file too large/i;
  }

  async remove(): Promise<void> {
    if (this.kind === 'tmpfs') await run(['umount', '-l', this.dir], { check: false, timeoutMs: 10_000 });
    rmSync(this.dir, { recursive: true, force: true });
  }
}
