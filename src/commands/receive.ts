// walstream receive: pg_receivewal's behaviour (pg_receivewal.c main, StreamLog,
// FindStreamingStart) composed from the session and sink layers, with reconnect backoff and
// permanent conditions reported once instead of retried forever.
import { access, constants, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { buildClientConfig, describeTarget, type ConnectionOptions } from '../session/conninfo.js';
import { AllHostsFailedError, ReplicationConnection } from '../session/connection.js';
import { ConnectionLostError, ServerError, SQLSTATE } from '../session/errors.js';
import { runStream, type StreamResult } from '../session/stream.js';
import { WalDirSink, WalValidationError } from '../sink/wal-dir.js';
import { findStreamingStart, readSegmentSystemId } from '../sink/scan.js';
import { checkSpoolDirectory } from '../sink/fsutil.js';
import { zstdAvailable, type Compression } from '../sink/segment-file.js';
import { ProtocolError } from '../protocol/messages.js';
import { formatLsn, type Lsn } from '../wal/lsn.js';
import { historyFileName, isWalFileName, parseWalFileName, segNoToLsn, segmentStart } from '../wal/segment.js';
import { SpoolUploader } from '../archive/uploader.js';
import { PartialShipper } from '../archive/partial.js';
import { WriterRecorder } from '../archive/writers.js';
import { ArchiveEncryptedError, claimArchive, IdentityMismatchError } from '../archive/identity.js';
import { StorageError, type ArchiveStore } from '../storage/types.js';
import type { Keyring } from '../storage/encryption.js';
import { checkHistoryForTimeline, HistoryParseError, parseHistory, type TimelineHistoryEntry } from '../wal/timeline.js';
import { heldPast } from '../archive/fork.js';
import { formatBytes } from '../ops/format.js';
import { assertSlotName, type SlotInfo } from '../protocol/commands.js';
import { magicForServerVersion } from '../wal/page.js';
import type { Logger } from '../util/log.js';
import type { ErrorKind, ReceiverMetrics } from '../observe/metrics.js';
import type { ReceiverServer, RunningServer, ServerSettings } from './serve.js';
import { LiveTail } from '../source/live-tail.js';
import { identityOfServer } from '../source/wal-source.js';

/**
 * The settings of a receiver another command runs in the background into an archive (backup
 * --wal stream, the demo): no slot made or dropped, one connection that is not retried, a status
 * report every 10 s, asynchronous, fsync on.
 */
export const BACKGROUND_RECEIVER = {
  createSlot: false,
  dropSlot: false,
  ifNotExists: false,
  noLoop: true,
  statusIntervalMs: 10_000,
  synchronous: false,
  noSync: false,
} as const satisfies Partial<ReceiveOptions>;

export interface ReceiveOptions {
  directory?: string;
  slot?: string;
  createSlot: boolean;
  dropSlot: boolean;
  ifNotExists: boolean;
  endPos?: Lsn;
  noLoop: boolean;
  statusIntervalMs: number;
  /**
   * Give a connection up when nothing arrived from the server for this long while reading
   * (milliseconds; 0 = never; default 60 s): PostgreSQL's wal_receiver_timeout. Also bounds each
   * command's answer and, unless connect_timeout is given, connecting.
   */
  receiveTimeoutMs?: number;
  synchronous: boolean;
  noSync: boolean;
  /**
   * Check the WAL record by record as it arrives (default true): a finished segment is named, and
   * reported flushed, only once its records (the one running past its end too) check out, and a
   * stream whose records do not is stopped before they are written.
   */
  verifyRecords?: boolean;
  compression: Compression;
  compressionLevel?: number;
  connection: ConnectionOptions;
  log: Logger;
  /** Resolves on SIGINT/SIGTERM. */
  stop: Promise<void>;
  /** Archive URL (directory or s3://bucket/prefix): -D becomes the spool, finished files go to the archive. */
  archive?: string;
  s3Endpoint?: string;
  /** With --archive: encrypt what is archived (uploads and partial pieces), see storage/encryption.ts. */
  keyring?: Keyring;
  /** Bytes of finished segments waiting for upload above which the stream pauses. */
  spoolMaxBytes?: number;
  uploadConcurrency?: number;
  /** With --archive: ship the segment in progress this often (milliseconds; 0 = never). */
  partialIntervalMs?: number;
  /** Reconnect backoff bounds in milliseconds. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Updated as the receiver works (receive --metrics-listen and the progress line read it). */
  metrics?: ReceiverMetrics;
  /**
   * When the server's history says the timeline being received ended before what walstream holds
   * of it (a failover that lost the old primary's last WAL): 'follow' (default) keeps what is held
   * and goes on on the new timeline from the fork, with a warning naming the range lost; 'stop'
   * stops for a person to look first.
   */
  onFork?: 'follow' | 'stop';
  /** After a reconnect to a server without the slot (a new primary): create it and go on. */
  createSlotIfMissing?: boolean;
  /**
   * Stream through a slot of this name created TEMPORARY with RESERVE_WAL on each streaming
   * connection (as pg_basebackup's WAL stream does): the server keeps the WAL from the slot's
   * reservation on for this receiver, and drops the slot with the connection. The stream starts
   * where the slot reserves (PostgreSQL 15+; before, at the server's position), never after the
   * archive's newest segment. Not with `slot`. Used by walstream backup --wal stream.
   */
  temporarySlot?: string;
  /** Also serve the WAL received (durable only) to standbys and replication clients (receive --serve). */
  serve?: ServerSettings;
  /** Called once serving (the metrics endpoint shows the clients). */
  onServing?: (running: RunningServer) => void;
}

/** How long after it arrives received WAL is made durable when serving (its clients wait for durability). */
const SERVE_SYNC_AFTER_MS = 20;

/** An error the user must act on: printed as one line, exit status 1. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A condition retrying cannot fix: reported once with what to do. */
export class PermanentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PermanentError';
  }
}

