// A storage driver over a directory (storage/driver.ts), laid out as pg_receivewal lays out its
// output: flat files whose suffix tells how they are compressed (X, X.gz, X.zst; in progress
// X.partial, X.gz.partial), a key "a/b" in subdirectory a, and the record of each object beside
// the data in .walstream-meta/<key>.sha256 ("<sha256> <compression> <size>\n"), so a
// pg_receivewal directory reads as an archive and an archive can be handed to its tools.
//
// How a create stays atomic and never overwrites (the pgBackRest write: temp file, sync file,
// publish, sync path):
//  1. the bytes go to a temp file in .walstream-meta/tmp/ (same file system), fsynced;
//  2. the record is published with link(2), which fails with EEXIST when it exists: the record is
//     the one claim per key whatever the suffix, and it is in place (directory fsynced) before the
//     data file appears, so every data file walstream wrote is verifiable;
//  3. the data file is published with link(2) too (EEXIST when another writer won), then the temp
//     name is removed and the directory fsynced.
// Temp files are named for their writer (storage/leftovers.ts); that directory exists only while
// creates are in flight or a killed one left its temp file there (the last create out removes
// it), so at rest the archive holds pg_receivewal's layout and the records. A crash leaves at
// worst such a temp file (never listed) or a record without data, which a later create of the
// same bytes reuses and one of different bytes takes over once it is stale. Every create first
// removes the temp files of writers that are gone; scanLeftovers/removeLeftovers (status, verify,
// cleanup) also look for the temp files earlier versions left beside the data, the records and
// the quarantine copies. A stored file is never replaced (no overwrite): writes here are atomic,
// so a damaged file is bit rot or tampering, for the operator (refusal says what to do).
import { link, lstat, mkdir, open, readFile, readdir, rename, rmdir, stat, unlink, type FileHandle } from 'node:fs/promises';
import type { Dirent, Stats } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fsyncDir } from '../../sink/fsutil.js';
import { readWhole } from '../../util/read-whole.js';
import { DEFAULT_LEFTOVER_AGE_MS, removeFound, scanDirectory, tempName } from '../leftovers.js';
import { IntegrityError, StorageError, type Compression, type Leftover, type LeftoverOptions, type LeftoverRemoval, type LeftoverScan } from '../types.js';
import type { CreateOptions, CreateResult, Driver, DriverObject, ListPageOptions, NewMeta, ObjectMeta, ReadResult } from '../driver.js';
import { fs } from '../../util/lazy.js';

const { constants: fsConstants, existsSync, writeSync } = fs;

export const META_DIR = '.walstream-meta';
/** Where earlier versions kept quarantine copies' temp files too (scanned for leftovers). */
export const QUARANTINE_DIR = 'quarantine';
/** Where creates write their temp files, below META_DIR. */
export const TEMP_DIR = 'tmp';
const RECORD_SUFFIX = '.sha256';
/** Objects stat'ed at once by a listing (and the size of its pages). */
const LIST_BATCH = 32;

export interface LocalDriverOptions {
  /** What `description` shows (default: the directory as given). */
  description?: string;
  /** A record without its data file older than this is a crashed create's leftover (default 60 s). */
  staleClaimMs?: number;
  /** How long a create waits for another writer's data file to appear before deciding (default 2 s). */
  claimWaitMs?: number;
  /** A temp file whose writer cannot be checked (another host) is a leftover once older than this (default 1 hour). */
  leftoverAgeMs?: number;
}

/** Where one key lives. */
interface Place {
  dataDir: string;
  base: string;
  metaDir: string;
  record: string;
}

/** One stored file found for a key. */
interface Found {
  path: string;
  file: string;
  compression: Compression;
  stat: Stats;
}

interface ChecksumRecord {
  sha: string;
  compression: Compression | undefined;
  size: number | undefined;
}

/** The suffix of a stored file, as pg_receivewal names its compressed files. */
const SUFFIX: Readonly<Record<Compression, string>> = { none: '', gzip: '.gz', zstd: '.zst' };

