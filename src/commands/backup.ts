// walstream backup: a base backup taken with BASE_BACKUP over a replication connection
// (session/basebackup.ts) and streamed into the archive (ArchiveStore.putStream: compressed,
// encrypted, its SHA-256 recorded) without touching local disk, as pg_basebackup -Ft -X none
// would write it (pg_basebackup.c BaseBackup), then verified and recorded (backup/layout.ts).
//
// Guarantees:
// - memory stays bounded whatever the database size: the socket is read only as fast as the
//   archive takes the bytes;
// - the record that makes a backup usable is written last, only after every object is stored and
//   checked against the server's manifest (each file's size and CRC-32C, taken as the bytes go into
//   the archive, or with readBack read back from it), and after the WAL from the backup's start to
//   its end is in the archive; a run stopped anywhere before that
//   leaves an interrupted backup, which listBackups never shows as usable and the next run removes
//   once its writer is gone;
// - the archive's identity is checked and claimed as receive does: a backup of another system, or
//   without the key of an encrypted archive, writes nothing.
import { claimArchive, readIdentity, ArchiveEncryptedError, IdentityMismatchError } from '../archive/identity.js';
import { backupName, baseTarName, encodeRecord, listBackups, manifestName, parseBackupObjectName, recordName, tablespaceTarName, RECORD_FORMAT, type BackupObject, type BackupRecord } from '../backup/layout.js';
import { ManifestVerifier, parseManifest, tablespacePrefix, verifyTarEntries, type BackupManifest } from '../backup/manifest.js';
import { crc32c } from '../util/crc32c.js';
import { readTar, type TarEntry } from '../backup/tar.js';
import { buildClientConfig, describeTarget, type ConnectionOptions } from '../session/conninfo.js';
import { ReplicationConnection } from '../session/connection.js';
import { startBaseBackup } from '../session/basebackup.js';
import { DEFAULT_LEFTOVER_AGE_MS, parseTempName, removable } from '../storage/leftovers.js';
import { BACKUP_PREFIX, KeyUnavailableError, type ArchiveStore, type Compression, type ObjectInfo } from '../storage/types.js';
import type { Keyring } from '../storage/encryption.js';
import { zstdAvailable } from '../sink/segment-file.js';
import { formatLsn, type Lsn } from '../wal/lsn.js';
import { lsnToSegNo, walFileName, WAL_NAME_RE } from '../wal/segment.js';
import type { Logger } from '../util/log.js';
import { tee } from '../util/tee.js';

export interface BackupOptions {
  connection: ConnectionOptions;
  /** The archive: a URL (opened and closed here) or an open store. */
  archive: string | ArchiveStore;
  s3Endpoint?: string;
  /** Encrypt what is stored (storage/encryption.ts); with requireEncrypted, record the archive as encrypted. */
  keyring?: Keyring;
  compression: Compression;
  /** CHECKPOINT 'fast' (pg_basebackup -c fast); default spread. */
  fastCheckpoint?: boolean;
  /** MAX_RATE in kB/s (32 to 1048576). */
  maxRateKb?: number;
  /** The backup label (default "walstream backup <name>"). */
  label?: string;
  /**
   * How the WAL from the backup's start to its end reaches the archive: 'none' (archived by
   * others: receive or archive_command), or 'stream' (the backup runs a receiver of its own over a
   * second replication connection for as long as it lasts; needs `archive` as a URL).
   */
  wal: 'none' | 'stream';
  /** How long to wait after the backup for its WAL to be archived (default 60 s). */
  walTimeoutMs?: number;
  /**
   * Read every stored tar back from the archive and check it against the manifest before the
   * record is written. Default: each file's size and CRC-32C are taken as the bytes are stored and
   * checked against the manifest when it comes, without reading anything back.
   */
  readBack?: boolean;
  /** Interrupted backups of earlier runs are removed once their newest object is this old (default storage/leftovers.ts's hour). */
  leftoverAgeMs?: number;
  log: Logger;
  /** Archive bytes done and the server's estimate of the total (PROGRESS). */
  onProgress?: (done: number, total: number | undefined) => void;
  /** Resolves to stop the backup (SIGINT, SIGTERM): nothing is recorded. */
  stop?: Promise<void>;
  /** Clock (tests). */
  now?: () => Date;
}

