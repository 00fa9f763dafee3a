// walstream restore: a new data directory from a base backup in the archive (backup/layout.ts),
// set up so that `pg_ctl start` recovers from the archive with no other step, as pg_basebackup -R
// leaves one (recovery settings appended to postgresql.auto.conf, recovery.signal or
// standby.signal) plus the restore_command.
//
// Guarantees:
// - Nothing is written into a directory that is not empty, nor into a tablespace location that is
//   not; a backup of another database system than the archive's, an incomplete one, or a recovery
//   target before the backup's end is refused before anything is written.
// - Every file comes from the archive as a stream (storage getStream: each stored object's
//   SHA-256 checked at its end, encrypted chunks authenticated before use), is checked against the
//   backup's manifest (size and checksum as its bytes go by; files missing or extra), and fsynced.
// - Until everything is written and verified the directory cannot start: global/pg_control is
//   written under another name and the marker file WALSTREAM_RESTORE_INCOMPLETE stays; the signal
//   file is written last. A failure leaves it so, and the error says what to delete.
import { createHash } from 'node:crypto';
import { closeSync, close as closeFd, constants as fsConstants, fsync as fsyncFd, openSync, writeSync } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, rename, symlink, unlink, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { readIdentity } from '../archive/identity.js';
import { fsyncDir } from '../sink/fsutil.js';
import { StorageError, type ArchiveStore } from '../storage/types.js';
import type { Logger } from '../util/log.js';
import { parseLsn } from '../wal/lsn.js';
import { findBackup, manifestName, type BackupObject, type BackupRecord } from './layout.js';
import { ManifestVerifier, parseManifest, tablespacePrefix, type BackupManifest } from './manifest.js';
import { readTar } from './tar.js';

/** Left in the data directory while a restore runs (and after one that failed). */
export const INCOMPLETE_MARKER = 'WALSTREAM_RESTORE_INCOMPLETE';

/** Where pg_control waits until everything else is written and verified. */
const PG_CONTROL = 'global/pg_control';
const PG_CONTROL_HELD = 'global/pg_control.walstream-restoring';

export type RecoveryTarget = { kind: 'time'; value: string } | { kind: 'lsn'; value: string } | { kind: 'name'; value: string };

export interface RestoreOptions {
  /** The archive to restore from (opened for reading, with its keys). */
  store: ArchiveStore;
  /** The new data directory: created (mode 0700) when missing; an existing one must be empty. */
  directory: string;
  /** A backup name, or "latest" (default): the newest complete backup. */
  backup?: string;
  target?: RecoveryTarget;
  /** recovery_target_action; PostgreSQL's default (pause) when unset. */
  targetAction?: 'pause' | 'promote' | 'shutdown';
  /** recovery_target_timeline: "latest" (PostgreSQL's default), "current" or a timeline number. */
  targetTimeline?: string;
  /** Set up a standby (standby.signal) instead of a recovery to a target (recovery.signal). */
  standby?: boolean;
  /** With standby: primary_conninfo. */
  primaryConninfo?: string;
  /** Tablespace locations: the location on the server backed up → where to restore it. */
  tablespaceMapping?: ReadonlyMap<string, string>;
  /**
   * restore_command: the program and its arguments before "fetch %f %p" (node and walstream's
   * bin, absolute), and the arguments after (the archive and its options). Each is shell-quoted.
   */
  restoreCommand: { program: readonly string[]; fetchArgs: readonly string[] };
  /** Skip fsync (tests only). */
  noSync?: boolean;
  log: Logger;
}

export interface RestoreResult {
  backup: BackupRecord;
  directory: string;
  files: number;
  bytes: number;
  tablespaces: { oid: number; location: string }[];
  signal: 'recovery.signal' | 'standby.signal';
  /** The settings appended to postgresql.auto.conf. */
  settings: [string, string][];
}

export class RestoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RestoreError';
  }
}