/** What link(2) answers where a second name cannot be made (createLinked then copies instead). */
const UNLINKABLE_CODES = new Set(['EXDEV', 'EPERM', 'EMLINK', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/** Errno codes after which trying again later may succeed. */
const TRANSIENT_CODES = new Set(['ENOSPC', 'EDQUOT', 'EAGAIN', 'EBUSY', 'EMFILE', 'ENFILE', 'EINTR', 'ETIMEDOUT', 'EIO', 'ESTALE']);

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** The files that may hold `base`, in the order reads prefer them. */
function candidates(base: string): { file: string; compression: Compression }[] {
  const out: { file: string; compression: Compression }[] = [
    { file: base, compression: 'none' },
    { file: `${base}.gz`, compression: 'gzip' },
    { file: `${base}.zst`, compression: 'zstd' },
  ];
  if (base.endsWith('.partial')) {
    // pg_receivewal (and walstream's own receiver) put the compression suffix before .partial.
    const stem = base.slice(0, -'.partial'.length);
    out.push({ file: `${stem}.gz.partial`, compression: 'gzip' }, { file: `${stem}.zst.partial`, compression: 'zstd' });
  }
  return out;
}

/** The key part a stored file holds, or undefined for anything else. */
function parseStoredFile(file: string): { base: string; compression: Compression; rank: number } | undefined {
  const partial = /^(.+)\.(gz|zst)\.partial$/.exec(file);
  const suffixed = /^(.+)\.(gz|zst)$/.exec(file);
  const m = partial ?? suffixed;
  const base = partial ? `${partial[1]!}.partial` : suffixed ? suffixed[1]! : file;
  const compression: Compression = m ? (m[2] === 'gz' ? 'gzip' : 'zstd') : 'none';
  const rank = candidates(base).findIndex((c) => c.file === file);
  return rank < 0 ? undefined : { base, compression, rank };
}

function parseRecord(text: string): ChecksumRecord | undefined {
  const m = /^([0-9a-f]{64})(?:[ \t]+(none|gzip|zstd))?(?:[ \t]+(\d+))?[ \t]*\r?\n?$/.exec(text);
  if (!m) return undefined;
  return { sha: m[1]!, compression: m[2] as Compression | undefined, size: m[3] === undefined ? undefined : Number(m[3]) };
}

/** mkdir -p with mode 0700; the entries of directories it creates are made durable unless noSync. */
async function ensureDir(path: string, noSync: boolean): Promise<void> {
  const first = await mkdir(path, { recursive: true, mode: 0o700 });
  if (first === undefined || noSync) return;
  for (let d = path; ; d = dirname(d)) {
    await fsyncDir(dirname(d));
    if (d === first || dirname(d) === d) break;
  }
}

async function unlinkQuiet(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (err) {
    if (errno(err) === 'ENOENT') return false;
    throw err;
  }
}

async function statOrUndefined(path: string, follow = true): Promise<Stats | undefined> {
  try {
    return await (follow ? stat(path) : lstat(path));
  } catch (err) {
    if (errno(err) === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * link(2) or rename(2) of a create's own temp file failed: ENOENT means the temp file went away
 * before it was published, which only a cleanup that took it for another host's leftover does
 * (storage/leftovers.ts: not before the leftover age). Nothing was published: trying again helps.
 */
function tempGone(err: unknown, tmp: string): unknown {
  if (errno(err) !== 'ENOENT' || existsSync(tmp)) return err;
  return new StorageError(`the temp file ${tmp} was removed before it was published (by a cleanup that took it for a leftover?); try again`, true, { cause: err });
}

export class LocalDriver implements Driver {
  readonly description: string;
  readonly bodyChecksum = false;
  readonly readsInto = true;
  readonly writesPieces = true;
  readonly listScans = true;
  readonly dir: string;
  private readonly staleClaimMs: number;
  private readonly claimWaitMs: number;
  private readonly ensured = new Set<string>();
  private readonly tempDir: string;
  private readonly leftoverAgeMs: number;
  /** A look for dead writers' temp files in progress, which concurrent creates share. */
  private sweeping: Promise<void> | undefined;

  constructor(dir: string, opts: LocalDriverOptions = {}) {
    if (dir === '') throw new StorageError('the archive directory must not be empty', false);
    this.dir = resolve(dir);
    this.description = opts.description ?? dir;
    this.staleClaimMs = opts.staleClaimMs ?? 60_000;
    this.claimWaitMs = opts.claimWaitMs ?? 2_000;
    this.tempDir = join(this.dir, META_DIR, TEMP_DIR);
    this.leftoverAgeMs = opts.leftoverAgeMs ?? DEFAULT_LEFTOVER_AGE_MS;
  }

  async create(key: string, body: Buffer, meta: NewMeta, opts: CreateOptions = {}): Promise<CreateResult> {
    return this.publish(
      key,
      opts.noSync ?? false,
      false,
      (base, noSync) => this.writeTemp(base, body, noSync),
      () => meta,
      body,
    );
  }

  /** create from a stream: written to the temp file as it comes (memory: one piece), then published the same way. */
  async createStream(key: string, body: AsyncIterable<Buffer>, meta: () => NewMeta, opts: CreateOptions = {}): Promise<CreateResult> {
    return this.publish(key, opts.noSync ?? false, true, (base, noSync) => this.writeTemp(base, body, noSync, opts.blocking === true), meta, undefined);
  }

  /**
   * createStream for the whole of `file` without copying it: the temp file is a second name of
   * `file` (link(2)), published the same way, and `body` (that file's bytes, read by the caller)
   * is only consumed. `file` must be complete and durable already (a receiver's finished segment:
   * fsynced before its rename) and never written again, as the object then shares its bytes.
   * Undefined, nothing of `body` read, where it cannot be linked: a file that is not a regular
   * file of this user's, one with group or other permissions (an object is private to its
   * owner), or one that link(2) refuses (another file system, a file system without hard links).
   */
  async createLinked(key: string, file: string, body: AsyncIterable<Buffer>, meta: () => NewMeta, opts: CreateOptions = {}): Promise<CreateResult | undefined> {
    const tmp = await this.guard(`cannot store "${key}"`, () => this.linkTemp(this.place(key).base, file));
    if (tmp === undefined) return undefined;
    let handed = false;
    try {
      const consume = async (): Promise<string> => {
        handed = true;
        try {
          for await (const _ of body) {
            // the caller takes the checksum as the bytes go by; the object already holds them
          }
        } catch (err) {
          await this.dropTemp(tmp);
          throw err;
        }
        return tmp;
      };
      return await this.publish(key, opts.noSync ?? false, true, consume, meta, undefined);
    } finally {
      if (!handed) await this.dropTemp(tmp);
    }
  }

  async linksFrom(dir: string): Promise<boolean> {
    try {
      const [ours, theirs] = await Promise.all([stat(this.dir), stat(dir)]);
      return ours.dev === theirs.dev;
    } catch {
      return false;
    }
  }

  /** A new temp name for `target` linked to `file` (createLinked), or undefined where that cannot be. */
  private async linkTemp(target: string, file: string): Promise<string | undefined> {
    const st = await lstat(file);
    if (!st.isFile() || (st.mode & 0o077) !== 0 || (process.getuid !== undefined && st.uid !== process.getuid())) return undefined;
    for (let attempt = 0; ; attempt++) {
      const tmp = join(this.tempDir, tempName(target));
      try {
        await mkdir(this.tempDir, { recursive: true, mode: 0o700 });
        await link(file, tmp);
        return tmp;
      } catch (err) {
        const code = errno(err);
        if (code !== undefined && UNLINKABLE_CODES.has(code)) return undefined;
        // Another create's dropTemp removed the temp directory meanwhile (writeTemp): again.
        if (code === 'ENOENT' && attempt < 100 && existsSync(file)) continue;
        throw err;
      }
    }
  }

  async readStream(key: string, opts: { into?: Buffer | (() => Promise<Buffer>) } = {}): Promise<{ object: DriverObject; meta: ObjectMeta; body: AsyncIterable<Buffer>; file: string } | undefined> {
    return this.guard(`cannot read "${key}"`, async () => {
      const found = await this.locate(key);
      if (!found) return undefined;
      let fh: FileHandle;
      try {
        fh = await open(found.path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
      } catch (err) {
        if (errno(err) === 'ENOENT') return undefined;
        if (errno(err) === 'ELOOP') throw new IntegrityError(key, `${found.path} is a symbolic link, not a file walstream stored; move it aside`);
        throw err;
      }
      const rec = await this.readRecord(key).catch(async (err: unknown) => {
        await fh.close();
        throw err;
      });
      const st = await fh.stat();
      const object: DriverObject = { key, storedSize: st.size, modified: st.mtime, meta: metaOf(found, rec) };
      const body = opts.into ? this.readPieces(key, fh, opts.into) : (fh.createReadStream({ highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>);
      return { object, meta: metaOf(found, rec), body, file: found.file };
    });
  }

  /**
   * A file's bytes read into `into` again and again, or into the buffer `into()` gives for each
   * piece (no fresh memory per piece: on a virtual machine, touching new pages costs more than
   * reading the file). The file is closed when the pieces end or the reader stops asking (return()).
   */
  private async *readPieces(key: string, fh: FileHandle, into: Buffer | (() => Promise<Buffer>)): AsyncGenerator<Buffer> {
    try {
      for (let pos = 0; ; ) {
        const buf = typeof into === 'function' ? await into() : into;
        const { bytesRead } = await this.guard(`cannot read "${key}"`, () => fh.read(buf, 0, buf.length, pos));
        if (bytesRead === 0) return;
        pos += bytesRead;
        yield buf.subarray(0, bytesRead);
      }
    } finally {
      await fh.close();
    }
  }

  /**
   * Write the temp file, claim the key with the record, publish the data file (see the top of
   * this file). `drain`: a streamed body is consumed also when the key is taken (its checksum is
   * wanted). `ours`: the bytes, to tell a file of exactly them (a whole-buffer create).
   */
  private async publish(key: string, noSync: boolean, drain: boolean, writeTmp: (base: string, noSync: boolean) => Promise<string>, metaNow: () => NewMeta, ours: Buffer | undefined): Promise<CreateResult> {
    await this.sweepTemps();
    return this.guard(`cannot store "${key}"`, async () => {
      if (!drain && (await this.locate(key))) return { created: false };
      const p = this.place(key);
      await this.ensureDir(p.dataDir, noSync);
      await this.ensureDir(p.metaDir, noSync);
      const tmp = await writeTmp(p.base, noSync);
      try {
        const meta = metaNow();
        if (drain && (await this.locate(key))) return { created: false };
        const file = p.base + SUFFIX[meta.compression];
        const finalPath = join(p.dataDir, file);
        const claim = await this.claim(key, p, meta, noSync);
        if (claim === 'taken') return { created: false };
        try {
          await link(tmp, finalPath);
        } catch (err) {
          if (errno(err) !== 'EEXIST') {
            if (claim === 'new') await unlinkQuiet(p.record);
            throw tempGone(err, tmp);
          }
          // Another writer published this very file first. Our record describes our bytes: it
          // stays only on a file of exactly those bytes (one not written through a record, e.g.
          // by pg_receivewal, must not be checked against it).
          if (claim === 'new' && (ours === undefined || !(await readFile(finalPath).catch(() => undefined))?.equals(ours))) await unlinkQuiet(p.record);
          return { created: false };
        }
        // A stale-claim takeover may have replaced the record while we were between the steps.
        const rec = await this.readRecord(key).catch(() => undefined);
        if (rec?.sha !== meta.sha256) {
          await unlinkQuiet(finalPath);
          return { created: false };
        }
        if (!noSync) await fsyncDir(p.dataDir);
        return { created: true, modified: (await stat(finalPath)).mtime };
      } finally {
        await this.dropTemp(tmp);
      }
    });
  }

  async read(key: string): Promise<ReadResult | undefined> {
    return this.guard(`cannot read "${key}"`, async () => {
      const found = await this.locate(key);
      if (!found) return undefined;
      let body: Buffer;
      try {
        // Never through a symbolic link (one swapped in after locate fails with ELOOP).
        body = await readWhole(found.path, { noFollow: true });
      } catch (err) {
        if (errno(err) === 'ENOENT') return undefined; // deleted since
        if (errno(err) === 'ELOOP') throw new IntegrityError(key, `${found.path} is a symbolic link, not a file walstream stored; move it aside`);
        throw err;
      }
      const rec = await this.readRecord(key);
      return { key, body, owned: true, storedSize: body.length, modified: found.stat.mtime, meta: metaOf(found, rec), file: found.file };
    });
  }

  async stat(key: string): Promise<DriverObject | undefined> {
    return this.guard(`cannot look up "${key}"`, async () => {
      const found = await this.locate(key);
      return found ? objectOf(key, found, await this.readRecord(key)) : undefined;
    });
  }

  async *list(prefix: string, opts: ListPageOptions = {}): AsyncIterable<DriverObject[]> {
    const what = `cannot list ${this.description}`;
    const sub = prefix.slice(0, prefix.lastIndexOf('/') + 1);
    const dir = join(this.dir, sub);
    const names = await this.guard(what, async () => {
      let entries: Dirent[];
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if (errno(err) === 'ENOENT') return [];
        throw err;
      }
      // One file per key: the one a read would pick.
      const best = new Map<string, { file: string; compression: Compression; rank: number }>();
      for (const e of entries) {
        if (e.name.startsWith('.') || e.isDirectory()) continue;
        const parsed = parseStoredFile(e.name);
        if (!parsed) continue;
        const key = sub + parsed.base;
        if (!key.startsWith(prefix) || (opts.accept && !opts.accept(key))) continue;
        const held = best.get(key);
        if (!held || parsed.rank < held.rank) best.set(key, { file: e.name, compression: parsed.compression, rank: parsed.rank });
      }
      return [...best].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0));
    });
    const one = async ([key, b]: [string, { file: string; compression: Compression }]): Promise<DriverObject | undefined> => {
      const st = await statOrUndefined(join(dir, b.file));
      if (!st?.isFile()) return undefined; // deleted since, or not a file
      const found: Found = { path: join(dir, b.file), file: b.file, compression: b.compression, stat: st };
      // One damaged record must not hide the whole archive: get reports it.
      const rec = await this.readRecord(key).catch((err: unknown) => {
        if (err instanceof IntegrityError) return 'damaged' as const;
        throw err;
      });
      return rec === 'damaged' ? { ...objectOf(key, found, undefined), meta: { sha256: undefined, compression: found.compression, size: undefined } } : objectOf(key, found, rec);
    };
    for (let i = 0; i < names.length; i += LIST_BATCH) {
      const page = await this.guard(what, () => Promise.all(names.slice(i, i + LIST_BATCH).map(one)));
      yield page.filter((x): x is DriverObject => x !== undefined);
    }
  }

  async delete(key: string): Promise<void> {
    return this.guard(`cannot delete "${key}"`, async () => {
      const p = this.place(key);
      let removed = false;
      for (const c of candidates(p.base)) {
        try {
          if (await unlinkQuiet(join(p.dataDir, c.file))) removed = true;
        } catch (err) {
          if (errno(err) !== 'ENOTDIR') throw err;
          return; // the archive directory is not there: nothing to delete
        }
      }
      await unlinkQuiet(p.record).catch((err: unknown) => {
        if (errno(err) !== 'ENOTDIR') throw err;
      });
      if (removed) await fsyncDir(p.dataDir);
    });
  }

  refusal(key: string, read: ReadResult, why: string, quarantinedAs: string): string {
    const p = this.place(key);
    return (
      `"${key}" is already in the archive, but the stored file ${join(p.dataDir, read.file ?? p.base)} cannot be kept: ${why}; ` +
      `a local archive never replaces a stored file, so it was not overwritten (the new copy is kept as "${quarantinedAs}"). ` +
      `Check the disk; then move that file and its checksum record ${p.record} (if any) aside by hand (e.g. into ${join(this.dir, QUARANTINE_DIR)}/), and archive the file again`
    );
  }

  /**
   * The temp files in the archive: those of creates (.walstream-meta/tmp/, every file there), and
   * those earlier versions wrote beside the data, the records and quarantine copies (dot-named
   * temp names only). Judged by storage/leftovers.ts.
   */
  async scanLeftovers(opts: LeftoverOptions = {}): Promise<LeftoverScan> {
    return this.guard(`cannot look for leftover temp files in ${this.description}`, async () => {
      const places: [string, string, boolean][] = [
        [this.tempDir, `${META_DIR}/${TEMP_DIR}/`, true],
        [this.dir, '', false],
        [join(this.dir, QUARANTINE_DIR), `${QUARANTINE_DIR}/`, false],
        [join(this.dir, META_DIR), `${META_DIR}/`, false],
        [join(this.dir, META_DIR, QUARANTINE_DIR), `${META_DIR}/${QUARANTINE_DIR}/`, false],
      ];
      const found: Leftover[] = [];
      for (const [dir, shownAs, all] of places) found.push(...(await scanDirectory(dir, { ...opts, shownAs, all })));
      return { leftovers: found.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)), unavailable: undefined };
    });
  }

  /** Remove the temp files whose writer is gone (dead, or older than the leftover age when it cannot be checked). */
  async removeLeftovers(opts: LeftoverOptions & { dryRun?: boolean } = {}): Promise<LeftoverRemoval> {
    const { leftovers } = await this.scanLeftovers(opts);
    return removeFound(leftovers, opts);
  }

  async close(): Promise<void> {
    await this.sweeping;
  }

  // --- internals ---

  private place(key: string): Place {
    const cut = key.lastIndexOf('/') + 1;
    const sub = key.slice(0, cut);
    const base = key.slice(cut);
    const metaDir = join(this.dir, META_DIR, sub);
    return { dataDir: join(this.dir, sub), base, metaDir, record: join(metaDir, base + RECORD_SUFFIX) };
  }

  /** The stored file for `key`, in read-preference order, or undefined. */
  private async locate(key: string): Promise<Found | undefined> {
    const p = this.place(key);
    // Every candidate is looked at at once; the first found in candidate order counts.
    const seen = await Promise.all(
      candidates(p.base).map(async (c) => {
        const path = join(p.dataDir, c.file);
        try {
          return { c, path, st: await statOrUndefined(path, false) };
        } catch (err) {
          if (errno(err) === 'ENOTDIR' && p.dataDir !== this.dir) return { c, path, st: undefined }; // the subdirectory is a file
          throw err;
        }
      }),
    );
    for (const { c, path, st } of seen) {
      if (!st) continue;
      // A symbolic link is never a stored object: walstream publishes regular files only, and a
      // link could serve another object's bytes (or any file) under this key.
      if (st.isSymbolicLink()) throw new IntegrityError(key, `${path} is a symbolic link, not a file walstream stored; move it aside`);
      if (!st.isFile()) throw new StorageError(`${path} is not a regular file`, false);
      return { path, file: c.file, compression: c.compression, stat: st };
    }
    return undefined;
  }

  private async readRecord(key: string): Promise<ChecksumRecord | undefined> {
    const path = this.place(key).record;
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      const code = errno(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw err;
    }
    const rec = parseRecord(text);
    if (!rec) throw new IntegrityError(key, `its checksum record ${path} is unreadable`);
    return rec;
  }

  /** Publish the record with link(2): the one claim on `key` whatever the suffix. */
  private async claim(key: string, p: Place, meta: NewMeta, noSync: boolean): Promise<'new' | 'shared' | 'taken'> {
    const tmp = await this.writeTemp(p.base + RECORD_SUFFIX, Buffer.from(`${meta.sha256} ${meta.compression} ${meta.size}\n`), noSync);
    try {
      for (let round = 0; round < 5; round++) {
        try {
          await link(tmp, p.record);
          if (!noSync) await fsyncDir(p.metaDir);
          return 'new';
        } catch (err) {
          if (errno(err) !== 'EEXIST') throw tempGone(err, tmp);
        }
        const held = await this.readRecord(key).catch((err: unknown) => {
          if (err instanceof IntegrityError) return undefined; // garbage: treat as a stale claim below
          throw err;
        });
        const heldStat = await statOrUndefined(p.record);
        if (!heldStat) continue; // removed meanwhile (a delete): claim again
        if (held && held.sha === meta.sha256 && (held.compression === undefined || held.compression === meta.compression)) {
          // Same bytes, same file name: whichever link of the data file wins, both agree.
          return 'shared';
        }
        // Another writer's claim: its data file should follow at once.
        if (await this.waitForData(key)) return 'taken';
        if (Date.now() - heldStat.mtimeMs < this.staleClaimMs) {
          throw new StorageError(`another put of "${key}" is in progress (its checksum record has no data file yet); try again`, true);
        }
        // Left by a create that crashed between its record and its data file: take it over.
        await rename(tmp, p.record).catch((err: unknown) => {
          throw tempGone(err, tmp);
        });
        if (!noSync) await fsyncDir(p.metaDir);
        return 'new';
      }
      throw new StorageError(`cannot claim "${key}": its checksum record keeps changing`, true);
    } finally {
      await unlinkQuiet(tmp);
    }
  }

  private async waitForData(key: string): Promise<Found | undefined> {
    const deadline = Date.now() + this.claimWaitMs;
    for (;;) {
      const found = await this.locate(key);
      if (found || Date.now() >= deadline) return found;
      await sleep(10);
    }
  }

  /**
   * A writer's own look for leftovers before each create: the temp files in .walstream-meta/tmp/
   * whose writer is gone (storage/leftovers.ts). Cheap: that directory is absent at rest and holds
   * only the temp files of creates in flight. It never fails a create: the create reports what is
   * wrong with the directory (it writes its own temp file there), and a temp file that could not
   * be removed is reported by status and verify and removed by cleanup.
   */
  private async sweepTemps(): Promise<void> {
    this.sweeping ??= (async () => {
      try {
        await removeFound(await scanDirectory(this.tempDir, { maxAgeMs: this.leftoverAgeMs, all: true }));
      } catch {
        // (see above)
      } finally {
        this.sweeping = undefined;
      }
    })();
    return this.sweeping;
  }

  /** Write a new temp file for `target`, making the temp directory again if the last create out removed it meanwhile. */
  private async writeTemp(target: string, data: Buffer | AsyncIterable<Buffer>, noSync: boolean, blocking = false): Promise<string> {
    // Another create's dropTemp may remove the directory at any moment, between mkdir's own steps
    // too (mkdir -p then fails with ENOENT): make it again and retry.
    for (let attempt = 0; ; attempt++) {
      const tmp = join(this.tempDir, tempName(target));
      let fh: FileHandle;
      try {
        await mkdir(this.tempDir, { recursive: true, mode: 0o700 });
        fh = await open(tmp, 'wx', 0o600);
      } catch (err) {
        if (errno(err) !== 'ENOENT' || attempt >= 100) throw err;
        continue;
      }
      try {
        if (Buffer.isBuffer(data)) await fh.writeFile(data);
        else await writeCoalesced(fh, data, { blocking, writeback: !noSync });
        if (!noSync) await fh.sync();
      } catch (err) {
        await fh.close().catch(() => undefined);
        await unlinkQuiet(tmp).catch(() => undefined);
        throw err;
      }
      await fh.close();
      return tmp;
    }
  }

  /** Remove a create's temp file, then the temp directory if that was the last one in it. */
  private async dropTemp(tmp: string): Promise<void> {
    await unlinkQuiet(tmp);
    // ENOTEMPTY: other creates are in flight (or a killed one's temp file waits for a sweep); the
    // directory is only tidiness, so no failure here fails a create.
    await rmdir(this.tempDir).catch(() => undefined);
  }

  /** ensureDir once per directory and driver (a directory removed meanwhile fails the create: the caller retries). */
  private async ensureDir(path: string, noSync: boolean): Promise<void> {
    if (this.ensured.has(path)) return;
    await ensureDir(path, noSync);
    if (!noSync) this.ensured.add(path);
  }

  private async guard<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StorageError) throw err;
      const code = errno(err);
      throw new StorageError(`${what} in ${this.description}: ${(err as Error).message}`, code !== undefined && TRANSIENT_CODES.has(code), { cause: err });
    }
  }
}