export interface BackupResult {
  record: BackupRecord;
  durationMs: number;
  /** Interrupted backups of earlier runs removed at the start. */
  removed: string[];
}

/** A condition the user must fix: one line, exit status 1. */
export class BackupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BackupError';
  }
}

const POLL_MS = 500;

export function validateBackupOptions(o: BackupOptions): void {
  if (o.compression === 'zstd' && !zstdAvailable()) throw new BackupError('zstd compression needs Node.js 22.15 or newer');
  if (o.wal !== 'none' && o.wal !== 'stream') throw new BackupError(`--wal ${String(o.wal)} is not supported (use none or stream)`);
  if (o.wal === 'stream' && typeof o.archive !== 'string') throw new BackupError('--wal stream needs the archive as a URL (its receiver opens it)');
  if (o.walTimeoutMs !== undefined && (!Number.isInteger(o.walTimeoutMs) || o.walTimeoutMs < 0)) throw new BackupError('invalid WAL timeout');
}

/** The WAL file names from the segment of `start` to the one holding the byte before `end` (XLByteToPrevSeg), on `tli`. */
export function walRange(tli: number, start: Lsn, end: Lsn, segSize: number): string[] {
  const first = lsnToSegNo(start, segSize);
  const last = end > start ? lsnToSegNo(end - 1n, segSize) : first;
  const out: string[] = [];
  for (let s = first; s <= last; s++) out.push(walFileName(tli, s, segSize));
  return out;
}

/** The backup a leftover (a temp file, a multipart upload) is being written for, if any. */
function backupOfLeftover(name: string): string | undefined {
  const file = name.slice(name.lastIndexOf('/') + 1);
  const target = parseTempName(file)?.target ?? file;
  return /^(\d{8}T\d{6}Z(?:-\d{1,3})?)\.(?:base\.tar|\d{1,10}\.tar|backup_manifest|json)$/.exec(target)?.[1];
}

/**
 * Remove interrupted backups (objects without a record) left by earlier runs: those whose newest
 * object is older than `maxAgeMs` and for which no writer may still be at work (a temp file or
 * multipart upload of one of its objects that is not known to be abandoned). Returns their names.
 */
export async function removeInterruptedBackups(store: ArchiveStore, o: { maxAgeMs: number; now: Date; log: Logger; keep?: string }): Promise<string[]> {
  // From one listing (no record is read: an encrypted one needs no key here).
  const byBackup = new Map<string, ObjectInfo[]>();
  for (const info of await store.list(BACKUP_PREFIX)) {
    const p = parseBackupObjectName(info.name);
    if (!p) continue;
    const l = byBackup.get(p.backup) ?? [];
    l.push(info);
    byBackup.set(p.backup, l);
  }
  const incomplete = [...byBackup].filter(([b, objs]) => !objs.some((x) => x.name === recordName(b)));
  if (incomplete.length === 0) return [];
  const busy = new Set<string>();
  if (store.scanLeftovers) {
    const scan = await store.scanLeftovers({ maxAgeMs: o.maxAgeMs, now: o.now });
    for (const l of scan.leftovers) {
      const b = backupOfLeftover(l.name);
      if (b !== undefined && !removable(l.state)) busy.add(b);
    }
  }
  const removed: string[] = [];
  for (const [backup, objects] of incomplete.sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (backup === o.keep || busy.has(backup)) continue;
    const newest = Math.max(...objects.map((x) => x.modified.getTime()));
    if (o.now.getTime() - newest < o.maxAgeMs) continue;
    for (const x of objects) await store.delete(x.name);
    o.log.info(`removed interrupted backup ${backup} (${objects.length} object${objects.length === 1 ? '' : 's'})`);
    removed.push(backup);
  }
  return removed;
}

/** The first free backup name for a start at `when`: "-2", "-3"... when a record or object of that name exists. */
async function freeName(store: ArchiveStore, when: Date): Promise<string> {
  for (let attempt = 1; attempt < 1000; attempt++) {
    const name = backupName(when, attempt);
    if ((await store.list(`${BACKUP_PREFIX}${name}.`, { limit: 1 })).length === 0) return name;
  }
  throw new BackupError(`no free backup name for ${backupName(when)} in ${store.description}`);
}

/** Which of `names` the archive lacks (one listing per timeline prefix). */
async function missingWal(store: ArchiveStore, names: string[]): Promise<string[]> {
  if (names.length === 0) return [];
  const have = new Set<string>();
  const prefixes = new Set(names.map((n) => n.slice(0, 16)));
  for (const p of prefixes) for (const o of await store.list(p)) have.add(o.name);
  return names.filter((n) => !have.has(n));
}

