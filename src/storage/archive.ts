// The archive's policy, written once over any storage driver (storage/driver.ts): it mirrors the
// ArchiveStore contract of storage/types.ts and guarantees it whatever the driver (memory, a
// directory, S3, Azure Blob), since every rule below lives here and nowhere else.
//
// The plan this module carries out (issue 19, parts 1 and 2):
// - a driver does what an object store does and no more: create-if-absent (atomic, durable),
//   read, stat, list by prefix in pages, delete, a small metadata record, and for stores where a
//   damaged copy may be replaced, overwrite; plus what its killed writers leave behind;
// - this policy owns WAL names and reserved names, compression (codec.ts), encryption
//   (encryption.ts), the recorded SHA-256 and its check on every read, duplicates judged by
//   content, conflicts kept in quarantine/, damaged copies (common.ts judgeStored), and the
//   choice between replacing a damaged copy (drivers with overwrite) and refusing (a directory);
// - LocalStore, S3Store, MemoryStore and AzureStore are this class over their driver, so the
//   rest of the program (receive, push, fetch, prefetch, serve, status, verify, cleanup) keeps
//   using ArchiveStore unchanged, and archives written before read and write exactly as then
//   (test/integration/archive-compat.test.ts);
// - the whole-buffer path stays the fast one for segments: one compression, one seal, one hash,
//   the driver's own fast read (S3: one buffer of the Content-Length).
import { sha256Owned } from '../util/bulk.js';
import { builtin } from '../util/lazy.js';
import { PieceHash } from '../util/piece-hash.js';
import { assertCompressionAvailable, compress, decompress, sha256Hex } from './codec.js';
import { QUARANTINE_ATTEMPTS, byName, isArchiveName, isWalName, judgeStored, listedUnder, plainRefused, quarantineName, unauthenticatedError } from './common.js';
import type { CreateOptions, CreateResult, Driver, DriverObject, NewMeta, ReadResult } from './driver.js';
import { SEALED_MAGIC, decodeStored, encodeStored, isSealed, type Keyring } from './encryption.js';
import { Digesting, STREAM_VERSION, sealStream, transcode, unsealStream } from './stream.js';
import {
  ConflictError,
  IntegrityError,
  NotFoundError,
  QUARANTINE_PREFIX,
  BACKUP_PREFIX,
  StorageError,
  assertArchiveName,
  type ArchiveStore,
  type Compression,
  type GetResult,
  type GetStreamOptions,
  type LeftoverOptions,
  type LeftoverRemoval,
  type LeftoverScan,
  type ListOptions,
  type ObjectInfo,
  type PutOptions,
  type PutPiecesOptions,
  type PutResult,
  type SegmentDigest,
} from './types.js';

export interface ArchiveOptions {
  /** Encrypt new objects with the first key, authenticate and decrypt with any (storage/encryption.ts). */
  keyring?: Keyring;
}

/** An object on its way in. */
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

/** An empty source of pieces. */
async function* nothing(): AsyncGenerator<Buffer> {
  // no pieces
}

/** How a put came out before the policy acts on it. */
type Outcome = PutResult | { kind: 'different' } | { kind: 'damaged'; read: ReadResult; why: string } | { kind: 'unauthenticated'; keyId: string };

/** node:crypto, loaded at the first checksum. */
const crypto = builtin<typeof import('node:crypto')>('node:crypto');

/** getTo reads an object this much at a time, into one buffer. */
const PIECE_BYTES = 512 * 1024;

/** A transient getStream reads this much at a time, and hashes an object of STREAM_THREAD_BYTES and more on another thread. */
const STREAM_PIECE_BYTES = 1 << 20;
const STREAM_THREAD_BYTES = 16 << 20;

/** Rounds of create-then-read before a name that keeps changing is given up (transient). */
const STORE_ROUNDS = 6;

export class Archive implements ArchiveStore {
  readonly description: string;
  protected readonly driver: Driver;
  protected readonly keyring: Keyring | undefined;
  private archiveEncrypted = false;

  constructor(driver: Driver, opts: ArchiveOptions = {}) {
    this.driver = driver;
    this.description = driver.description;
    this.keyring = opts.keyring;
  }

  setArchiveEncrypted(encrypted: boolean): void {
    this.archiveEncrypted = encrypted;
  }