function metaOf(found: Found, rec: ChecksumRecord | undefined): ObjectMeta {
  return { sha256: rec?.sha, compression: found.compression, size: rec?.size };
}

function objectOf(key: string, found: Found, rec: ChecksumRecord | undefined): DriverObject {
  return { key, storedSize: found.stat.size, modified: found.stat.mtime, meta: metaOf(found, rec) };
}

/** Pieces gathered into one write of at least this many bytes (a write per small CopyData piece costs a syscall each). */
const WRITE_CHUNK = 1024 * 1024;
/** A piece this large is written as it is, not copied. */
const DIRECT_WRITE = 256 * 1024;
/** A streamed body's data sync is started each time this many more bytes are written (writeCoalesced)... */
const WRITEBACK_BYTES = 4 * 1024 * 1024;
/** ...unless this many are running: one of the thread pool's four threads stays free for other work. */
const WRITEBACK_RUNNING = 3;

/**
 * A streamed body written in writes of at least WRITE_CHUNK bytes: small pieces are copied into
 * one buffer (before any await, so a piece that is a view into a reused buffer is safe); a piece
 * of DIRECT_WRITE bytes or more goes straight to the file (push's 512 kB pieces: no copy, no
 * fresh buffer). Done with each piece before asking for the next (writesPieces).
 * `blocking` (CreateOptions.blocking): each write a blocking system call. `writeback`: every
 * WRITEBACK_BYTES a data sync is started on the thread pool (at most WRITEBACK_RUNNING at once;
 * blocking writes never let one finish before the end) while the writing goes on, so that the
 * disk writes the file as it grows and the caller's fsync at the end waits only for the last few
 * megabytes (a 16 MB segment: about 4 ms instead of 14 on this project's machine). Those syncs
 * are only a head start: the caller's fsync stays the one that makes the file durable, and a
 * failed one fails the write (after a failed sync a later one may succeed without the data
 * having reached the disk: never count on that).
 */