function stopped(stop: Promise<void> | undefined): { promise: Promise<never>; done: () => boolean } {
  let is = false;
  const promise = new Promise<never>((_, reject) => {
    void stop?.then(() => {
      is = true;
      reject(new BackupError('backup stopped by a signal: nothing was recorded'));
    });
  });
  promise.catch(() => undefined);
  return { promise, done: () => is };
}

/** The receiver of --wal stream: walstream receive into a temporary spool and the archive, for the backup's duration. */
interface WalStream {
  /** Rejects when the receiver fails before end(). */
  failed: Promise<never>;
  /** Stop the receiver (after the backup's WAL is archived) and remove its spool. */
  end(): Promise<void>;
}

/**
 * Start a receiver (commands/receive.ts) on a connection of its own, from the server's current
 * WAL position, and return once it streams: the backup's checkpoint, which comes after, starts at
 * or after that position, so every segment from the backup's start on reaches the archive. Its
 * spool holds only the segment in progress and those waiting for upload.
 */
async function startWalStream(o: BackupOptions, archive: string, log: Logger): Promise<WalStream> {
  const [{ BACKGROUND_RECEIVER, receive }, { ReceiverMetrics }, { mkdtemp, rm }, { tmpdir }, { join }] = await Promise.all([
    import('./receive.js'),
    import('../observe/metrics.js'),
    import('node:fs/promises'),
    import('node:os'),
    import('node:path'),
  ]);
  const spool = await mkdtemp(join(tmpdir(), 'walstream-backup-wal-'));
  let stopReceiver!: () => void;
  const stop = new Promise<void>((r) => {
    stopReceiver = r;
  });
  const metrics = new ReceiverMetrics();
  const prefixed = (f: (m: string) => void) => (m: string) => f(`WAL stream: ${m}`);
  const running = receive({
    directory: spool,
    ...BACKGROUND_RECEIVER,
    compression: o.compression,
    connection: { ...o.connection, applicationName: 'walstream backup' },
    archive,
    ...(o.s3Endpoint !== undefined ? { s3Endpoint: o.s3Endpoint } : {}),
    ...(o.keyring ? { keyring: o.keyring } : {}),
    partialIntervalMs: 0,
    // The WAL from the slot's reservation on is kept for the stream (a checkpoint may not recycle it), and the slot goes with the connection.
    temporarySlot: `walstream_backup_${process.pid}_${Date.now().toString(36)}`,
    log: { info: prefixed(log.info.bind(log)), verbose: prefixed(log.verbose.bind(log)), warn: prefixed(log.warn.bind(log)), error: prefixed(log.error.bind(log)) },
    stop,
    metrics,
  });
  let ended = false;
  const failed = running.then(
    () => {
      if (!ended) throw new BackupError('the WAL stream ended before the backup did');
      return new Promise<never>(() => undefined);
    },
    (err: Error) => {
      throw new BackupError(`the WAL stream failed: ${err.message}`);
    },
  );
  failed.catch(() => undefined);
  let finished: Promise<void> | undefined;
  const end = (): Promise<void> => {
    finished ??= (async () => {
      ended = true;
      stopReceiver();
      try {
        await running;
      } finally {
        await rm(spool, { recursive: true, force: true });
      }
    })();
    return finished;
  };
  const deadline = Date.now() + 60_000;
  try {
    while (metrics.snapshot().received === 0n) {
      if (Date.now() > deadline) throw new BackupError('the WAL stream did not start within 60 s');
      await Promise.race([new Promise((r) => setTimeout(r, 50)), failed]);
    }
  } catch (err) {
    await end().catch(() => undefined);
    throw err;
  }
  log.verbose(`WAL stream started at ${formatLsn(metrics.snapshot().received)}`);
  return { failed, end };
}

/**
 * Pass a tar's entries on, telling `found` the database system identifier global/pg_control holds
 * (ControlFileData's first field, a uint64 in the server's byte order: little-endian here, the
 * byte order of every platform walstream runs on).
 */