export function validateReceiveOptions(o: ReceiveOptions): void {
  if (o.createSlot && o.dropSlot) throw new UsageError('cannot use --create-slot together with --drop-slot');
  if ((o.createSlot || o.dropSlot) && !o.slot) throw new UsageError(`--${o.createSlot ? 'create' : 'drop'}-slot needs a slot to be specified using --slot`);
  if (o.synchronous && o.noSync) throw new UsageError('cannot use --synchronous together with --no-sync');
  if (o.ifNotExists && !o.createSlot) throw new UsageError('--if-not-exists can only be used with --create-slot');
  if (o.temporarySlot !== undefined && (o.slot !== undefined || o.createSlot || o.dropSlot)) throw new UsageError('a temporary slot cannot go with --slot');
  if (!o.dropSlot && !o.createSlot && !o.directory) throw new UsageError('no target directory specified (use -D/--directory)');
  if (o.compression === 'zstd' && !zstdAvailable()) throw new UsageError('zstd compression needs Node.js 22.15 or newer');
  if (!Number.isInteger(o.statusIntervalMs) || o.statusIntervalMs < 0) throw new UsageError('invalid status interval');
  if (o.receiveTimeoutMs !== undefined && (!Number.isInteger(o.receiveTimeoutMs) || o.receiveTimeoutMs < 0)) throw new UsageError('invalid receive timeout');
}

const DEFAULT_RECEIVE_TIMEOUT_MS = 60_000;

async function checkDirectory(dir: string): Promise<void> {
  let st;
  try {
    st = await stat(dir);
  } catch {
    throw new UsageError(`could not access directory "${dir}": it does not exist`);
  }
  if (!st.isDirectory()) throw new UsageError(`"${dir}" is not a directory`);
  try {
    await access(dir, constants.W_OK | constants.X_OK);
  } catch {
    throw new UsageError(`directory "${dir}" is not writable`);
  }
}

/** What receive knows when an error comes, beyond the error itself. */
export interface ErrorContext {
  /** The slot named with --slot. */
  slot?: string;
  /**
   * What READ_REPLICATION_SLOT (15+) said of that slot on this connection: its slot_type
   * ('physical'; null when missing). Undefined when it was not asked (before 15, or not yet).
   */
  slotType?: string | null;
}

/**
 * Turn a server or stream error into a permanent condition when retrying cannot help.
 *
 * Server errors are told apart by their SQLSTATE together with the command that failed and the
 * state (whether a slot was named, what READ_REPLICATION_SLOT said), never by the message: the
 * server writes it in its lc_messages, and a condition matched by English words would be retried
 * forever by a server speaking another language. The server's message is still shown as it came.
 * Timeline conditions (not in this server's history, the fork) come with INTERNAL_ERROR, shared
 * by others: refusedStart reads them from the server's history instead.
 */
export function classifyError(err: unknown, ctx: ErrorContext = {}): Error {
  if (err instanceof PermanentError || err instanceof UsageError) return err;
  if (err instanceof WalValidationError || err instanceof ProtocolError) {
    return new PermanentError(`${err.message}; nothing after this point was published`);
  }
  if (err instanceof ServerError) {
    const m = err.message;
    const slot = ctx.slot;
    switch (err.code) {
      // walsender.c WalSndSegmentOpen: the file of the WAL asked for is gone (ENOENT). (xlog.c
      // CheckXLogRemoved, a segment recycled while being read, takes its code from errno and may
      // carry another one: retried, the next start meets the missing file here.)
      case SQLSTATE.UNDEFINED_FILE:
        if (err.command !== 'START_REPLICATION') break;
        return new PermanentError(
          `${m} (on the server): the WAL between this archive's end and the server's oldest segment is gone from the server. ` +
            'Fill the gap from another archive or a base backup taken after it, or start afresh in an empty directory; use a replication slot (--slot) to keep this from happening',
        );
      // slot.c ReplicationSlotAcquire (START_REPLICATION) and ReplicationSlotDrop.
      case SQLSTATE.UNDEFINED_OBJECT:
        if (slot === undefined || !(err.command === 'START_REPLICATION' || err.command === 'DROP_REPLICATION_SLOT')) break;
        return new PermanentError(`replication slot "${slot}" does not exist; create it with --create-slot`);
      // walsender.c ReadReplicationSlot (15+) refuses a logical slot.
      case SQLSTATE.FEATURE_NOT_SUPPORTED:
        if (slot === undefined || err.command !== 'READ_REPLICATION_SLOT') break;
        return new PermanentError(`${m}: replication slot "${slot}" is a logical slot; walstream needs a physical slot`);
      // walsender.c StartReplication, before streaming: a logical slot (before 15 the first place
      // it shows), or (18+, slot.c ReplicationSlotAcquire) a slot invalidated since it was read.
      // READ_REPLICATION_SLOT has already refused a logical slot on 15+, so a slot it reported as
      // physical is one the server can no longer use.
      case SQLSTATE.OBJECT_NOT_IN_PREREQUISITE_STATE:
        if (slot === undefined || err.command !== 'START_REPLICATION' || err.streaming) break;
        if (ctx.slotType === 'physical') {
          return new PermanentError(
            `${err.withDetail}: the server can no longer use replication slot "${slot}" (it was invalidated, and the WAL it held may be gone). ` +
              'Drop it and create it again (--drop-slot, --create-slot: it holds WAL from then on), and fill any gap from another archive',
          );
        }
        return new PermanentError(`${m}: replication slot "${slot}" is a logical slot; walstream needs a physical slot`);
      case SQLSTATE.INVALID_PASSWORD:
      case SQLSTATE.INVALID_AUTHORIZATION_SPECIFICATION:
        return new PermanentError(m);
      case SQLSTATE.INSUFFICIENT_PRIVILEGE:
        return new PermanentError(`${m}: the role needs the REPLICATION attribute`);
    }
  }
  return err instanceof Error ? err : new Error(String(err));
}