  async put(name: string, data: Buffer, opts: PutOptions = {}): Promise<PutResult> {
    assertArchiveName(name);
    const compression = opts.compression ?? 'none';
    assertCompressionAvailable(compression);
    const keyring = opts.unencrypted ? undefined : this.keyring;
    const obj: Prepared = {
      data,
      stored: encodeStored(keyring, name, compression, await compress(data, compression)),
      sha: opts.sha256 ?? sha256Hex(data),
      compression,
      noSync: opts.noSync ?? false,
      keyring,
      plainIsDamaged: keyring !== undefined && (keyring.requireEncrypted || this.archiveEncrypted) && isWalName(name),
    };
    const outcome = await this.store(name, obj);
    if ('status' in outcome) return outcome;
    if (outcome.kind === 'unauthenticated') throw unauthenticatedError(name, outcome.keyId);
    if (outcome.kind === 'damaged' && this.driver.overwrite) return this.replaceDamaged(name, obj, outcome.read);
    // A conflict, or a damaged copy on a store that never replaces one: the new copy is kept in
    // quarantine/ and the put fails naming it.
    const when = new Date();
    const quarantined: Prepared = { ...obj, plainIsDamaged: false };
    for (let attempt = 0; attempt < QUARANTINE_ATTEMPTS; attempt++) {
      const q = quarantineName(name, when, attempt);
      if (!('status' in (await this.store(q, quarantined)))) continue;
      if (outcome.kind === 'different') throw new ConflictError(name, q);
      throw new ConflictError(
        name,
        q,
        this.driver.refusal?.(name, outcome.read, outcome.why, q) ??
          `"${name}" is already in the archive, but the stored copy cannot be kept: ${outcome.why}; it was not overwritten (the new copy is kept as "${q}")`,
      );
    }
    throw new StorageError(`"${name}" conflicts with the archive and no free quarantine name was found`, false);
  }

  async get(name: string): Promise<GetResult> {
    assertArchiveName(name);
    const read = await this.driver.read(name);
    if (!read) throw new NotFoundError(name);
    const compression = read.meta.compression ?? 'none';
    const sha = read.meta.sha256;
    const { payload, keyId } = isStreamSealed(read.body)
      ? { payload: await collect(unsealStream(this.keyring, name, compression, once(read.body))), keyId: read.body.subarray(11, 11 + read.body[10]!).toString('latin1') }
      : decodeStored(this.keyring, name, compression, read.body, plainRefused(this.keyring?.requireEncrypted === true, name));
    let data: Buffer;
    try {
      // An unverified compressed .partial is an in-progress stream: take what it decodes to.
      data = await decompress(payload, compression, { allowTruncated: sha === undefined && name.endsWith('.partial') });
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw new IntegrityError(name, `cannot decompress${read.file !== undefined ? ` ${read.file}` : ''} (${compression}): ${(err as Error).message}`);
    }
    if (sha !== undefined) {
      let hex: string;
      if (read.owned || data !== read.body) {
        // Memory this call read or decoded: it may be handed to a hashing thread.
        const hashed = await sha256Owned(data);
        data = hashed.data;
        hex = hashed.hex;
      } else {
        hex = sha256Hex(data);
      }
      if (hex !== sha) {
        throw new IntegrityError(name, read.file !== undefined ? `SHA-256 of ${read.file} is ${hex}, the recorded one ${sha}` : `SHA-256 ${hex} does not match the recorded ${sha}`);
      }
    }
    return {
      data,
      info: { name, size: data.length, storedSize: read.storedSize, checksum: sha, compression, modified: read.modified, ...(keyId !== undefined ? { keyId } : {}) },
    };
  }