async function* watchControlFile(entries: AsyncIterable<TarEntry>, found: (systemId: string) => void): AsyncGenerator<TarEntry> {
  for await (const e of entries) {
    if (e.name !== 'global/pg_control' || e.type !== 'file') {
      yield e;
      continue;
    }
    const content = e.content;
    let head = Buffer.alloc(0);
    const watched = async function* (): AsyncGenerator<Buffer> {
      for await (const b of content) {
        if (head.length < 8) head = Buffer.concat([head, b.subarray(0, 8 - head.length)]);
        yield b;
      }
      if (head.length === 8) found(head.readBigUInt64LE(0).toString());
    };
    yield { ...e, content: watched() };
  }
}

/** An entry of a tar as it went into the archive: its path in the manifest's terms, and a file's size and CRC-32C. */
interface SeenEntry {
  path: string;
  type: TarEntry['type'];
  size: number;
  crc: number;
}

/**
 * Read a tar as it is stored (the side of a tee): every entry with each file's size and CRC-32C,
 * the checksum walstream asks the server's manifest for, and (`control`) the system identifier
 * global/pg_control holds. `prefix`: '' for base.tar, tablespacePrefix(oid) for a tablespace's.
 */
async function digestTar(chunks: AsyncIterable<Buffer>, label: string, prefix: string, control?: (systemId: string) => void): Promise<SeenEntry[]> {
  const seen: SeenEntry[] = [];
  let entries: AsyncIterable<TarEntry> = readTar(chunks, { label });
  if (control) entries = watchControlFile(entries, control);
  for await (const e of entries) {
    let crc = 0;
    for await (const b of e.content) crc = crc32c(b, crc);
    seen.push({ path: prefix + e.name, type: e.type, size: e.size, crc });
  }
  return seen;
}

/** The server's manifest, parsed and checked against the system the server identified itself as. */
function manifestOf(manifestData: Buffer, systemId: string): BackupManifest {
  const manifest = parseManifest(manifestData, 'the backup_manifest the server sent');
  if (manifest.systemIdentifier !== undefined && manifest.systemIdentifier !== systemId) {
    throw new BackupError(`the backup's manifest names database system ${manifest.systemIdentifier}, but the server identified itself as ${systemId}`);
  }
  return manifest;
}

/** Check the entries seen while the tars were stored against the manifest. */
function checkSeen(verifier: ManifestVerifier, seen: readonly SeenEntry[]): void {
  for (const e of seen) {
    if (e.type !== 'file') verifier.nonFile(e.path, e.type);
    else verifier.checkCrc32c(e.path, e.size, e.crc);
  }
}

/** Read each stored tar back and check every file against the manifest (size and checksum); returns pg_control's system identifier. */
async function verifyStored(store: ArchiveStore, verifier: ManifestVerifier, objects: BackupObject[]): Promise<string | undefined> {
  let controlSystemId: string | undefined;
  for (const o of objects) {
    if (o.kind === 'manifest') continue;
    if (!store.getStream) throw new BackupError(`${store.description} cannot read streamed objects`);
    const { stream } = await store.getStream(o.name);
    const entries = o.kind === 'base' ? watchControlFile(readTar(stream, { label: o.name }), (id) => (controlSystemId = id)) : readTar(stream, { label: o.name });
    await verifyTarEntries(entries, verifier, o.kind === 'tablespace' ? tablespacePrefix(o.oid!) : '');
  }
  return controlSystemId;
}

/** The verdict on a backup: pg_control of this system, and every file as its manifest says. */
function judge(verifier: ManifestVerifier, controlSystemId: string | undefined, systemId: string, what: string): { files: number; bytes: number } {
  if (controlSystemId === undefined) throw new BackupError(`the ${what} base.tar holds no global/pg_control`);
  if (controlSystemId !== systemId) throw new BackupError(`the backup's global/pg_control is of database system ${controlSystemId}, but the server identified itself as ${systemId}`);
  const result = verifier.finish();
  if (!result.ok) {
    const shown = result.problems.slice(0, 3).map((p) => p.message);
    const more = result.problems.length > 3 ? ` and ${result.problems.length - 3} more` : '';
    throw new BackupError(`the ${what} backup does not match its manifest: ${shown.join('; ')}${more}; nothing was recorded`);
  }
  return { files: result.checked, bytes: result.bytes };
}