interface ServerInfo {
  systemId: bigint;
  timeline: number;
  xlogPos: Lsn;
  segSize: number;
  blockSize: number;
  version: number;
}

export async function receive(o: ReceiveOptions): Promise<void> {
  validateReceiveOptions(o);
  if (o.directory && !o.dropSlot && !o.createSlot) await checkDirectory(o.directory);
  // With --archive the directory is a spool others must not be able to write into.
  if (o.directory && o.archive !== undefined && !o.dropSlot && !o.createSlot) await checkSpoolDirectory(o.directory);
  const receiveTimeoutMs = o.receiveTimeoutMs ?? DEFAULT_RECEIVE_TIMEOUT_MS;
  // A connection attempt that stalls is bounded by connect_timeout, else by the receive timeout.
  const cfg = buildClientConfig({ ...o.connection, defaultConnectTimeout: receiveTimeoutMs > 0 ? Math.ceil(receiveTimeoutMs / 1000) : undefined });
  const behaviour = { replyTimeoutMs: receiveTimeoutMs };
  const log = o.log;

  let stopped = false;
  void o.stop.then(() => {
    stopped = true;
  });

  // The first connection decides: failures here are the user's to fix, reported at once.
  // (A multi-host connection string whose hosts are all down is a failover under way: retried.)
  let conn: ReplicationConnection | undefined;
  try {
    conn = await ReplicationConnection.connect(cfg, undefined, behaviour);
  } catch (err) {
    o.metrics?.error('connection');
    const message = `could not connect to ${describeTarget(cfg)}: ${(err as Error).message}`;
    if (!(err instanceof AllHostsFailedError) || o.noLoop || o.createSlot || o.dropSlot) throw new UsageError(message);
    log.error(`${message}; retrying`);
  }

  if (o.dropSlot) {
    try {
      log.verbose(`dropping replication slot "${o.slot}"`);
      await conn!.dropSlot(o.slot!);
      return;
    } catch (err) {
      throw classifyError(err, { slot: o.slot });
    } finally {
      await conn?.close();
    }
  }
  if (o.createSlot) {
    try {
      log.verbose(`creating replication slot "${o.slot}"`);
      await conn!.createPhysicalSlot(o.slot!, false);
      return;
    } catch (err) {
      if (o.ifNotExists && err instanceof ServerError && err.code === SQLSTATE.DUPLICATE_OBJECT) {
        log.verbose(`replication slot "${o.slot}" exists already`);
        return;
      }
      throw classifyError(err, { slot: o.slot });
    } finally {
      await conn?.close();
    }
  }

  const dir = o.directory!;
  let uploader: SpoolUploader | undefined;
  let store: ArchiveStore | undefined;
  let shipper: PartialShipper | undefined;
  let recorder: WriterRecorder | undefined;
  if (o.archive !== undefined) {
    const { openArchive } = await import('../storage/open.js');
    try {
      store = await openArchive(o.archive, { s3Endpoint: o.s3Endpoint, ...(o.keyring ? { keyring: o.keyring } : {}) });
    } catch (err) {
      await conn?.close();
      throw new UsageError(`cannot use archive "${o.archive}": ${(err as Error).message}`);
    }
    uploader = new SpoolUploader({
      spoolDir: dir,
      store,
      compression: o.compression,
      concurrency: o.uploadConcurrency ?? 3,
      spoolMaxBytes: o.spoolMaxBytes ?? 1024 * 1024 * 1024,
      log,
      noSync: o.noSync,
      onUploaded: (name) => {
        if (isWalFileName(name)) {
          o.metrics?.segmentArchived();
          void shipper?.segmentArchived(name);
          recorder?.archived(name);
        }
      },
      onUploadFailed: () => o.metrics?.error('archive'),
    });
    const queue = uploader;
    o.metrics?.uploadQueueFrom(() => queue.queueDepth);
    if ((o.partialIntervalMs ?? 5000) > 0) shipper = new PartialShipper({ store, spoolDir: dir, log, noSync: o.noSync });
    // This receiver's record in the archive (status lists the writers; a background receiver has none).
    if (o.temporarySlot === undefined) recorder = new WriterRecorder({ store, slot: o.slot, log, encrypted: o.keyring !== undefined });
  }
  // receive --serve: the server starts now (a port in use is reported before streaming); it
  // refuses clients until the stream has told which system the WAL is of.
  let serving: ReceiverServer | undefined;
  let tail: LiveTail | undefined;
  if (o.serve) {
    tail = new LiveTail();
    const { serveReceiver } = await import('./serve.js');
    try {
      serving = await serveReceiver({ directory: dir, ...(store ? { archive: store } : {}), tail, settings: o.serve, log });
    } catch (err) {
      await conn?.close();
      await store?.close();
      throw err instanceof UsageError ? err : new UsageError(`cannot serve: ${(err as Error).message}`);
    }
    o.onServing?.(serving.running);
  }
  // Files left in the spool are uploaded once the archive has been claimed (admitServer): an
  // archive of another system, or an encrypted one without the key, gets nothing.
  let uploadsStarted = false;
  const startUploads = async (): Promise<void> => {
    if (uploadsStarted || !uploader) return;
    await uploader.start();
    uploadsStarted = true;
  };
  try {
    try {
      await receiveLoop(o, conn, cfg, dir, { uploader, store, shipper, recorder, startUploads, serving, tail });
    } catch (err) {
      // The stream failed for good (or ended under --no-loop): the segments it finished are
      // durable in the spool and go to the archive before the error is reported, as they do at
      // --endpos. A signal ends the wait; an archive that fails for good ends it too.
      const left = uploader && uploadsStarted && !uploader.error && !stopped ? uploader.queueDepth : 0;
      if (left > 0) {
        // Said only with -v: without it the error stays the one line on standard error.
        log.verbose(`${(err as Error).message}; archiving the ${left} file${left === 1 ? '' : 's'} received before exiting`);
        await Promise.race([uploader!.drained().catch(() => undefined), o.stop]);
      }
      throw err;
    }
    if (uploader && !stopped) {
      log.verbose('waiting for the archive to take the remaining files');
      await Promise.race([uploader.drained(), o.stop]);
    }
    if (uploader?.error) throw new PermanentError(uploader.error.message);
  } finally {
    await serving?.close();
    await uploader?.stop();
    await recorder?.close();
    await store?.close();
  }
}