  async getTo(name: string, write: (piece: Buffer) => Promise<void>): Promise<ObjectInfo> {
    assertArchiveName(name);
    const whole = async (): Promise<ObjectInfo> => {
      const got = await this.get(name);
      await write(got.data);
      return got.info;
    };
    if (!this.driver.readStream || this.driver.readsInto !== true || plainRefused(this.keyring?.requireEncrypted === true, name)) return whole();
    const r = await this.driver.readStream(name, { into: Buffer.allocUnsafeSlow(PIECE_BYTES) });
    if (!r) throw new NotFoundError(name);
    const pieces = r.body[Symbol.asyncIterator]();
    let ended = false;
    try {
      let next = await pieces.next();
      const compression = r.meta.compression ?? 'none';
      // Decompression and decryption take get()'s way (the first bytes tell a sealed object).
      if (compression !== 'none' || (!next.done && (next.value.length < SEALED_MAGIC.length || isSealed(next.value)))) return await whole();
      const sha = r.meta.sha256;
      const hash = sha !== undefined ? crypto().createHash('sha256') : undefined;
      let size = 0;
      for (; !next.done; next = await pieces.next()) {
        hash?.update(next.value);
        size += next.value.length;
        await write(next.value);
      }
      ended = true;
      const hex = hash?.digest('hex');
      if (hex !== sha) {
        throw new IntegrityError(name, r.file !== undefined ? `SHA-256 of ${r.file} is ${hex}, the recorded one ${sha}` : `SHA-256 ${hex} does not match the recorded ${sha}`);
      }
      return { name, size, storedSize: r.object.storedSize, checksum: sha, compression, modified: r.object.modified };
    } finally {
      // A reader stopped early (a failed write, a sealed object) lets the driver's file or connection go.
      if (!ended) await pieces.return?.();
    }
  }

  /** Whether putPieces stores here (plain bytes into a driver that writes pieces as they come). */
  takesPieces(): boolean {
    return this.keyring === undefined && this.driver.createStream !== undefined && this.driver.writesPieces === true;
  }

  listScans(): boolean {
    return this.driver.listScans === true;
  }

  /** Whether putPieces can keep the files of directory `dir` as they are (a second name, not a copy). */
  async linksFrom(dir: string): Promise<boolean> {
    return this.takesPieces() && this.driver.linksFrom !== undefined && (await this.driver.linksFrom(dir));
  }

  async putPieces(name: string, pieces: AsyncIterable<Buffer>, opts: PutPiecesOptions = {}): Promise<PutResult | 'taken' | undefined> {
    assertArchiveName(name);
    // Plain bytes only: compression and encryption hold on to pieces (and have put's way).
    if (!this.takesPieces()) return undefined;
    const digest = new Digesting();
    let failure: { err: unknown } | undefined;
    const { known } = opts;
    const source = async function* (): AsyncGenerator<Buffer> {
      try {
        yield* digest.pass(pieces);
        // A copy of a file whose writer hashed it: what was read must be what was written.
        if (known && (digest.hex !== known.sha256 || digest.size !== known.size)) {
          throw new StorageError(
            `${name}: ${opts.file ?? 'the file'} does not hold the bytes written to it (${digest.size} bytes with SHA-256 ${digest.hex}, written: ${known.size} bytes with ${known.sha256}); not stored`,
            false,
          );
        }
      } catch (err) {
        failure = { err };
        throw err;
      }
    };
    const meta = (): NewMeta => ({ sha256: digest.hex, compression: 'none', size: digest.size });
    const createOpts = { noSync: opts.noSync ?? false, blocking: opts.blocking === true };
    const { driver } = this;
    /** The known checksum, once a second name of the file took it. */
    let took: SegmentDigest | undefined;
    const create = async (): Promise<CreateResult> => {
      if (opts.file !== undefined && driver.createLinked) {
        // A second name of the file where the driver can make one (nothing of the pieces is read
        // when it cannot: the next source() starts them from the beginning). With the checksum
        // known, nothing of the file is read at all.
        const linked = known
          ? await driver.createLinked(name, opts.file, nothing(), () => ({ sha256: known.sha256, compression: 'none', size: known.size }), createOpts)
          : await driver.createLinked(name, opts.file, source(), meta, createOpts);
        if (linked) {
          took = known;
          return linked;
        }
      }
      return driver.createStream!(name, source(), meta, createOpts);
    };
    let r: CreateResult;
    try {
      r = await create();
    } catch (err) {
      // The source's own error, not the driver's wrapping of it.
      throw failure ? failure.err : err;
    }
    if (!r.created) return 'taken';
    const size = took?.size ?? digest.size;
    return { status: 'created', info: { name, size, storedSize: size, checksum: took?.sha256 ?? digest.hex, compression: 'none', modified: r.modified } };
  }

  async head(name: string): Promise<ObjectInfo | undefined> {
    assertArchiveName(name);
    const o = await this.driver.stat(name);
    return o ? infoOf(o) : undefined;
  }