/** A word for a POSIX shell: as is when plainly safe (%f and %p stay bare), else in single quotes. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_%./:=@,+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A postgresql.conf string value: single-quoted, quotes and backslashes doubled (pg_basebackup's escape_quotes). */
export function confQuote(s: string): string {
  return `'${s.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/** restore_command for the given program and fetch arguments. */
export function restoreCommandLine(program: readonly string[], fetchArgs: readonly string[]): string {
  return [...program, 'fetch', '%f', '%p', ...fetchArgs].map(shellQuote).join(' ');
}

const TIME_RE = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?\s*(Z|UTC|[+-]\d{2}(?::?\d{2})?)?$/i;

/**
 * A recovery_target_time as walstream reads it to compare it with the backup's end: ISO 8601 or
 * PostgreSQL's timestamptz output ("2026-12-04 08:51:36.123+00"); without a zone, UTC is refused
 * as a guess: the server would read it in its own TimeZone.
 */
export function parseTargetTime(v: string): Date {
  const m = TIME_RE.exec(v.trim());
  if (!m || m[8] === undefined) throw new RestoreError(`cannot read the target time "${v}": give a date, a time and a zone, e.g. "2026-12-04 08:51:36+00"`);
  let zone = m[8].toUpperCase();
  if (zone === 'UTC') zone = 'Z';
  else if (zone !== 'Z') zone = zone.length === 3 ? `${zone}:00` : zone.includes(':') ? zone : `${zone.slice(0, 3)}:${zone.slice(3)}`;
  const d = new Date(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}${m[7] ?? ''}${zone}`);
  if (Number.isNaN(d.getTime())) throw new RestoreError(`cannot read the target time "${v}"`);
  return d;
}

/** A path inside a tar that is safe to write under a directory: relative, no "..", no empty parts. */
function safeRelative(name: string, where: string): string {
  const clean = name.replace(/^\.\/+/, '');
  if (clean === '' || clean === '.') return '';
  if (isAbsolute(clean) || clean.split('/').some((p) => p === '..' || p === '') || clean.includes('\0')) {
    throw new RestoreError(`${where} holds the unsafe path ${JSON.stringify(name)}: refused`);
  }
  return clean;
}

async function isEmptyDir(dir: string): Promise<'missing' | 'empty' | 'not-empty' | 'not-a-directory'> {
  try {
    const st = await lstat(dir);
    if (!st.isDirectory()) return 'not-a-directory';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
    throw err;
  }
  return (await readdir(dir)).length === 0 ? 'empty' : 'not-empty';
}

/** Make `dir` a new or empty directory of mode 0700; RestoreError otherwise. */
async function prepareDirectory(dir: string, what: string): Promise<void> {
  const state = await isEmptyDir(dir);
  if (state === 'not-empty') throw new RestoreError(`${what} ${dir} is not empty: restore only into a new or empty directory`);
  if (state === 'not-a-directory') throw new RestoreError(`${what} ${dir} exists and is not a directory`);
  if (state === 'missing') await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
}

/** tablespace_map lines ("<oid> <path>"). */
function parseTablespaceMap(data: Buffer): { oid: string; path: string }[] {
  const out: { oid: string; path: string }[] = [];
  for (const line of data.toString('utf8').split('\n')) {
    if (line === '') continue;
    const sp = line.indexOf(' ');
    if (sp <= 0) throw new RestoreError(`the backup's tablespace_map has an invalid line: ${JSON.stringify(line)}`);
    out.push({ oid: line.slice(0, sp), path: line.slice(sp + 1).replace(/\r$/, '') });
  }
  return out;
}

interface Extraction {
  files: number;
  bytes: number;
  dirs: Set<string>;
  /** The files written, to fsync once all are (none with noSync). */
  written?: string[];
  /** The fsyncs of large files, started as each is written (none with noSync). */
  syncs?: BackgroundSyncs;
}