async function receiveLoop(o: ReceiveOptions, first: ReplicationConnection | undefined, cfg: ReturnType<typeof buildClientConfig>, dir: string, archive: ArchiveParts): Promise<void> {
  const { uploader } = archive;
  const log = o.log;
  let conn = first;
  let stopped = false;
  void o.stop.then(() => {
    stopped = true;
  });
  const retryMin = o.retryMinMs ?? 500;
  const retryMax = o.retryMaxMs ?? 30_000;
  let delay = retryMin;
  let firstRound = first !== undefined;
  let expectedSystemId: bigint | undefined;
  const held: HeldPosition = {};
  if (!first) {
    await Promise.race([new Promise((r) => setTimeout(r, delay)), o.stop]);
    if (stopped) return;
  }

  for (;;) {
    let progressed = false;
    try {
      if (!firstRound) {
        o.metrics?.reconnect();
        conn = await ReplicationConnection.connect(cfg, undefined, { replyTimeoutMs: o.receiveTimeoutMs ?? DEFAULT_RECEIVE_TIMEOUT_MS });
      }
      o.metrics?.connection(true);
      const outcome = await streamOnce({
        conn: conn!,
        o,
        dir,
        expectedSystemId,
        held,
        target: describeTarget(cfg),
        onData: () => {
          progressed = true;
        },
        stopped: () => stopped || uploader?.error !== undefined,
        ...archive,
      });
      if (uploader?.error) throw new PermanentError(`archive: ${uploader.error.message}`);
      expectedSystemId = outcome.systemId;
      if (outcome.finished) return;
      if (o.noLoop) throw new Error('disconnected');
      log.info('server closed the connection; reconnecting');
    } catch (err) {
      const e = classifyError(err, { slot: o.slot });
      o.metrics?.error(errorKind(e));
      if (e instanceof PermanentError || e instanceof UsageError || o.noLoop) throw e;
      if (stopped) return;
      log.error(`${e.message}; retrying`);
    } finally {
      await conn?.close().catch(() => undefined);
      o.metrics?.connection(false);
    }
    firstRound = false;
    if (stopped) return;
    if (progressed) delay = retryMin;
    const wait = Math.round(delay * (0.7 + Math.random() * 0.6));
    log.verbose(`waiting ${wait} ms before reconnecting`);
    await Promise.race([new Promise((r) => setTimeout(r, wait)), o.stop]);
    delay = Math.min(delay * 2, retryMax);
    if (stopped) return;
  }
}

async function identify(conn: ReplicationConnection): Promise<ServerInfo> {
  const id = await conn.identifySystem();
  const segSize = await conn.walSegmentSize();
  const blockSize = await conn.walBlockSize();
  return { systemId: id.systemId, timeline: id.timeline, xlogPos: id.xlogPos, segSize, blockSize, version: conn.serverVersionNum };
}

interface StreamOutcome {
  finished: boolean;
  systemId: bigint;
}

/** The archive side of receive --archive (all undefined without it). */
interface ArchiveParts {
  uploader: SpoolUploader | undefined;
  store: ArchiveStore | undefined;
  shipper: PartialShipper | undefined;
  /** This receiver's record in the archive (archive/writers.ts). */
  recorder?: WriterRecorder;
  /** Enqueue the files left in the spool (once; after the archive is claimed). */
  startUploads: () => Promise<void>;
  /** receive --serve: the server, and the tail of durable WAL it serves from. */
  serving?: ReceiverServer;
  tail?: LiveTail;
}

/** Everything one connection's streaming needs. */
interface StreamRound extends ArchiveParts {
  conn: ReplicationConnection;
  o: ReceiveOptions;
  dir: string;
  /** System identifier seen on an earlier connection. */
  expectedSystemId: bigint | undefined;
  /** What the connections of this process have made durable so far. */
  held: HeldPosition;
  /** Called whenever WAL arrives (resets the reconnect backoff). */
  onData: () => void;
  /** The server as messages name it. */
  target: string;
  stopped: () => boolean;
}

/** The last position a stream of this process made durable in the directory, and its timeline. */
interface HeldPosition {
  at?: { tli: number; lsn: Lsn };
}

/**
 * What an earlier stream made durable inside the segment this one starts at (a reconnection
 * streams the segment in progress again from its start, into the same file): reported from the
 * start, as it is still durable there, so that the slot never moves back. Nothing otherwise.
 */
function durableBefore(held: HeldPosition, tli: number, start: Lsn, segSize: number): Lsn | undefined {
  const at = held.at;
  return at !== undefined && at.tli === tli && at.lsn > start && at.lsn - start < BigInt(segSize) ? at.lsn : undefined;
}

/** Follow the sink's durable position only (its pressure, drain and failure are the stream's); returns the detach function. */
function onDurable(sink: WalDirSink, durable: (lsn: Lsn) => void): () => void {
  return sink.attach({ pressure: () => undefined, drain: () => undefined, failed: () => undefined, durable });
}

/** A server's history file as fetched: its ancestry, and the file's bytes. */
interface ServerHistory {
  tli: number;
  entries: TimelineHistoryEntry[];
  content: Buffer;
}