export async function backup(o: BackupOptions): Promise<BackupResult> {
  validateBackupOptions(o);
  const now = o.now ?? (() => new Date());
  const log = o.log;
  const stop = stopped(o.stop);
  const t0 = Date.now();
  let store: ArchiveStore;
  const ownStore = typeof o.archive === 'string';
  if (typeof o.archive === 'string') {
    const { openArchive } = await import('../storage/open.js');
    try {
      store = await openArchive(o.archive, { s3Endpoint: o.s3Endpoint, ...(o.keyring ? { keyring: o.keyring } : {}) });
    } catch (err) {
      throw new BackupError(`cannot use archive "${o.archive}": ${(err as Error).message}`);
    }
  } else {
    store = o.archive;
  }
  if (!store.putStream) throw new BackupError(`${store.description} cannot store streamed objects`);
  const cfg = buildClientConfig(o.connection);
  let conn: ReplicationConnection | undefined;
  /** What this run stored so far: removed again when it fails (a killed run's objects wait for the next run). */
  const stored: string[] = [];
  let walStream: WalStream | undefined;
  try {
    try {
      conn = await ReplicationConnection.connect(cfg);
    } catch (err) {
      throw new BackupError(`could not connect to ${describeTarget(cfg)}: ${(err as Error).message}`);
    }
    const version = conn.serverVersionNum;
    if (version < 130000) throw new BackupError(`walstream backup needs PostgreSQL 13 or newer (backup manifests); the server is ${version}`);
    const id = await conn.identifySystem();
    const segSize = await conn.walSegmentSize();
    const systemId = id.systemId;

    // The archive: this system's, and (with --wal none) fed with its WAL by someone.
    const nothingArchives = `nothing archives this server's WAL into ${store.description}: run walstream receive or set archive_command (walstream push), or use --wal stream`;
    let hasRecord: boolean;
    try {
      hasRecord = (await readIdentity(store)) !== undefined;
    } catch (err) {
      // Encrypted with a key not given: claimArchive says so below.
      if (!(err instanceof KeyUnavailableError)) throw err;
      hasRecord = true;
    }
    if (!hasRecord && o.wal === 'none') throw new BackupError(nothingArchives);
    try {
      await claimArchive(store, { systemIdentifier: systemId, segmentSize: segSize }, 'the server', { encrypts: o.keyring !== undefined, requireEncrypted: o.keyring?.requireEncrypted === true });
    } catch (err) {
      if (err instanceof IdentityMismatchError || err instanceof ArchiveEncryptedError) throw new BackupError(err.message);
      throw err;
    }
    if (o.wal === 'none') {
      const walHeld = (await store.list('', { limit: 200 })).some((x) => WAL_NAME_RE.test(x.name));
      if (!walHeld) throw new BackupError(nothingArchives);
    } else {
      walStream = await startWalStream(o, o.archive as string, log);
    }

    const removed = await removeInterruptedBackups(store, { maxAgeMs: o.leftoverAgeMs ?? DEFAULT_LEFTOVER_AGE_MS, now: now(), log });

    const startTime = now();
    const name = await freeName(store, startTime);
    const label = o.label ?? `walstream backup ${name}`;
    log.verbose(`starting base backup ${name}: waiting for the checkpoint (${o.fastCheckpoint ? 'fast' : 'spread'})`);
    const run = startBaseBackup(conn, { label, progress: o.onProgress !== undefined, fastCheckpoint: o.fastCheckpoint === true, maxRateKb: o.maxRateKb, wait: false }, { onProgress: o.onProgress });
    const abortOnStop = stop.promise.catch((err: Error) => run.abort(err));
    void abortOnStop;
    const start = await run.start;
    log.verbose(`backup ${name} starts at ${formatLsn(start.lsn)} on timeline ${start.timeline}`);

    const objects: BackupObject[] = [];
    /** The tars' entries as they were stored (not with readBack). */
    const seen: SeenEntry[] = [];
    let controlSystemId: string | undefined;
    for (;;) {
      const a = await run.nextArchive();
      if (!a) break;
      let objectName: string;
      if (a.name === 'base.tar') objectName = baseTarName(name);
      else if (a.oid !== undefined && a.name === `${a.oid}.tar`) objectName = tablespaceTarName(name, a.oid);
      else {
        run.abort(new BackupError(`the server sent an archive named "${a.name}", which walstream does not store`));
        throw new BackupError(`the server sent an archive named "${a.name}", which walstream does not store`);
      }
      log.verbose(`storing ${a.name} as ${objectName}`);
      // Unless the stored tars are to be read back, each file's size and CRC-32C are taken as the
      // bytes go into the archive, to be checked against the manifest once it comes.
      const check = o.readBack
        ? undefined
        : tee(a.data, (chunks) => digestTar(chunks, a.name, a.oid === undefined ? '' : tablespacePrefix(a.oid), a.oid === undefined ? (id) => (controlSystemId = id) : undefined));
      let put;
      try {
        put = await store.putStream(objectName, check ? check.passed : a.data, { compression: o.compression });
      } catch (err) {
        // The server's end (its error, the connection lost), said as such rather than as the store's.
        const server = run.failed;
        run.abort(err as Error);
        if (server) throw new BackupError(`the server ended the backup while sending ${a.name}: ${server.message}; nothing was recorded`);
        throw err;
      }
      if (put.status === 'created') stored.push(objectName);
      if (put.status !== 'created') {
        run.abort(new BackupError(`${objectName} already existed in the archive`));
        throw new BackupError(`${objectName} already existed in the archive`);
      }
      if (check) {
        try {
          seen.push(...(await check.result));
        } catch (err) {
          run.abort(err as Error);
          throw new BackupError(`${a.name} from the server is not a readable tar: ${(err as Error).message}; nothing was recorded`);
        }
      }
      objects.push({
        name: objectName,
        kind: a.oid === undefined ? 'base' : 'tablespace',
        ...(a.oid !== undefined ? { oid: a.oid, location: a.location ?? '' } : {}),
        size: put.info.size,
        sha256: put.info.checksum!,
        storedSize: put.info.storedSize,
        compression: o.compression,
      });
    }
    const manifestData = await run.manifest();
    if (!manifestData) throw new BackupError('the server sent no backup manifest');
    const endPos = await run.end;
    const endTime = now();
    await conn.close();
    conn = undefined;
    const mname = manifestName(name);
    const mput = await store.put(mname, manifestData, { compression: o.compression });
    if (mput.status === 'created') stored.push(mname);
    objects.push({ name: mname, kind: 'manifest', size: mput.info.size, sha256: mput.info.checksum!, storedSize: mput.info.storedSize, compression: o.compression });
    log.verbose(`backup ${name} ends at ${formatLsn(endPos.lsn)} on timeline ${endPos.timeline}`);
    if (stop.done()) throw new BackupError('backup stopped by a signal: nothing was recorded');

    // The WAL from the start to the end: archived by others; wait for it, bounded.
    const wal = walRange(start.timeline, start.lsn, endPos.lsn, segSize);
    if (endPos.timeline !== start.timeline) wal.push(walFileName(endPos.timeline, lsnToSegNo(endPos.lsn - 1n, segSize), segSize));
    const deadline = Date.now() + (o.walTimeoutMs ?? 60_000);
    let missing = await missingWal(store, wal);
    if (missing.length > 0) log.verbose(`waiting for ${missing.length} WAL file${missing.length === 1 ? '' : 's'} to reach the archive (up to ${missing.at(-1)})`);
    while (missing.length > 0) {
      if (Date.now() >= deadline) {
        throw new BackupError(
          `the WAL this backup needs is not all in ${store.description} after ${Math.round((o.walTimeoutMs ?? 60_000) / 1000)} s: ` +
            `${missing.length} file${missing.length === 1 ? '' : 's'} missing (${missing[0]}${missing.length > 1 ? ` ... ${missing.at(-1)}` : ''}); is WAL archiving working? Nothing was recorded`,
        );
      }
      await Promise.race([new Promise((r) => setTimeout(r, POLL_MS)), stop.promise, ...(walStream ? [walStream.failed] : [])]);
      missing = await missingWal(store, missing);
    }

    if (walStream) {
      await walStream.end();
      walStream = undefined;
    }
    // What was stored, against the manifest: as it went by, or read back (asked for, or when the
    // manifest checks files with another algorithm than the CRC-32C taken on the way).
    const verifier = new ManifestVerifier(manifestOf(manifestData, systemId.toString()));
    const readBack = o.readBack === true || verifier.needsOtherDigest();
    if (readBack) controlSystemId = await Promise.race([verifyStored(store, verifier, objects), stop.promise]);
    else checkSeen(verifier, seen);
    const checked = judge(verifier, controlSystemId, systemId.toString(), readBack ? 'stored' : 'streamed');
    log.verbose(`verified ${checked.files} files (${checked.bytes} bytes) of backup ${name} against its manifest${readBack ? ', read back from the archive' : ''}`);

    const record: BackupRecord = {
      format: RECORD_FORMAT,
      name,
      label,
      systemId: systemId.toString(),
      serverVersion: version,
      walSegmentSize: segSize,
      timeline: start.timeline,
      startLsn: formatLsn(start.lsn),
      endLsn: formatLsn(endPos.lsn),
      startWal: wal[0]!,
      endWal: wal.at(-1)!,
      startTime: startTime.toISOString(),
      endTime: endTime.toISOString(),
      walMethod: o.wal === 'stream' ? 'stream' : 'archive',
      size: objects.reduce((n, x) => n + x.size, 0),
      objects,
    };
    if (stop.done()) throw new BackupError('backup stopped by a signal: nothing was recorded');
    await store.put(recordName(name), encodeRecord(record));
    // A cleaner that judged this backup abandoned (a run idle past the leftover age) may have
    // removed objects meanwhile: then the record must not stay.
    for (const x of objects) {
      if ((await store.head(x.name)) === undefined) {
        await store.delete(recordName(name));
        throw new BackupError(`${x.name} disappeared from ${store.description} while the backup was being recorded (removed as an interrupted backup by another run?); nothing was recorded`);
      }
    }
    return { record, durationMs: Date.now() - t0, removed };
  } catch (err) {
    if (stored.length > 0) {
      const left = await Promise.allSettled(stored.map((n) => store.delete(n)));
      const failed = left.filter((r) => r.status === 'rejected').length;
      log.verbose(failed === 0 ? `removed the ${stored.length} objects this run stored` : `could not remove ${failed} of the objects this run stored: a later backup removes them`);
    }
    throw err;
  } finally {
    await walStream?.end().catch(() => undefined);
    if (conn) conn.destroy();
    if (ownStore) await store.close();
  }
}