export async function writeCoalesced(fh: FileHandle, body: AsyncIterable<Buffer>, o: { blocking: boolean; writeback: boolean }): Promise<void> {
  let pending: Buffer | undefined;
  let used = 0;
  let unsynced = 0;
  const syncing = new Set<Promise<void>>();
  let syncFailed: { err: unknown } | undefined;
  const writeAll = async (b: Buffer, end: number): Promise<void> => {
    for (let off = 0; off < end; ) off += o.blocking ? writeSync(fh.fd, b, off, end - off) : (await fh.write(b, off, end - off)).bytesWritten;
    unsynced += end;
    if (o.writeback && unsynced >= WRITEBACK_BYTES && syncing.size < WRITEBACK_RUNNING) {
      unsynced = 0;
      const s: Promise<void> = fh.datasync().then(
        () => {
          syncing.delete(s);
        },
        (err: unknown) => {
          syncFailed ??= { err };
          syncing.delete(s);
        },
      );
      syncing.add(s);
    }
  };
  const flush = async (): Promise<void> => {
    if (pending) await writeAll(pending, used);
    used = 0;
  };
  try {
    for await (const b of body) {
      if (b.length >= DIRECT_WRITE) {
        await flush();
        await writeAll(b, b.length);
        continue;
      }
      if (used + b.length > WRITE_CHUNK) await flush();
      pending ??= Buffer.allocUnsafe(WRITE_CHUNK);
      b.copy(pending, used);
      used += b.length;
      if (used === WRITE_CHUNK) await flush();
    }
    await flush();
  } finally {
    // Settled before the caller syncs or closes the file; a failure of the body's own is the one
    // reported (it leaves from here, before the check below).
    await Promise.all(syncing);
  }
  if (syncFailed) throw syncFailed.err;
}