/** Where one connection's stream starts, and the slot it streams through. */
interface StreamStart {
  start: Lsn;
  tli: number;
  slotName: string | undefined;
  /** What READ_REPLICATION_SLOT said of it (slotType tells a logical or invalidated slot apart). */
  slot: SlotInfo | undefined;
}

/** Where the stream is while it follows timelines on one connection. */
interface Following {
  tli: number;
  start: Lsn;
  /** The timeline the server ended in this connection, and where (checked against the next history file). */
  switchedFrom: { tli: number; at: Lsn } | undefined;
  /** The server's history, when asked for already (used again at the timeline switch, not asked twice). */
  fetched: ServerHistory | undefined;
}

/** One connection's worth of streaming: decide where to start, then follow timelines until the stream ends. */
async function streamOnce(round: StreamRound): Promise<StreamOutcome> {
  const info = await admitServer(round);
  const from = await findStart(round, info);
  const sink = openSink(round, info);
  // What the sink makes durable may be served.
  const tail = round.tail;
  const detachTail = tail ? onDurable(sink, (lsn) => tail.setDurable(lsn)) : undefined;
  try {
    return await followTimelines(round, info, sink, from);
  } finally {
    detachTail?.();
  }
}

/**
 * Identify the server and accept it: the same system as before, a version walstream speaks, the
 * archive claimed for its system (then the spool's uploads start), and the server of receive
 * --serve told which system it serves.
 */
async function admitServer(round: StreamRound): Promise<ServerInfo> {
  const { conn, o, expectedSystemId, store, startUploads, serving } = round;
  const info = await identify(conn);
  if (expectedSystemId !== undefined && expectedSystemId !== info.systemId) {
    throw new PermanentError(`system identifier of the server changed from ${expectedSystemId} to ${info.systemId}: this is another cluster`);
  }
  if (conn.serverVersionNum < 100000) throw new PermanentError('server version is too old: walstream needs PostgreSQL 10 or newer');
  if (store) {
    // One archive, one database system: record it on first use, refuse another system's WAL after.
    // An encrypted archive (its identity record says so) refuses a receiver without the key.
    try {
      await claimArchive(store, { systemIdentifier: info.systemId, segmentSize: info.segSize }, 'the server', {
        encrypts: o.keyring !== undefined,
        requireEncrypted: o.keyring?.requireEncrypted === true,
      });
    } catch (err) {
      // Another system's archive, a key that is missing or does not fit the identity record, an
      // unknown record: retrying cannot help. Only a transient store failure is retried.
      if (err instanceof IdentityMismatchError || err instanceof ArchiveEncryptedError) throw new PermanentError(err.message);
      if (err instanceof StorageError && !err.transient) throw new PermanentError(`archive: ${err.message}`);
      throw err;
    }
    await startUploads();
  }
  if (serving) {
    try {
      await serving.identified(identityOfServer(info.systemId, info.segSize, info.blockSize, info.version));
    } catch (err) {
      throw new PermanentError(`cannot serve: ${(err as Error).message}`);
    }
  }
  return info;
}

/**
 * Where to start: the directory, then (with --archive) the archive, then the slot, then the
 * server's position (pg_receivewal.c FindStreamingStart and StreamLog); refused when the server
 * is not on that timeline yet, or the slot no longer holds what lies between.
 */
async function findStart(round: StreamRound, info: ServerInfo): Promise<StreamStart> {
  const { o, dir, store } = round;
  const { slotName, slot, slotCreated } = await readSlot(round);
  let start: Lsn;
  let tli: number;
  let continuing = true;
  const resume = await findStreamingStart(dir, info.segSize);
  const archived = !resume && store && o.temporarySlot === undefined ? await archiveResumePoint(store, info.segSize) : undefined;
  if (resume) {
    const sysid = await readSegmentSystemId(join(dir, resume.entry.file), resume.entry.compression);
    if (sysid !== undefined && sysid !== info.systemId) {
      throw new PermanentError(`directory "${dir}" holds WAL of database system ${sysid}, but the server is system ${info.systemId}; use another directory`);
    }
    ({ start, tli } = resume);
  } else if (archived) {
    ({ start, tli } = archived);
    o.log.verbose(`spool is empty: resuming after the archive's newest segment, at ${formatLsn(start)} (timeline ${tli})`);
  } else if (slot?.restartLsn != null) {
    start = slot.restartLsn;
    tli = slot.restartTli ?? info.timeline;
    continuing = false;
  } else {
    start = info.xlogPos;
    tli = info.timeline;
    continuing = false;
  }
  // Continuing on a timeline the server says it is not on yet (receivelog.c ReceiveXlogStream:
  // "starting timeline is not present in the server"): a server that has not followed it (during
  // a failover, an address may point at a standby that is behind for a while), or one that lies.
  // Nothing is written; like pg_receivewal, try again later (with --no-loop: exit 1).
  if (tli > info.timeline) {
    throw new Error(
      `starting timeline ${tli} is not present in the server: it reports timeline ${info.timeline}, but ${continuing ? `"${dir}" (or the archive) already holds WAL of timeline ${tli}` : `the slot is on timeline ${tli}`}. ` +
        'Point walstream at a server that has followed this timeline, or move the directory aside and start afresh',
    );
  }
  // Continuing what we have: the slot must still hold everything from there on (a slot just
  // created holds WAL from now on only; the server may still have what comes before).
  if (continuing && !slotCreated && slot?.restartLsn != null && segmentStart(slot.restartLsn, info.segSize) > segmentStart(start, info.segSize)) {
    throw new PermanentError(
      `replication slot "${o.slot}" has restart_lsn ${formatLsn(slot.restartLsn)}, past the resume point ${formatLsn(start)}: ` +
        'the server no longer keeps the WAL in between for this slot. Fill the gap from another archive, or start afresh in an empty directory',
    );
  }
  return { start: segmentStart(start, info.segSize), tli, slotName, slot };
}

