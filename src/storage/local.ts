// An archive in a directory, laid out as pg_receivewal lays out its output (flat files, the
// compression told by the suffix: X, X.gz, X.zst; in-progress files X.partial, X.gz.partial), so a
// pg_receivewal directory reads as an archive and an archive can be handed to pg_receivewal's
// tools. Checksums live beside the data in .walstream-meta/<name>.sha256.
//
// How a put stays atomic and never overwrites (the pgBackRest write: temp file, sync file,
// publish, sync path):
//  1. the compressed bytes go to a dot-named temp file in the same directory, fsynced;
//  2. the checksum record is published with link(2), which fails with EEXIST when it exists: the
//     record is the one claim per name whatever the suffix, and it is in place (directory
//     fsynced) before the data file appears, so every data file walstream wrote is verifiable;
//  3. the data file is published with link(2) too (EEXIST when another writer won), then the
//     temp name is removed and the directory fsynced.
// Temp files are written in .walstream-meta/tmp/ (the same file system: link(2) publishes them
// from there), named for their writer (storage/leftovers.ts); that directory exists only while
// puts are in flight or a killed put left its temp file there (the last put out removes it), so at
// rest the archive holds pg_receivewal's layout and the records. A crash leaves at worst such a
// temp file (never listed) or a record without data, which a later put of the same bytes reuses
// and one of different bytes takes over once it is stale. Every put first removes the temp files
// of writers that are gone (cheap: that directory holds the puts in flight only), so killed
// writers do not fill the disk; scanLeftovers/removeLeftovers (status, verify, cleanup) also look
// for the temp files earlier versions left beside the data, checksum records and quarantine copies.
// A stored file is never replaced, not even one that fails its checksum or a plain copy in an
// encrypted archive: writes here are atomic, so that is bit rot or tampering, and the put fails
// with ConflictError telling the operator what to move aside (types.ts).
import { link, lstat, mkdir, open, readFile, readdir, rename, rmdir, stat, unlink } from 'node:fs/promises';
import { constants as fsConstants, existsSync, type Dirent, type Stats } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fsyncDir } from '../sink/fsutil.js';
import { readWhole, sha256Owned } from '../util/bulk.js';
import { compressionSuffix } from '../sink/segment-file.js';
import { assertCompressionAvailable, compress, decompress, sha256Hex } from './codec.js';
import { QUARANTINE_ATTEMPTS, byName, isArchiveName, isWalName, judgeStored, listedUnder, mapLimit, plainRefused, quarantineName, unauthenticatedError } from './common.js';
import { decodeStored, encodeStored, type Keyring } from './encryption.js';
import { DEFAULT_LEFTOVER_AGE_MS, removeFound, scanDirectory, tempName } from './leftovers.js';
import {
  ConflictError,
  IntegrityError,
  NotFoundError,
  QUARANTINE_PREFIX,
  StorageError,
  assertArchiveName,
  type ArchiveStore,
  type Compression,
  type GetResult,
  type Leftover,
  type LeftoverOptions,
  type LeftoverRemoval,
  type LeftoverScan,
  type ListOptions,
  type ObjectInfo,
  type PutOptions,
  type PutResult,
} from './types.js';

export const META_DIR = '.walstream-meta';
export const QUARANTINE_DIR = 'quarantine';
/** Where puts write their temp files, below META_DIR. */
export const TEMP_DIR = 'tmp';
const RECORD_SUFFIX = '.sha256';

export interface LocalStoreOptions {
  /** What `description` shows (default: the directory as given). */
  description?: string;
  /** A checksum record without its data file older than this is a crashed put's leftover (default 60 s). */
  staleClaimMs?: number;
  /** How long a put waits for another writer's data file to appear before deciding (default 2 s). */
  claimWaitMs?: number;
  /** Encrypt new objects with the first key, decrypt with any (storage/encryption.ts). */
  keyring?: Keyring;
  /** A temp file whose writer cannot be checked (another host) is a leftover once older than this (default 1 hour). */
  leftoverAgeMs?: number;
}

/** Where one name lives. */
interface Place {
  dataDir: string;
  base: string;
  metaDir: string;
  record: string;
}

/** One stored file found for a name. */
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