/** A file of this many bytes and more is fsynced as soon as it is written, in the background. */
const BACKGROUND_SYNC_BYTES = 4 << 20;
/** How many of those fsyncs run at once (each holds one of libuv's four threads; reads need one). */
const BACKGROUND_SYNCS = 2;

/**
 * The fsyncs of a restore's large files, started as soon as each is written so that the disk
 * writes it back while the next files are written; each file stays open until its fsync is done.
 * Small files are left to fsyncAll: an fsync is a journal commit, which holds up the creation of
 * the next files, and a large file's writing-back is what an fsync waits for longest.
 */
class BackgroundSyncs {
  private readonly running = new Set<Promise<void>>();
  private failure: Error | undefined;

  /** Take over `fd` (written to the end): fsync it, then close it. Waits while BACKGROUND_SYNCS run. */
  async add(fd: number, path: string): Promise<void> {
    while (this.running.size >= BACKGROUND_SYNCS) await Promise.race(this.running);
    const done: Promise<void> = new Promise<void>((resolve) => {
      fsyncFd(fd, (err) => {
        if (err) this.failure ??= new Error(`cannot fsync ${path}: ${err.message}`);
        closeFd(fd, () => {
          this.running.delete(done);
          resolve();
        });
      });
    });
    this.running.add(done);
    if (this.failure) throw this.failure;
  }

  /** Every fsync done (and its file closed); the first failure, if any, thrown. */
  async drain(): Promise<void> {
    while (this.running.size > 0) await Promise.all(this.running);
    if (this.failure) throw this.failure;
  }
}

/** How many fsyncs run at once (libuv runs four at a time by default; the rest queue behind). */
const SYNCS_IN_FLIGHT = 8;

/**
 * fsync each of `paths` (files or directories), `SYNCS_IN_FLIGHT` at a time: once all of a
 * restore's files are written, as pg_basebackup fsyncs the directory it wrote (fsync_pgdata)
 * before it reports success, opening each file again (Linux reports a write-back error to a
 * descriptor opened after it, as long as no one saw it before). An fsync per small file as it is
 * written instead costs a journal commit each, which holds up the creation of the next files;
 * after the writes, the first commit takes the metadata of them all and most of the others find
 * theirs done. The first failure is thrown, once all ran.
 */