/** What `backup list` says of one backup. */
export interface BackupListing {
  name: string;
  complete: boolean;
  record?: BackupRecord;
  /** Complete backups: every WAL file from startWal to endWal is in the archive. */
  walToConsistency?: boolean;
  /** Complete backups: no WAL file is missing from startWal to the newest segment archived on its timeline. */
  walToNow?: boolean;
  /** Complete backups: the first missing WAL file, if any. */
  firstMissingWal?: string;
  /** Interrupted backups: their objects. */
  objects?: string[];
}

/** The backups in the archive (oldest first), complete and interrupted, with whether the WAL to restore each is there. */
export async function listArchiveBackups(store: ArchiveStore): Promise<BackupListing[]> {
  const inv = await listBackups(store);
  const out: BackupListing[] = [];
  const segmentsByTli = new Map<number, Set<string>>();
  const segmentsOf = async (tli: number): Promise<Set<string>> => {
    let s = segmentsByTli.get(tli);
    if (!s) {
      const prefix = tli.toString(16).toUpperCase().padStart(8, '0');
      s = new Set((await store.list(prefix)).map((x) => x.name).filter((n) => WAL_NAME_RE.test(n)));
      segmentsByTli.set(tli, s);
    }
    return s;
  };
  for (const r of inv.complete) {
    const have = await segmentsOf(r.timeline);
    const seg = BigInt(r.walSegmentSize);
    const perId = 0x100000000n / seg;
    const segno = (n: string): bigint => BigInt(`0x${n.slice(8, 16)}`) * perId + BigInt(`0x${n.slice(16, 24)}`);
    const first = segno(r.startWal);
    const last = segno(r.endWal);
    let newest = last;
    for (const n of have) if (segno(n) > newest) newest = segno(n);
    let firstMissing: string | undefined;
    let missingToEnd = false;
    for (let s = first; s <= newest; s++) {
      const n = walFileName(r.timeline, s, r.walSegmentSize);
      if (!have.has(n)) {
        firstMissing = n;
        missingToEnd = s <= last;
        break;
      }
    }
    out.push({
      name: r.name,
      complete: true,
      record: r,
      walToConsistency: !missingToEnd,
      walToNow: firstMissing === undefined,
      ...(firstMissing !== undefined ? { firstMissingWal: firstMissing } : {}),
    });
  }
  for (const i of inv.incomplete) out.push({ name: i.backup, complete: false, objects: i.objects });
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}