interface Prepared {
  data: Buffer;
  stored: Buffer;
  sha: string;
  compression: Compression;
  noSync: boolean;
  /** The keys the object is written with (none for a put with `unencrypted`). */
  keyring: Keyring | undefined;
  /** An unencrypted copy under the name is damaged (common.ts judgeStored). */
  plainIsDamaged: boolean;
}

/**
 * 'damaged': what is stored cannot be kept (common.ts judgeStored), but a local archive never
 * replaces a stored file: an error for the operator; 'unauthenticated': an error.
 */
type Outcome = PutResult | 'conflict' | { damaged: Found; why: string } | { unauthenticated: string };

type Claim = { kind: 'new' } | { kind: 'shared' } | { kind: 'decided'; outcome: Outcome };

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

/** The name a stored file holds, or undefined for anything else. */
function parseStoredFile(file: string): { base: string; compression: Compression; rank: number } | undefined {
  let base: string;
  let compression: Compression;
  const partial = /^(.+)\.(gz|zst)\.partial$/.exec(file);
  const suffixed = /^(.+)\.(gz|zst)$/.exec(file);
  if (partial) {
    base = `${partial[1]!}.partial`;
    compression = partial[2] === 'gz' ? 'gzip' : 'zstd';
  } else if (suffixed) {
    base = suffixed[1]!;
    compression = suffixed[2] === 'gz' ? 'gzip' : 'zstd';
  } else {
    base = file;
    compression = 'none';
  }
  const rank = candidates(base).findIndex((c) => c.file === file);
  return rank < 0 ? undefined : { base, compression, rank };
}

function parseRecord(text: string): ChecksumRecord | undefined {
  const m = /^([0-9a-f]{64})(?:[ \t]+(none|gzip|zstd))?(?:[ \t]+(\d+))?[ \t]*\r?\n?$/.exec(text);
  if (!m) return undefined;
  return { sha: m[1]!, compression: m[2] as Compression | undefined, size: m[3] === undefined ? undefined : Number(m[3]) };
}

/** Read a stored file, never through a symbolic link (one swapped in after locate fails with ELOOP). */
async function readStored(path: string): Promise<Buffer> {
  return readWhole(path, { noFollow: true });
}