async function fsyncAll(paths: readonly string[]): Promise<void> {
  let next = 0;
  let failure: Error | undefined;
  const worker = async (): Promise<void> => {
    while (next < paths.length) {
      const path = paths[next++]!;
      try {
        const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
        try {
          await fh.sync();
        } finally {
          await fh.close();
        }
      } catch (err) {
        failure ??= new Error(`cannot fsync ${path}: ${(err as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(SYNCS_IN_FLIGHT, paths.length) }, worker));
  if (failure) throw failure;
}

/**
 * Restore backup `opts.backup` from the archive into `opts.directory` and set it up to recover.
 * RestoreError (one line) for anything refused or found wrong; the archive's own errors
 * (StorageError, IntegrityError...) pass through. On failure after writing began, the directory
 * is left unable to start, and the error says to delete it.
 */
export async function restoreBackup(opts: RestoreOptions): Promise<RestoreResult> {
  const { store, log } = opts;
  const directory = resolve(opts.directory);
  if (opts.standby && opts.target) throw new RestoreError('--standby follows its primary: it takes no recovery target');
  if (!opts.standby && opts.primaryConninfo !== undefined) throw new RestoreError('--primary-conninfo applies to --standby only');
  if (opts.targetTimeline !== undefined && !/^(?:latest|current|[1-9][0-9]{0,9})$/.test(opts.targetTimeline))
    throw new RestoreError(`invalid target timeline "${opts.targetTimeline}" (latest, current or a number)`);

  // What to restore, and whether it may be.
  let record: BackupRecord;
  try {
    record = await findBackup(store, opts.backup ?? 'latest');
  } catch (err) {
    if (err instanceof StorageError && !err.transient) throw new RestoreError(err.message);
    throw err;
  }
  if (record.serverVersion < 120000) throw new RestoreError(`backup ${record.name} is of PostgreSQL ${record.serverVersion}: restore needs 12 or later (recovery.signal)`);
  const identity = await readIdentity(store);
  if (identity === undefined) {
    log.warn(`${store.description} has no identity record: cannot check that backup ${record.name} (system ${record.systemId}) belongs to its WAL`);
  } else {
    if (identity.systemIdentifier.toString() !== record.systemId) {
      throw new RestoreError(`backup ${record.name} is of database system ${record.systemId}, but ${store.description} holds WAL of system ${identity.systemIdentifier}: refused`);
    }
    if (identity.segmentSize !== record.walSegmentSize) throw new RestoreError(`backup ${record.name} has WAL segments of ${record.walSegmentSize} bytes, the archive ${identity.segmentSize}: refused`);
  }
  if (opts.target?.kind === 'lsn') {
    let lsn: bigint;
    try {
      lsn = parseLsn(opts.target.value);
    } catch {
      throw new RestoreError(`cannot read the target LSN "${opts.target.value}" (e.g. 0/3000060)`);
    }
    if (lsn < parseLsn(record.endLsn)) throw new RestoreError(`target LSN ${opts.target.value} is before the end of backup ${record.name} (${record.endLsn}): choose an earlier backup or a later target`);
  }
  if (opts.target?.kind === 'time') {
    const t = parseTargetTime(opts.target.value);
    if (t.getTime() < new Date(record.endTime).getTime())
      throw new RestoreError(`target time ${opts.target.value} is before the end of backup ${record.name} (${record.endTime}): choose an earlier backup or a later target`);
  }
  if (opts.target?.kind === 'name' && (opts.target.value === '' || opts.target.value.length > 63)) throw new RestoreError('a target name is 1 to 63 characters');
  if (!store.getStream) throw new RestoreError(`${store.description} cannot read streamed objects`);

  const manifestData = (await store.get(manifestName(record.name))).data;
  let manifest: BackupManifest;
  try {
    manifest = parseManifest(manifestData, manifestName(record.name));
  } catch (err) {
    throw new RestoreError((err as Error).message);
  }
  if (manifest.systemIdentifier !== undefined && manifest.systemIdentifier !== record.systemId)
    throw new RestoreError(`the manifest of backup ${record.name} is of system ${manifest.systemIdentifier}, its record of ${record.systemId}: refused`);

  // Tablespaces and where each goes.
  const mapping = new Map<string, string>();
  for (const [from, to] of opts.tablespaceMapping ?? []) {
    if (!isAbsolute(from) || !isAbsolute(to)) throw new RestoreError(`tablespace mapping ${from}=${to}: both locations must be absolute paths`);
    mapping.set(normalize(from), normalize(to));
  }
  const tablespaces = record.objects.filter((o): o is BackupObject & { oid: number; location: string } => o.kind === 'tablespace' && o.oid !== undefined && o.location !== undefined);
  const used = new Set<string>();
  const locations = new Map<number, string>();
  for (const t of tablespaces) {
    const to = mapping.get(normalize(t.location));
    if (to !== undefined) used.add(normalize(t.location));
    const loc = to ?? t.location;
    if (!isAbsolute(loc)) throw new RestoreError(`tablespace ${t.oid} has the location "${loc}", not an absolute path: map it with --tablespace-mapping`);
    if (loc === directory || loc.startsWith(directory + sep)) throw new RestoreError(`tablespace ${t.oid} would go to ${loc}, inside the data directory: map it elsewhere`);
    locations.set(t.oid, loc);
  }
  for (const from of mapping.keys())
    if (!used.has(from)) throw new RestoreError(`--tablespace-mapping ${from}: backup ${record.name} has no tablespace there (${tablespaces.map((t) => t.location).join(', ') || 'it has none'})`);

  // Every target directory new or empty, before anything is written.
  const dataState = await isEmptyDir(directory);
  if (dataState === 'not-empty') throw new RestoreError(`data directory ${directory} is not empty: restore only into a new or empty directory`);
  for (const [oid, loc] of locations) {
    const st = await isEmptyDir(loc);
    if (st === 'not-empty' || st === 'not-a-directory') throw new RestoreError(`tablespace ${oid}'s location ${loc} is not an empty directory: restore it elsewhere with --tablespace-mapping`);
  }
  await prepareDirectory(directory, 'data directory');
  const cleanupHint = (): string => {
    const extra = [...locations.values()];
    return `; ${directory} is incomplete and cannot start: delete it${extra.length ? ` and ${extra.join(', ')}` : ''} before restoring again`;
  };
  await writeFile(join(directory, INCOMPLETE_MARKER), `walstream restore of backup ${record.name} did not finish: this directory is incomplete; delete it and restore again\n`, { mode: 0o600 });

  log.info(
    `restoring backup ${record.name} (PostgreSQL ${record.serverVersion}, system ${record.systemId}, ${record.startLsn} to ${record.endLsn} on timeline ${record.timeline}, ${record.size} bytes) from ${store.description} into ${directory}`,
  );
  const verifier = new ManifestVerifier(manifest);
  const totals: Extraction = { files: 0, bytes: 0, dirs: new Set([directory]), ...(opts.noSync ? {} : { written: [], syncs: new BackgroundSyncs() }) };
  try {
    for (const loc of locations.values()) await prepareDirectory(loc, 'tablespace location');
    let tablespaceMap: Buffer | undefined;
    const base = record.objects.find((o) => o.kind === 'base')!;
    await extract(store, base, directory, '', verifier, totals, opts, {
      // tablespace_map (PostgreSQL 15+, or with TABLESPACE_MAP): written at the end with the restored locations.
      hold: (path) => path === 'tablespace_map',
      held: (_path, data) => {
        tablespaceMap = data;
      },
      symlinkTarget: (path, target) => {
        // pg_tblspc/<oid> links (before PostgreSQL 15, or without TABLESPACE_MAP): to the restored location.
        const m = /^pg_tblspc\/(\d+)$/.exec(path);
        if (!m) throw new RestoreError(`backup ${record.name} holds a symbolic link ${path} -> ${target} outside pg_tblspc/: refused`);
        return locations.get(Number(m[1])) ?? target;
      },
    });
    for (const t of tablespaces) {
      await extract(store, t, locations.get(t.oid)!, tablespacePrefix(t.oid), verifier, totals, opts, {});
    }
    await totals.syncs?.drain();
    if (totals.written) await fsyncAll(totals.written);
    const result = verifier.finish();
    if (!result.ok)
      throw new RestoreError(`backup ${record.name} does not match its manifest: ${result.problems[0]!.message}${result.problems.length > 1 ? ` (and ${result.problems.length - 1} more problems)` : ''}`);

    // Tablespaces: the links in pg_tblspc, and tablespace_map naming the restored locations
    // (the server recreates the links from it when it starts).
    if (tablespaceMap !== undefined) {
      const entries = parseTablespaceMap(tablespaceMap);
      const lines = entries.map((e) => `${e.oid} ${locations.get(Number(e.oid)) ?? e.path}\n`).join('');
      await writeDurable(join(directory, 'tablespace_map'), Buffer.from(lines), 0o600, opts.noSync);
    }
    for (const [oid, loc] of locations) {
      const link = join(directory, 'pg_tblspc', String(oid));
      const st = await lstat(link).catch(() => undefined);
      if (st?.isSymbolicLink()) await unlink(link);
      else if (st) throw new RestoreError(`pg_tblspc/${oid} in the backup is not a symbolic link`);
      await mkdir(join(directory, 'pg_tblspc'), { recursive: true, mode: 0o700 });
      await symlink(loc, link);
      totals.dirs.add(join(directory, 'pg_tblspc'));
    }
    // pg_wal must be there (BASE_BACKUP sends it, empty with its archive_status).
    for (const d of ['pg_wal', 'pg_wal/archive_status']) {
      await mkdir(join(directory, d), { recursive: true, mode: 0o700 });
      totals.dirs.add(join(directory, d));
    }

    // Recovery settings, appended to postgresql.auto.conf as pg_basebackup -R does.
    const settings: [string, string][] = [['restore_command', restoreCommandLine(opts.restoreCommand.program, opts.restoreCommand.fetchArgs)]];
    if (opts.target?.kind === 'time') settings.push(['recovery_target_time', opts.target.value]);
    if (opts.target?.kind === 'lsn') settings.push(['recovery_target_lsn', opts.target.value]);
    if (opts.target?.kind === 'name') settings.push(['recovery_target_name', opts.target.value]);
    if (opts.targetAction !== undefined) settings.push(['recovery_target_action', opts.targetAction]);
    if (opts.targetTimeline !== undefined) settings.push(['recovery_target_timeline', opts.targetTimeline]);
    if (opts.standby && opts.primaryConninfo !== undefined) settings.push(['primary_conninfo', opts.primaryConninfo]);
    const autoConf = join(directory, 'postgresql.auto.conf');
    const fh = await open(autoConf, 'a', 0o600);
    try {
      const text = `# Recovery settings written by walstream restore of backup ${record.name} on ${new Date().toISOString()}\n${settings.map(([k, v]) => `${k} = ${confQuote(v)}\n`).join('')}`;
      await fh.write(text);
      if (!opts.noSync) await fh.sync();
    } finally {
      await fh.close();
    }

    // Everything durable, then pg_control under its name, then the signal, then the marker gone.
    if (!opts.noSync) await fsyncAll([...totals.dirs]);
    await rename(join(directory, PG_CONTROL_HELD), join(directory, PG_CONTROL)).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') throw new RestoreError(`backup ${record.name} has no ${PG_CONTROL}`);
      throw err;
    });
    const signal = opts.standby ? 'standby.signal' : 'recovery.signal';
    await writeDurable(join(directory, signal), Buffer.alloc(0), 0o600, opts.noSync);
    await unlink(join(directory, INCOMPLETE_MARKER));
    if (!opts.noSync) {
      await fsyncDir(join(directory, 'global'));
      await fsyncDir(directory);
    }
    return {
      backup: record,
      directory,
      files: totals.files,
      bytes: totals.bytes,
      tablespaces: [...locations].map(([oid, location]) => ({ oid, location })),
      signal,
      settings,
    };
  } catch (err) {
    await totals.syncs?.drain().catch(() => undefined);
    const msg = (err as Error).message ?? String(err);
    throw new RestoreError(`${msg}${cleanupHint()}`);
  }
}

interface ExtractHooks {
  /** Files to keep in memory instead of writing (small ones only), handed to held() once verified. */
  hold?: (path: string) => boolean;
  held?: (path: string, data: Buffer) => void;
  /** Where a symbolic link at `path` (relative to the data directory) should point. */
  symlinkTarget?: (path: string, target: string) => string;
}

/** open(2) flags of a file the restore writes: a new one, never over anything. */
const CREATE_NEW = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;

/** All of `b` written at the file's position. */
function writeAll(fd: number, b: Uint8Array): void {
  for (let at = 0; at < b.length; ) at += writeSync(fd, b, at, b.length - at);
}

/** Write a whole small file, fsynced (O_EXCL: never over anything). */
async function writeDurable(path: string, data: Buffer, mode: number, noSync?: boolean): Promise<void> {
  const fh = await open(path, 'wx', mode);
  try {
    await fh.write(data);
    if (!noSync) await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Extract one tar object of the backup into `root`, verifying each file against the manifest (paths behind `prefix`). */
async function extract(store: ArchiveStore, obj: BackupObject, root: string, prefix: string, verifier: ManifestVerifier, totals: Extraction, opts: RestoreOptions, hooks: ExtractHooks): Promise<void> {
  // Transient pieces: the tar reader and the writes below are done with each before the next.
  const { info, stream } = await store.getStream!(obj.name, { transient: true });
  if (info.checksum !== undefined && info.checksum !== obj.sha256) throw new RestoreError(`${obj.name} in the archive has SHA-256 ${info.checksum}, but the backup's record says ${obj.sha256}: refused`);
  // The store checks the object against its own record's SHA-256 as it ends (compared with the
  // backup's above); only an object stored without one is hashed here.
  const sha = info.checksum === undefined ? createHash('sha256') : undefined;
  let streamed = 0;
  async function* counted(): AsyncGenerator<Buffer> {
    for await (const b of stream) {
      sha?.update(b);
      streamed += b.length;
      yield b;
    }
  }
  for await (const e of readTar(counted(), { label: obj.name })) {
    const rel = safeRelative(e.name, obj.name);
    if (rel === '') continue;
    const path = prefix + rel;
    const dest = join(root, ...rel.split('/'));
    if (e.type === 'dir') {
      verifier.nonFile(path, 'directory');
      await mkdir(dest, { recursive: true, mode: e.mode & 0o777 || 0o700 });
      totals.dirs.add(dest);
      continue;
    }
    if (e.type === 'symlink') {
      verifier.nonFile(path, 'symbolic link');
      const target = hooks.symlinkTarget ? hooks.symlinkTarget(path, e.linkTarget ?? '') : undefined;
      if (target === undefined) throw new RestoreError(`${obj.name} holds a symbolic link ${rel}: refused`);
      await symlink(target, dest);
      continue;
    }
    if (e.type !== 'file') throw new RestoreError(`${obj.name} holds ${rel}, a ${e.type} entry: refused`);
    const check = verifier.begin(path, e.size);
    const fail = (): never => {
      const p = verifier.problems.at(-1);
      throw new RestoreError(`${obj.name} does not match the backup's manifest: ${p?.message ?? path}`);
    };
    if (hooks.hold?.(path)) {
      const parts: Buffer[] = [];
      for await (const chunk of e.content) {
        check?.update(chunk);
        parts.push(Buffer.from(chunk));
      }
      if (check?.end()) fail();
      hooks.held?.(path, Buffer.concat(parts));
      continue;
    }
    const name = path === PG_CONTROL ? join(root, ...PG_CONTROL_HELD.split('/')) : dest;
    const mode = e.mode & 0o777 || 0o600;
    let fd: number;
    try {
      fd = openSync(name, CREATE_NEW, mode);
    } catch (err) {
      // A tar need not carry its directories' entries.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await mkdir(dirname(name), { recursive: true, mode: 0o700 });
      totals.dirs.add(dirname(name));
      fd = openSync(name, CREATE_NEW, mode);
    }
    let syncing = false;
    try {
      for await (const chunk of e.content) {
        check?.update(chunk);
        writeAll(fd, chunk);
      }
      if (check?.end()) fail();
      if (totals.syncs && e.size >= BACKGROUND_SYNC_BYTES) {
        syncing = true;
        await totals.syncs.add(fd, name);
      } else {
        totals.written?.push(name);
      }
    } finally {
      if (!syncing) closeSync(fd);
    }
    totals.files++;
    totals.bytes += e.size;
  }
  // The whole object went by (the tar's end blocks and padding too): its SHA-256 and size as recorded.
  const digest = sha?.digest('hex');
  if ((digest !== undefined && digest !== obj.sha256) || streamed !== obj.size)
    throw new RestoreError(`${obj.name} read back ${streamed} bytes${digest !== undefined ? ` with SHA-256 ${digest}` : ''}, but the backup's record says ${obj.size} bytes, ${obj.sha256}: refused`);
  opts.log.verbose(`restored ${obj.name} (${streamed} bytes)`);
}