/** The slot to stream through: the temporary one created, or --slot read (and created when missing and asked to). */
async function readSlot(round: StreamRound): Promise<{ slotName: string | undefined; slot: SlotInfo | undefined; slotCreated: boolean }> {
  const { conn, o } = round;
  if (o.temporarySlot !== undefined) {
    assertSlotName(o.temporarySlot);
    await conn.command(`CREATE_REPLICATION_SLOT "${o.temporarySlot}" TEMPORARY PHYSICAL RESERVE_WAL`);
  }
  const slotName = o.slot ?? o.temporarySlot;
  const slot = slotName !== undefined ? await conn.readSlot(slotName) : undefined;
  if (slot && slot.slotType === null) {
    if (!o.createSlotIfMissing) throw new PermanentError(slotMissing(o.slot!, round.target));
    return { slotName, slot: await createMissingSlot(conn, o.slot!, round.target, o.log), slotCreated: true };
  }
  return { slotName, slot, slotCreated: false };
}

/** The sink that lays the stream out in the directory (the spool with --archive). */
function openSink(round: StreamRound, info: ServerInfo): WalDirSink {
  const { o, dir, uploader, tail } = round;
  return new WalDirSink({
    dir,
    segSize: info.segSize,
    blockSize: info.blockSize,
    // With an archive the spool stays uncompressed; objects are compressed on the way to the archive.
    compression: uploader ? 'none' : o.compression,
    compressionLevel: o.compressionLevel,
    noSync: o.noSync,
    systemId: info.systemId,
    magic: magicForServerVersion(info.version),
    verifyRecords: o.verifyRecords !== false,
    onUnverifiedSegment: (name) => o.log.verbose(`segment ${name} is complete, but the stream stopped inside the record that runs past its end: kept as ${name}.partial, streamed again on restart`),
    digestSegments: uploader?.takesDigests === true,
    onSegmentDone: (name, _end, written) => {
      o.log.verbose(`finished segment ${name}`);
      o.metrics?.segmentCompleted();
      void uploader?.enqueue(name, written);
    },
    ...(tail ? { tap: { begin: (start: Lsn, t: number) => tail.begin(start, t), data: (lsn: Lsn, data: Buffer) => tail.append(lsn, data) } } : {}),
  });
}

/** Stream timeline after timeline on this connection until the stream stops or the server ends it. */
async function followTimelines(round: StreamRound, info: ServerInfo, sink: WalDirSink, from: StreamStart): Promise<StreamOutcome> {
  const { o, dir, store, stopped } = round;
  const f: Following = { tli: from.tli, start: from.start, switchedFrom: undefined, fetched: undefined };
  for (;;) {
    if (f.tli > 1) await writeHistory(round, sink, f);
    if (stopped()) return { finished: true, systemId: info.systemId };
    o.log.verbose(`starting log streaming at ${formatLsn(f.start)} (timeline ${f.tli})`);
    sink.begin(f.start, f.tli);
    o.metrics?.streamStarting(f.tli, f.start);
    const result = await streamTimeline(round, info, sink, from, f);
    // The start was refused at a fork: `f` now names the timeline that forked.
    if (result === undefined) continue;
    const end = result.end;
    if (end.kind === 'timeline-end') {
      const tli = f.tli;
      if (end.nextTli <= tli) throw new ProtocolError(`server reported unexpected next timeline ${end.nextTli}, following timeline ${tli}`);
      if (end.nextStart > result.received) {
        throw new ProtocolError(`server stopped streaming timeline ${tli} at ${formatLsn(result.received)}, but reported next timeline ${end.nextTli} to begin at ${formatLsn(end.nextStart)}`);
      }
      o.log.verbose(`switched to timeline ${end.nextTli} at ${formatLsn(end.nextStart)}`);
      await reportFork(o, { dir, store, tli, child: end.nextTli, fork: end.nextStart, segSize: info.segSize, log: o.log });
      f.switchedFrom = { tli, at: end.nextStart };
      f.tli = end.nextTli;
      f.start = segmentStart(end.nextStart, info.segSize);
      continue;
    }
    if (end.kind === 'stopped') return { finished: true, systemId: info.systemId };
    return { finished: false, systemId: info.systemId };
  }
}

/** The history file of the timeline about to be streamed, in the directory (from the server when missing) and queued for the archive. */
async function writeHistory(round: StreamRound, sink: WalDirSink, f: Following): Promise<void> {
  const { conn, uploader } = round;
  const name = historyFileName(f.tli);
  if (!(await sink.hasHistory(name))) {
    // The server's own history file; one that is unusable is nothing to retry, and nothing is written.
    const h = f.fetched?.tli === f.tli ? f.fetched : await serverHistory(conn, f.tli);
    const entries = h.entries;
    // The server ended the previous timeline at its switch point (walsender.c StartReplication:
    // next_tli_startpos is tliSwitchPoint of the timeline streamed): the history must agree.
    const switchedFrom = f.switchedFrom;
    if (switchedFrom) {
      const entry = entries.find((e) => e.tli === switchedFrom.tli);
      if (!entry || entry.end !== switchedFrom.at) {
        throw new ProtocolError(
          `the server sent a history file ${name} that ${entry ? `ends timeline ${entry.tli} at ${formatLsn(entry.end)}` : `does not name timeline ${switchedFrom.tli}`}, but it ended timeline ${switchedFrom.tli} at ${formatLsn(switchedFrom.at)}`,
        );
      }
    }
    await sink.writeHistory(name, h.content);
    round.o.log.verbose(`wrote timeline history file ${name}`);
  }
  await uploader?.enqueue(name);
}

/**
 * One START_REPLICATION on timeline `f.tli` from `f.start`, the segment in progress shipped
 * meanwhile: how it ended, or undefined when the server refused the start at a fork and `f`
 * moved to the timeline that forked.
 */