/** Create `path` (must not exist), write `data`, fsync unless noSync. Mode 0600. */
async function writeNew(path: string, data: Buffer, noSync: boolean): Promise<void> {
  const fh = await open(path, 'wx', 0o600);
  try {
    await fh.writeFile(data);
    if (!noSync) await fh.sync();
  } finally {
    await fh.close();
  }
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
 * link(2) or rename(2) of a put's own temp file failed: ENOENT means the temp file went away
 * before it was published, which only a cleanup that took it for another host's leftover does
 * (storage/leftovers.ts: not before the leftover age). Nothing was published: trying again helps.
 */
function tempGone(err: unknown, tmp: string): unknown {
  if (errno(err) !== 'ENOENT' || existsSync(tmp)) return err;
  return new StorageError(`the temp file ${tmp} was removed before it was published (by a cleanup that took it for a leftover?); try again`, true, { cause: err });
}

export class LocalStore implements ArchiveStore {
  readonly description: string;
  readonly dir: string;
  private readonly staleClaimMs: number;
  private readonly claimWaitMs: number;
  private readonly keyring: Keyring | undefined;
  private archiveEncrypted = false;
  private readonly ensured = new Set<string>();
  private readonly tempDir: string;
  private readonly leftoverAgeMs: number;
  /** A look for dead writers' temp files in progress, which concurrent puts share. */
  private sweeping: Promise<void> | undefined;

  constructor(dir: string, opts: LocalStoreOptions = {}) {
    if (dir === '') throw new StorageError('the archive directory must not be empty', false);
    this.dir = resolve(dir);
    this.description = opts.description ?? dir;
    this.staleClaimMs = opts.staleClaimMs ?? 60_000;
    this.claimWaitMs = opts.claimWaitMs ?? 2_000;
    this.keyring = opts.keyring;
    this.tempDir = join(this.dir, META_DIR, TEMP_DIR);
    this.leftoverAgeMs = opts.leftoverAgeMs ?? DEFAULT_LEFTOVER_AGE_MS;
  }

  setArchiveEncrypted(encrypted: boolean): void {
    this.archiveEncrypted = encrypted;
  }

  async put(name: string, data: Buffer, opts: PutOptions = {}): Promise<PutResult> {
    assertArchiveName(name);
    const compression = opts.compression ?? 'none';
    assertCompressionAvailable(compression);
    await this.sweepTemps();
    return this.guard(`cannot store "${name}"`, async () => {
      const keyring = opts.unencrypted ? undefined : this.keyring;
      const stored = encodeStored(keyring, name, compression, await compress(data, compression));
      const obj: Prepared = {
        data,
        stored,
        sha: opts.sha256 ?? sha256Hex(data),
        compression,
        noSync: opts.noSync ?? false,
        keyring,
        plainIsDamaged: keyring !== undefined && (keyring.requireEncrypted || this.archiveEncrypted) && isWalName(name),
      };
      const outcome = await this.store(name, obj);
      if (typeof outcome === 'object' && 'unauthenticated' in outcome) throw unauthenticatedError(name, outcome.unauthenticated);
      if (outcome !== 'conflict' && !('damaged' in outcome)) return outcome;
      // A conflict, or a stored file that cannot be kept: never replaced here (local writes are
      // atomic, so a damaged file is bit rot or tampering: the operator decides); the new copy is
      // kept in quarantine/.
      const when = new Date();
      const quarantined: Prepared = { ...obj, plainIsDamaged: false };
      for (let attempt = 0; attempt < QUARANTINE_ATTEMPTS; attempt++) {
        const q = quarantineName(name, when, attempt);
        const r = await this.store(q, quarantined);
        if (!(typeof r === 'object' && 'status' in r)) continue;
        if (outcome === 'conflict') throw new ConflictError(name, q);
        const found = outcome.damaged;
        throw new ConflictError(
          name,
          q,
          `"${name}" is already in the archive, but the stored file ${found.path} cannot be kept: ${outcome.why}; ` +
            `a local archive never replaces a stored file, so it was not overwritten (the new copy is kept as "${q}"). ` +
            `Check the disk; then move that file and its checksum record ${this.place(name).record} (if any) aside by hand (e.g. into ${join(this.dir, QUARANTINE_DIR)}/), and archive the file again`,
        );
      }
      throw new StorageError(`"${name}" conflicts with the archive and no free quarantine name was found`, false);
    });
  }

  async get(name: string): Promise<GetResult> {
    assertArchiveName(name);
    return this.guard(`cannot read "${name}"`, async () => {
      const found = await this.locate(name);
      if (!found) throw new NotFoundError(name);
      let stored: Buffer;
      try {
        stored = await readStored(found.path);
      } catch (err) {
        if (errno(err) === 'ENOENT') throw new NotFoundError(name); // deleted since
        if (errno(err) === 'ELOOP') throw new IntegrityError(name, `${found.path} is a symbolic link, not a file walstream stored; move it aside`);
        throw err;
      }
      const rec = await this.readRecord(name);
      const { payload, keyId } = decodeStored(this.keyring, name, found.compression, stored, plainRefused(this.keyring?.requireEncrypted === true, name));
      const storedSize = stored.length;
      let data = await this.decode(name, found, payload, rec);
      if (rec) {
        // Every buffer here was read or decoded by this call: its memory may be handed over.
        const hashed = await sha256Owned(data);
        data = hashed.data;
        if (hashed.hex !== rec.sha) throw new IntegrityError(name, `SHA-256 of ${found.file} is ${hashed.hex}, the recorded one ${rec.sha}`);
      }
      return {
        data,
        info: {
          name,
          size: data.length,
          storedSize,
          checksum: rec?.sha,
          compression: found.compression,
          modified: found.stat.mtime,
          ...(keyId !== undefined ? { keyId } : {}),
        },
      };
    });
  }

  async head(name: string): Promise<ObjectInfo | undefined> {
    assertArchiveName(name);
    return this.guard(`cannot look up "${name}"`, async () => {
      const found = await this.locate(name);
      return found ? this.infoOf(name, found) : undefined;
    });
  }

  async list(prefix = '', opts: ListOptions = {}): Promise<ObjectInfo[]> {
    return this.guard(`cannot list ${this.description}`, async () => {
      let dir = this.dir;
      let namePrefix = '';
      if (prefix.startsWith(QUARANTINE_PREFIX)) {
        dir = join(this.dir, QUARANTINE_DIR);
        namePrefix = QUARANTINE_PREFIX;
      } else if (prefix.includes('/')) {
        return [];
      }
      let entries: Dirent[];
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if (errno(err) === 'ENOENT') return [];
        throw err;
      }
      // One file per name: the one a read would pick.
      const best = new Map<string, { file: string; compression: Compression; rank: number }>();
      for (const e of entries) {
        if (e.name.startsWith('.') || e.isDirectory()) continue;
        const parsed = parseStoredFile(e.name);
        if (!parsed) continue;
        const name = namePrefix + parsed.base;
        if (!isArchiveName(name) || !listedUnder(name, prefix)) continue;
        const held = best.get(name);
        if (!held || parsed.rank < held.rank) best.set(name, { file: e.name, compression: parsed.compression, rank: parsed.rank });
      }
      const one = async ([name, b]: [string, { file: string; compression: Compression }]): Promise<ObjectInfo | undefined> => {
        const st = await statOrUndefined(join(dir, b.file));
        if (!st || !st.isFile()) return undefined; // deleted since, or not a file
        const found: Found = { path: join(dir, b.file), file: b.file, compression: b.compression, stat: st };
        // One damaged checksum record must not hide the whole archive: get reports it.
        return this.infoOf(name, found).catch((err: unknown) => {
          if (err instanceof IntegrityError) return { ...this.infoFrom(name, found, undefined), checksum: undefined };
          throw err;
        });
      };
      const names = [...best].sort(([x], [y]) => byName({ name: x }, { name: y }));
      const out: ObjectInfo[] = [];
      // With a limit, look at the names in order, a few at a time, until enough are found.
      const step = opts.limit !== undefined ? Math.min(32, opts.limit) : names.length;
      for (let i = 0; i < names.length && (opts.limit === undefined || out.length < opts.limit); i += step) {
        const infos = await mapLimit(names.slice(i, i + step), 32, one);
        out.push(...infos.filter((x): x is ObjectInfo => x !== undefined));
      }
      return opts.limit !== undefined ? out.slice(0, opts.limit) : out;
    });
  }

  async delete(name: string): Promise<void> {
    assertArchiveName(name);
    return this.guard(`cannot delete "${name}"`, async () => {
      const p = this.place(name);
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

  /**
   * The temp files in the archive: those of puts (.walstream-meta/tmp/, every file there), and
   * those earlier versions wrote beside the data, the checksum records and quarantine copies
   * (dot-named temp names only). Judged by storage/leftovers.ts.
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
      return { leftovers: found.sort((a, b) => byName(a, b)), unavailable: undefined };
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

  private place(name: string): Place {
    const quarantined = name.startsWith(QUARANTINE_PREFIX);
    const base = quarantined ? name.slice(QUARANTINE_PREFIX.length) : name;
    const dataDir = quarantined ? join(this.dir, QUARANTINE_DIR) : this.dir;
    const metaDir = quarantined ? join(this.dir, META_DIR, QUARANTINE_DIR) : join(this.dir, META_DIR);
    return { dataDir, base, metaDir, record: join(metaDir, base + RECORD_SUFFIX) };
  }

  /** The stored file for `name`, in read-preference order, or undefined. */
  private async locate(name: string): Promise<Found | undefined> {
    const p = this.place(name);
    // Every candidate is looked at at once; the first found in candidate order counts.
    const seen = await Promise.all(
      candidates(p.base).map(async (c) => {
        const path = join(p.dataDir, c.file);
        try {
          return { c, path, st: await statOrUndefined(path, false) };
        } catch (err) {
          if (errno(err) === 'ENOTDIR' && p.dataDir !== this.dir) return { c, path, st: undefined }; // "quarantine" is a file
          throw err;
        }
      }),
    );
    for (const { c, path, st } of seen) {
      if (!st) continue;
      // A symbolic link is never a stored object: walstream publishes regular files only, and a
      // link could serve another segment's bytes (or any file) under this name.
      if (st.isSymbolicLink()) throw new IntegrityError(name, `${path} is a symbolic link, not a file walstream stored; move it aside`);
      if (!st.isFile()) throw new StorageError(`${path} is not a regular file`, false);
      return { path, file: c.file, compression: c.compression, stat: st };
    }
    return undefined;
  }

  private async readRecord(name: string): Promise<ChecksumRecord | undefined> {
    const path = this.place(name).record;
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      const code = errno(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw err;
    }
    const rec = parseRecord(text);
    if (!rec) throw new IntegrityError(name, `its checksum record ${path} is unreadable`);
    return rec;
  }

  private async infoOf(name: string, found: Found): Promise<ObjectInfo> {
    return this.infoFrom(name, found, await this.readRecord(name));
  }

  private infoFrom(name: string, found: Found, rec: ChecksumRecord | undefined): ObjectInfo {
    const size = rec?.size !== undefined ? rec.size : found.stat.size;
    return { name, size, storedSize: found.stat.size, checksum: rec?.sha, compression: found.compression, modified: found.stat.mtime };
  }

  private async decode(name: string, found: Found, stored: Buffer, rec: ChecksumRecord | undefined): Promise<Buffer> {
    // An unverified compressed .partial is an in-progress stream: take what it decodes to.
    const allowTruncated = rec === undefined && name.endsWith('.partial');
    try {
      return await decompress(stored, found.compression, { allowTruncated });
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw new IntegrityError(name, `cannot decompress ${found.file} (${found.compression}): ${(err as Error).message}`);
    }
  }

  /**
   * How the stored file compares with `obj` (common.ts judgeStored). `withRecord` false: the
   * checksum record is ours, not the file's (a file published without a record beat ours).
   */
  private async compare(name: string, found: Found, obj: Prepared, withRecord = true): Promise<Outcome> {
    let stored: Buffer;
    try {
      stored = await readFile(found.path);
    } catch (err) {
      if (errno(err) === 'ENOENT') return 'conflict';
      throw err;
    }
    const rec = withRecord ? await this.readRecord(name) : undefined;
    const verdict = await judgeStored(name, { stored, compression: found.compression, checksum: rec?.sha, size: rec?.size }, obj.data, {
      keyring: obj.keyring,
      plainIsDamaged: obj.plainIsDamaged,
      allowTruncated: name.endsWith('.partial'),
    });
    switch (verdict.kind) {
      case 'identical':
        return { status: 'exists', info: await this.infoOf(name, found) };
      case 'different':
        return 'conflict';
      case 'damaged':
        return { damaged: found, why: verdict.why };
      case 'unauthenticated':
        return { unauthenticated: verdict.keyId };
    }
  }

  /** Store `obj` as `name` unless the name is taken: created, exists (same bytes) or conflict. */
  private async store(name: string, obj: Prepared): Promise<Outcome> {
    const existing = await this.locate(name);
    if (existing) return this.compare(name, existing, obj);

    const p = this.place(name);
    await this.ensureDir(p.dataDir, obj.noSync);
    await this.ensureDir(p.metaDir, obj.noSync);
    const file = p.base + compressionSuffix(obj.compression);
    const finalPath = join(p.dataDir, file);
    const tmp = await this.writeTemp(p.base, obj.stored, obj.noSync);
    try {
      const claim = await this.claim(name, p, obj);
      if (claim.kind === 'decided') return claim.outcome;
      try {
        await link(tmp, finalPath);
      } catch (err) {
        if (errno(err) !== 'EEXIST') {
          if (claim.kind === 'new') await unlinkQuiet(p.record);
          throw tempGone(err, tmp);
        }
        // Another writer published this very file first.
        const st = await stat(finalPath);
        // Our record describes our bytes; a different file that beat us (not written through a
        // record, e.g. by pg_receivewal) must not be checked against it.
        const outcome = await this.compare(name, { path: finalPath, file, compression: obj.compression, stat: st }, obj, claim.kind !== 'new');
        if (!(typeof outcome === 'object' && 'status' in outcome) && claim.kind === 'new') await unlinkQuiet(p.record);
        return outcome;
      }
      // A stale-claim takeover may have replaced the record while we were between the steps.
      const rec = await this.readRecord(name).catch(() => undefined);
      if (rec?.sha !== obj.sha) {
        await unlinkQuiet(finalPath);
        return 'conflict';
      }
      if (!obj.noSync) await fsyncDir(p.dataDir);
      const st = await stat(finalPath);
      return {
        status: 'created',
        info: { name, size: obj.data.length, storedSize: obj.stored.length, checksum: obj.sha, compression: obj.compression, modified: st.mtime },
      };
    } finally {
      await this.dropTemp(tmp);
    }
  }

  /** Publish the checksum record with link(2): the one claim on `name` whatever the suffix. */
  private async claim(name: string, p: Place, obj: Prepared): Promise<Claim> {
    const tmp = await this.writeTemp(p.base + RECORD_SUFFIX, Buffer.from(`${obj.sha} ${obj.compression} ${obj.data.length}\n`), obj.noSync);
    try {
      for (let round = 0; round < 5; round++) {
        try {
          await link(tmp, p.record);
          if (!obj.noSync) await fsyncDir(p.metaDir);
          return { kind: 'new' };
        } catch (err) {
          if (errno(err) !== 'EEXIST') throw tempGone(err, tmp);
        }
        const held = await this.readRecord(name).catch((err: unknown) => {
          if (err instanceof IntegrityError) return undefined; // garbage: treat as a stale claim below
          throw err;
        });
        const heldStat = await statOrUndefined(p.record);
        if (!heldStat) continue; // removed meanwhile (a delete): claim again
        if (held && held.sha === obj.sha && (held.compression === undefined || held.compression === obj.compression)) {
          // Same bytes, same file name: whichever link of the data file wins, both agree.
          return { kind: 'shared' };
        }
        // Another writer's claim: its data file should follow at once.
        const found = await this.waitForData(name);
        if (found) return { kind: 'decided', outcome: await this.compare(name, found, obj) };
        if (Date.now() - heldStat.mtimeMs < this.staleClaimMs) {
          throw new StorageError(`another put of "${name}" is in progress (its checksum record has no data file yet); try again`, true);
        }
        // Left by a put that crashed between its record and its data file: take it over.
        await rename(tmp, p.record).catch((err: unknown) => {
          throw tempGone(err, tmp);
        });
        if (!obj.noSync) await fsyncDir(p.metaDir);
        return { kind: 'new' };
      }
      throw new StorageError(`cannot claim "${name}": its checksum record keeps changing`, true);
    } finally {
      await unlinkQuiet(tmp);
    }
  }

  private async waitForData(name: string): Promise<Found | undefined> {
    const deadline = Date.now() + this.claimWaitMs;
    for (;;) {
      const found = await this.locate(name);
      if (found || Date.now() >= deadline) return found;
      await sleep(10);
    }
  }

  /**
   * A writer's own look for leftovers before each put: the temp files in .walstream-meta/tmp/
   * whose writer is gone (storage/leftovers.ts). Cheap: that directory is absent at rest and holds
   * only the temp files of puts in flight. It never fails a put: the put reports what is wrong with
   * the directory (it writes its own temp file there), and a temp file that could not be removed
   * is reported by status and verify and removed by cleanup.
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

  /** Write a new temp file for `target`, making the temp directory again if the last put out removed it meanwhile. */
  private async writeTemp(target: string, data: Buffer, noSync: boolean): Promise<string> {
    // Another put's dropTemp may remove the directory at any moment, between mkdir's own steps
    // too (mkdir -p then fails with ENOENT): make it again and retry.
    for (let attempt = 0; ; attempt++) {
      const tmp = join(this.tempDir, tempName(target));
      try {
        await mkdir(this.tempDir, { recursive: true, mode: 0o700 });
        await writeNew(tmp, data, noSync);
        return tmp;
      } catch (err) {
        if (errno(err) !== 'ENOENT' || attempt >= 100) throw err;
      }
    }
  }

  /** Remove a put's temp file, then the temp directory if that was the last one in it. */
  private async dropTemp(tmp: string): Promise<void> {
    await unlinkQuiet(tmp);
    // ENOTEMPTY: other puts are in flight (or a killed one's temp file waits for a sweep); the
    // directory is only tidiness, so no failure here fails a put.
    await rmdir(this.tempDir).catch(() => undefined);
  }

  /** ensureDir once per directory and store (a directory removed meanwhile fails the put: the caller retries). */
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