  async list(prefix = '', opts: ListOptions = {}): Promise<ObjectInfo[]> {
    // WAL names are flat; only quarantine copies and base backups live below a "/".
    if (!prefix.startsWith(QUARANTINE_PREFIX) && !prefix.startsWith(BACKUP_PREFIX) && prefix.includes('/')) return [];
    const accept = (key: string): boolean => isArchiveName(key) && listedUnder(key, prefix);
    const out: ObjectInfo[] = [];
    for await (const page of this.driver.list(prefix, { accept })) {
      for (const o of page) if (accept(o.key)) out.push(infoOf(o));
      // Pages come in key order: once enough are found, the rest come after them.
      if (opts.limit !== undefined && out.length >= opts.limit) break;
    }
    out.sort(byName);
    return opts.limit !== undefined ? out.slice(0, opts.limit) : out;
  }

  async delete(name: string): Promise<void> {
    assertArchiveName(name);
    await this.driver.delete(name);
  }

  async scanLeftovers(opts: LeftoverOptions = {}): Promise<LeftoverScan> {
    return this.driver.scanLeftovers ? this.driver.scanLeftovers(opts) : { leftovers: [], unavailable: undefined };
  }

  async removeLeftovers(opts: LeftoverOptions & { dryRun?: boolean } = {}): Promise<LeftoverRemoval> {
    return this.driver.removeLeftovers ? this.driver.removeLeftovers(opts) : { leftovers: [], unavailable: undefined, removed: [], failed: [] };
  }

  async close(): Promise<void> {
    await this.driver.close();
  }

  async putStream(name: string, source: AsyncIterable<Buffer>, opts: PutOptions = {}): Promise<PutResult> {
    assertArchiveName(name);
    const compression = opts.compression ?? 'none';
    assertCompressionAvailable(compression);
    if (!this.driver.createStream) throw new StorageError(`${this.description} cannot store streamed objects yet`, false);
    const keyring = opts.unencrypted ? undefined : this.keyring;
    const digest = new Digesting();
    let body = transcode(digest.pass(source), compression, 'compress');
    if (keyring) body = sealStream(keyring, name, compression, body);
    let storedSize = 0;
    const counted = async function* (): AsyncGenerator<Buffer> {
      for await (const b of body) {
        storedSize += b.length;
        yield b;
      }
    };
    const r = await this.driver.createStream(name, counted(), () => ({ sha256: digest.hex, compression, size: digest.size }), { noSync: opts.noSync ?? false });
    if (r.created) {
      return { status: 'created', info: { name, size: digest.size, storedSize, checksum: digest.hex, compression, modified: r.modified } };
    }
    // Taken: the bytes went by, so only the recorded checksum can tell the copies apart.
    const held = await this.driver.stat(name);
    if (held?.meta?.sha256 === digest.hex && (held.meta.size === undefined || held.meta.size === digest.size)) return { status: 'exists', info: infoOf(held) };
    throw new ConflictError(name, '', `"${name}" is already in the archive with different contents; not overwritten (a streamed copy is not kept aside: its bytes went by)`);
  }

  async getStream(name: string, opts: GetStreamOptions = {}): Promise<{ info: ObjectInfo; stream: AsyncIterable<Buffer> }> {
    assertArchiveName(name);
    if (opts.transient && this.driver.readStream && this.driver.readsInto === true && !plainRefused(this.keyring?.requireEncrypted === true, name)) {
      const plain = await this.plainStream(name);
      if (plain !== undefined) return plain;
    }
    if (!this.driver.readStream) {
      const g = await this.get(name);
      return { info: g.info, stream: once(g.data) };
    }
    const r = await this.driver.readStream(name);
    if (!r) throw new NotFoundError(name);
    const compression = r.meta.compression ?? 'none';
    const sha = r.meta.sha256;
    // The encryption header with its key id (at most 64 bytes after the first 11).
    const { head, rest } = await peek(r.body, 11 + 64);
    let payload: AsyncIterable<Buffer>;
    let keyId: string | undefined;
    if (isSealed(head) && head[8] === STREAM_VERSION) {
      payload = unsealStream(this.keyring, name, compression, rest);
      // Its key id, as get reports it for a whole sealed object (unsealStream checks the header again, and authenticates every chunk).
      const idLen = head[10] ?? 0;
      if (idLen >= 1 && head.length >= 11 + idLen) keyId = head.subarray(11, 11 + idLen).toString('latin1');
    } else if (isSealed(head)) {
      // A whole object sealed in one piece (version 1): it authenticates only whole.
      const decoded = decodeStored(this.keyring, name, compression, await collect(rest), false);
      payload = once(decoded.payload);
      keyId = decoded.keyId;
    } else {
      if (plainRefused(this.keyring?.requireEncrypted === true, name)) {
        throw new IntegrityError(name, 'it is not encrypted, and only encrypted objects are accepted (--encryption-required)');
      }
      payload = rest;
    }
    const data = transcode(payload, compression, 'decompress');
    const digest = new Digesting();
    const checked = async function* (): AsyncGenerator<Buffer> {
      try {
        yield* digest.pass(data);
      } catch (err) {
        if (err instanceof StorageError) throw err;
        throw new IntegrityError(name, `cannot decompress (${compression}): ${(err as Error).message}`);
      }
      if (sha !== undefined && digest.hex !== sha) throw new IntegrityError(name, `SHA-256 ${digest.hex} does not match the recorded ${sha}`);
    };
    return { info: { ...infoOf(r.object), ...(keyId !== undefined ? { keyId } : {}) }, stream: checked() };
  }