async function streamTimeline(round: StreamRound, info: ServerInfo, sink: WalDirSink, from: StreamStart, f: Following): Promise<StreamResult | undefined> {
  const { conn, o, onData, uploader, shipper, serving, recorder } = round;
  const shipping = shipper ? shipPartials(shipper, sink, info.segSize, o.partialIntervalMs ?? 5000) : undefined;
  const tli = f.tli;
  const before = durableBefore(round.held, tli, f.start, info.segSize);
  const detachHeld = onDurable(sink, (lsn) => {
    round.held.at = { tli, lsn };
  });
  const detachRecorder = recorder ? onDurable(sink, (lsn) => recorder.progress(tli, lsn)) : undefined;
  try {
    const result = await runStream(conn, sink, {
      start: f.start,
      timeline: f.tli,
      slot: from.slotName,
      endPos: o.endPos,
      segSize: info.segSize,
      statusIntervalMs: o.statusIntervalMs,
      receiveTimeoutMs: o.receiveTimeoutMs ?? DEFAULT_RECEIVE_TIMEOUT_MS,
      synchronous: o.synchronous,
      ...(serving ? { syncAfterMs: SERVE_SYNC_AFTER_MS } : {}),
      reportFlush: from.slotName !== undefined || o.synchronous,
      ...(before !== undefined ? { durableBefore: before } : {}),
      stopRequested: uploader ? Promise.race([o.stop, uploader.failed().then(() => undefined)]) : o.stop,
      backpressure: uploader,
      log: o.log,
      onProgress: onData,
      onActivity: o.metrics ? (a) => o.metrics!.activity(a) : undefined,
    });
    if (result.end.kind === 'timeline-end') sink.endOfTimeline(result.received);
    return result;
  } catch (err) {
    if (!(err instanceof ServerError) || err.command !== 'START_REPLICATION') throw err;
    await refusedStart(round, info, from, f, err);
    return undefined;
  } finally {
    o.metrics?.streamEnded();
    await shipping?.stop();
    await sink.endStream();
    detachHeld();
    detachRecorder?.();
    // The stream's last position goes to the record now (not awaited: the archive may be what failed).
    void recorder?.flush();
  }
}

/**
 * START_REPLICATION refused: a missing slot (created when asked to, then retried), a logical or
 * invalidated one, or a start on an older timeline past the server's fork. A fork behind what is
 * held moves `f` to the timeline that forked; anything else is thrown.
 */
async function refusedStart(round: StreamRound, info: ServerInfo, from: StreamStart, f: Following, err: ServerError): Promise<void> {
  const { conn, o, dir, store, stopped } = round;
  const { tli, start } = f;
  // Before PostgreSQL 15 a missing slot shows only here (no READ_REPLICATION_SLOT).
  if (err.code === SQLSTATE.UNDEFINED_OBJECT && o.slot !== undefined && !stopped()) {
    if (!o.createSlotIfMissing) throw new PermanentError(slotMissing(o.slot, round.target));
    await createMissingSlot(conn, o.slot, round.target, o.log);
    throw new Error(`replication slot "${o.slot}" was missing and has been created`);
  }
  // A logical slot, or one invalidated: told apart by what READ_REPLICATION_SLOT said.
  if (err.code === SQLSTATE.OBJECT_NOT_IN_PREREQUISITE_STATE) throw classifyError(err, { slot: o.slot, slotType: from.slot?.slotType });
  if (tli >= info.timeline) throw err;
  // A start on an older timeline refused before streaming with INTERNAL_ERROR (an ereport
  // without errcode): walsender.c StartReplication's "requested starting point ... is not
  // in this server's history" (DETAIL "This server's history forked from timeline T at X"),
  // or timeline.c tliSwitchPoint's "requested timeline T is not in this server's history".
  // Both the message and the DETAIL are in the server's lc_messages, and INTERNAL_ERROR is
  // shared by other conditions: which one it is, and where the fork is, is read from the
  // server's own history (TIMELINE_HISTORY), as the walsender itself decided.
  if (err.code === SQLSTATE.INTERNAL_ERROR && !err.streaming) {
    const fetched = await serverHistory(conn, info.timeline);
    f.fetched = fetched;
    const i = fetched.entries.findIndex((e) => e.tli === tli);
    if (i < 0) {
      throw new PermanentError(
        `${err.withDetail}: the archive has followed timeline ${tli}, which is not in the history of the server's timeline ${info.timeline}. ` +
          'Point walstream at the server that continues this timeline, or move the directory aside and start afresh',
      );
    }
    const fork = fetched.entries[i]!.end;
    // Not the fork (the server would have streamed up to it): another condition, retried.
    if (fork >= start) throw err;
    // A fork behind what we hold: what we hold past it is the old primary's WAL, kept as it
    // is; the stream goes on on the timeline that forked, from the fork, or after what we
    // already hold of it.
    const child = fetched.entries[i + 1]?.tli ?? info.timeline;
    await reportFork(o, { dir, store, tli, child, fork, segSize: info.segSize, log: o.log, atLeast: start });
    const held = (await findStreamingStart(dir, info.segSize, child)) ?? (store ? await archiveResumePoint(store, info.segSize, child) : undefined);
    f.switchedFrom = { tli, at: fork };
    f.tli = child;
    f.start = segmentStart(held && held.start > fork ? held.start : fork, info.segSize);
    return;
  }
  // The old timeline up to the fork, from a new primary that no longer has it: say which
  // range is missing and where it can still be found.
  if (err.code === SQLSTATE.UNDEFINED_FILE) {
    const entries = (f.fetched ??= await serverHistory(conn, info.timeline)).entries;
    const fork = entries.find((e) => e.tli === tli)?.end;
    if (fork === undefined) throw err;
    throw new PermanentError(
      `${err.message} (on the server): the server no longer has timeline ${tli} from ${formatLsn(start)} to the fork at ${formatLsn(fork)}, which walstream does not hold yet. ` +
        `Copy those segments from the old primary's pg_wal, or from the archive its archive_command wrote, into "${dir}"${store ? ' or the archive' : ''}, then run walstream again`,
    );
  }
  throw err;
}