  // --- internals ---

  /**
   * getStream of a plain object (uncompressed, not encrypted) from a driver that reads into
   * buffers: read into a few buffers of a PieceHash, the next piece read while the caller uses the
   * current one, each hashed on another thread once the caller asks for the next (an object under
   * STREAM_THREAD_BYTES is hashed here: a thread costs more than it saves). Undefined for any other
   * object, which getStream's general way reads.
   */
  private async plainStream(name: string): Promise<{ info: ObjectInfo; stream: AsyncIterable<Buffer> } | undefined> {
    let hasher: PieceHash | undefined;
    // The driver asks for a buffer only once the pieces are read, after the hasher is made.
    const r = await this.driver.readStream!(name, { into: () => hasher!.buffer() });
    if (!r) throw new NotFoundError(name);
    const h = new PieceHash({ pieceBytes: STREAM_PIECE_BYTES, thread: r.object.storedSize >= STREAM_THREAD_BYTES });
    hasher = h;
    const pieces = r.body[Symbol.asyncIterator]();
    let first: IteratorResult<Buffer>;
    try {
      first = await pieces.next();
    } catch (err) {
      h.close();
      throw err;
    }
    // Compressed or sealed (the first bytes tell), or too short to tell: getStream's general way.
    if ((r.meta.compression ?? 'none') !== 'none' || (!first.done && (first.value.length < SEALED_MAGIC.length || isSealed(first.value)))) {
      h.close();
      await pieces.return?.();
      return undefined;
    }
    const sha = r.meta.sha256;
    const checked = async function* (): AsyncGenerator<Buffer> {
      let ended = false;
      let pending: Promise<IteratorResult<Buffer>> | undefined;
      try {
        for (let next = first; !next.done; ) {
          // The next piece is read (into another buffer) while the caller uses this one.
          pending = pieces.next();
          yield next.value;
          h.update(next.value);
          next = await pending;
          pending = undefined;
        }
        ended = true;
        const hex = await h.digest();
        if (sha !== undefined && hex !== sha) {
          throw new IntegrityError(name, r.file !== undefined ? `SHA-256 of ${r.file} is ${hex}, the recorded one ${sha}` : `SHA-256 ${hex} does not match the recorded ${sha}`);
        }
      } finally {
        if (!ended) {
          h.close();
          // A reader stopped early lets the driver's file go (once the read under way is done).
          await pending?.catch(() => undefined);
          await pieces.return?.();
        }
      }
    };
    return { info: infoOf(r.object), stream: checked() };
  }

  private createOptions(obj: Prepared): CreateOptions {
    if (!this.driver.bodyChecksum) return { noSync: obj.noSync };
    // Uncompressed plaintext: the checksum recorded is the SHA-256 of the very bytes sent.
    return { noSync: obj.noSync, bodySha256: obj.stored === obj.data ? obj.sha : sha256Hex(obj.stored) };
  }

  /** Create `name` unless taken; when taken, judge what is there against `obj`. */
  private async store(name: string, obj: Prepared): Promise<Outcome> {
    const meta: NewMeta = { sha256: obj.sha, compression: obj.compression, size: obj.data.length };
    for (let round = 0; round < STORE_ROUNDS; round++) {
      const r = await this.driver.create(name, obj.stored, meta, this.createOptions(obj));
      if (r.created) {
        return {
          status: 'created',
          info: { name, size: obj.data.length, storedSize: obj.stored.length, checksum: obj.sha, compression: obj.compression, modified: r.modified },
        };
      }
      const judged = await this.compareWith(name, obj);
      if (judged !== 'gone') return judged;
    }
    throw new StorageError(`cannot store "${name}" in ${this.description}: it keeps changing under concurrent writers; try again`, true);
  }