/**
 * Every `intervalMs`, make the open segment durable in the spool and ship what is new of it.
 * Returns a handle whose stop() ends the timer, waits for a shipment in flight, and ships once
 * more what came since: a stream that ends (the server gone, a new timeline, a signal) leaves
 * its last durable bytes in the archive, not only those of the last tick.
 */
function shipPartials(shipper: PartialShipper, sink: WalDirSink, segSize: number, intervalMs: number): { stop(): Promise<void> } {
  let inFlight: Promise<void> = Promise.resolve();
  let lastReceived = -1n;
  const ship = (): Promise<void> => {
    const seg = sink.openSegmentName;
    if (seg === undefined || sink.receivedLsn === lastReceived) return inFlight;
    lastReceived = sink.receivedLsn;
    inFlight = (async () => {
      await sink.sync();
      const segStart = segNoToLsn(parseWalFileName(seg, segSize).segNo, segSize);
      const offset = sink.durableLsn - segStart;
      if (offset > 0n && offset < BigInt(segSize)) await shipper.ship(seg, Number(offset));
    })().catch(() => undefined);
    return inFlight;
  };
  const timer = setInterval(() => void ship(), intervalMs);
  return {
    async stop() {
      clearInterval(timer);
      await inFlight;
      await ship();
    },
  };
}

/** The kind of a receive error, for walstream_errors_total. */
function errorKind(e: Error): ErrorKind {
  if (e instanceof PermanentError || e instanceof UsageError) return 'permanent';
  if (e instanceof ConnectionLostError) return 'connection';
  if (e instanceof ServerError) return /^(08|57)/.test(e.code ?? '') ? 'connection' : 'server';
  if (/ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|EPIPE|Connection terminated|^disconnected$/i.test(e.message)) return 'connection';
  return 'other';
}

/** Where to resume from the archive's listing: after its newest complete segment. */
async function archiveResumePoint(store: ArchiveStore, segSize: number, onlyTli?: number): Promise<{ start: Lsn; tli: number } | undefined> {
  let best: { tli: number; segNo: bigint } | undefined;
  const prefix = onlyTli === undefined ? '' : onlyTli.toString(16).toUpperCase().padStart(8, '0');
  for (const obj of await store.list(prefix)) {
    if (!isWalFileName(obj.name)) continue;
    const p = parseWalFileName(obj.name, segSize);
    if (!best || p.segNo > best.segNo || (p.segNo === best.segNo && p.tli > best.tli)) best = p;
  }
  return best ? { start: segNoToLsn(best.segNo + 1n, segSize), tli: best.tli } : undefined;
}

export { ConnectionLostError };

/** The server's history file of timeline `tli` (> 1): its ancestry, and the file's bytes. */
async function serverHistory(conn: ReplicationConnection, tli: number): Promise<ServerHistory> {
  const h = await conn.timelineHistory(tli);
  try {
    const entries = parseHistory(h.content.toString('utf8'));
    checkHistoryForTimeline(entries, tli);
    return { tli, entries, content: h.content };
  } catch (err) {
    if (err instanceof HistoryParseError) throw new ProtocolError(`the server sent an unusable history file ${historyFileName(tli)}: ${err.message}`);
    throw err;
  }
}

/**
 * A timeline ended at `fork` while walstream holds more of it (the old primary's WAL that the new
 * one never got): say once which range is lost, count it, and stop when asked to (--on-fork=stop).
 * Nothing held is changed. `atLeast`: a position known to be held (the resume point).
 */
async function reportFork(o: ReceiveOptions, f: { dir: string; store: ArchiveStore | undefined; tli: number; child: number; fork: Lsn; segSize: number; log: Logger; atLeast?: Lsn }): Promise<void> {
  let held = await heldPast({ dir: f.dir, ...(f.store ? { store: f.store } : {}), tli: f.tli, fork: f.fork, segSize: f.segSize });
  if (f.atLeast !== undefined && f.atLeast > held) held = f.atLeast;
  if (held <= f.fork) return;
  const lost = held - f.fork;
  const what =
    `timeline ${f.tli} continues past the fork to timeline ${f.child} at ${formatLsn(f.fork)} by ${formatBytes(Number(lost))} (to ${formatLsn(held)}), ` +
    `WAL the new timeline does not have: transactions lost in the failover`;
  if (o.onFork === 'stop') {
    throw new PermanentError(`${what}; stopped (--on-fork=stop). Once looked at, run again without --on-fork=stop to follow timeline ${f.child} (the WAL held stays as it is)`);
  }
  f.log.warn(`${what}; kept as it is, following timeline ${f.child}`);
  o.metrics?.fork(f.tli, f.child, f.fork, lost);
}

function slotMissing(slot: string, target: string): string {
  return `replication slot "${slot}" does not exist on the server (${target}); create it with --create-slot, or give --create-slot-if-missing to have walstream create it after a failover`;
}

/** --create-slot-if-missing: the slot is gone (a new primary after a failover): create it, reserving WAL from now on. */
async function createMissingSlot(conn: ReplicationConnection, slot: string, target: string, log: Logger): Promise<SlotInfo | undefined> {
  try {
    await conn.createPhysicalSlot(slot, true);
    log.warn(`replication slot "${slot}" did not exist on the server (${target}): created it (--create-slot-if-missing); it keeps WAL from now on`);
  } catch (err) {
    if (!(err instanceof ServerError && err.code === SQLSTATE.DUPLICATE_OBJECT)) throw err;
  }
  return conn.readSlot(slot);
}