  /** How what `name` holds compares with `obj` (common.ts judgeStored), or 'gone' (deleted since). */
  private async compareWith(name: string, obj: Prepared): Promise<Outcome | 'gone'> {
    const read = await this.driver.read(name);
    if (!read) return 'gone';
    const compression = read.meta.compression ?? 'none';
    const verdict = await judgeStored(name, { stored: read.body, compression, checksum: read.meta.sha256, size: read.meta.size }, obj.data, {
      keyring: obj.keyring,
      plainIsDamaged: obj.plainIsDamaged,
      allowTruncated: name.endsWith('.partial'),
    });
    switch (verdict.kind) {
      case 'identical':
        return {
          status: 'exists',
          info: { name, size: obj.data.length, storedSize: read.storedSize, checksum: read.meta.sha256, compression, modified: read.modified },
        };
      case 'different':
        return { kind: 'different' };
      case 'damaged':
        return { kind: 'damaged', read, why: verdict.why };
      case 'unauthenticated':
        return { kind: 'unauthenticated', keyId: verdict.keyId };
    }
  }

  /**
   * Keep the damaged bytes under quarantine/ for the operator, as they are, then store the
   * verified copy in their place (the one case where a put replaces what is there).
   */
  private async replaceDamaged(name: string, obj: Prepared, damaged: ReadResult): Promise<PutResult> {
    const when = new Date();
    const raw: Prepared = { data: damaged.body, stored: damaged.body, sha: sha256Hex(damaged.body), compression: 'none', noSync: obj.noSync, keyring: undefined, plainIsDamaged: false };
    let kept: string | undefined;
    for (let attempt = 0; attempt < QUARANTINE_ATTEMPTS && kept === undefined; attempt++) {
      const q = quarantineName(name, when, attempt);
      const r = await this.store(q, raw);
      if (!('kind' in r && r.kind === 'different')) kept = q;
    }
    if (kept === undefined) throw new StorageError(`"${name}" is damaged in the archive and no free quarantine name was found`, false);
    await this.driver.overwrite!(name, obj.stored, { sha256: obj.sha, compression: obj.compression, size: obj.data.length }, this.createOptions(obj));
    return {
      status: 'created',
      info: { name, size: obj.data.length, storedSize: obj.stored.length, checksum: obj.sha, compression: obj.compression, modified: new Date() },
      replacedDamaged: kept,
    };
  }
}

/** What head and list report of a stored object. */
function infoOf(o: DriverObject): ObjectInfo {
  return {
    name: o.key,
    size: o.meta?.size ?? o.storedSize,
    storedSize: o.storedSize,
    checksum: o.meta?.sha256,
    compression: o.meta ? (o.meta.compression ?? 'none') : undefined,
    modified: o.modified,
  };
}

/** A whole object sealed as a stream (storage/stream.ts), not in one piece. */
function isStreamSealed(stored: Buffer): boolean {
  return isSealed(stored) && stored.length > 10 && stored[8] === STREAM_VERSION;
}

async function* once(b: Buffer): AsyncGenerator<Buffer> {
  if (b.length > 0) yield b;
}

async function collect(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of src) parts.push(b);
  return Buffer.concat(parts);
}

/** The first `n` bytes of a stream (fewer if it is shorter), and the whole stream again. */
async function peek(src: AsyncIterable<Buffer>, n: number): Promise<{ head: Buffer; rest: AsyncIterable<Buffer> }> {
  const it = src[Symbol.asyncIterator]();
  const seen: Buffer[] = [];
  let held = 0;
  let done = false;
  while (held < n) {
    const r = await it.next();
    if (r.done) {
      done = true;
      break;
    }
    seen.push(r.value);
    held += r.value.length;
  }
  const head = Buffer.concat(seen).subarray(0, n);
  const rest = async function* (): AsyncGenerator<Buffer> {
    let ended = done;
    try {
      yield* seen;
      while (!ended) {
        const r = await it.next();
        if (r.done) ended = true;
        else yield r.value;
      }
    } finally {
      // A read given up early lets the source go (its file or connection).
      if (!ended) await it.return?.();
    }
  };
  return { head, rest: rest() };
}
