// An in-memory archive for unit tests, with the same semantics as the real backends (never
// overwrite, quarantine on conflict, verify on get) and test hooks: corrupt(), setModified(),
// failNext() and addLeftover() (what a killed writer would have left, judged by the same rule as
// everywhere: storage/leftovers.ts).
// Every put decides and stores synchronously after its one await, so concurrent puts of one name
// are serialised exactly as link(2) or If-None-Match serialise them elsewhere.
import { assertCompressionAvailable, compress, decompress, sha256Hex } from './codec.js';
import { QUARANTINE_ATTEMPTS, byName, isWalName, judgeStored, listedUnder, plainRefused, quarantineName, unauthenticatedError } from './common.js';
import { decodeStored, encodeStored, type Keyring } from './encryption.js';
import { judgeLeftover, removable, type WriterId } from './leftovers.js';
import {
  ConflictError,
  IntegrityError,
  NotFoundError,
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

interface Entry {
  stored: Buffer;
  compression: Compression;
  checksum: string;
  size: number;
  modified: Date;
}

export interface MemoryStoreOptions {
  keyring?: Keyring;
  /** Hold the same objects as this store (a view with other keys: see withKeyring). */
  sharedWith?: MemoryStore;
}

export class MemoryStore implements ArchiveStore {
  readonly description: string;
  private readonly objects: Map<string, Entry>;
  private readonly failures: Error[] = [];
  private readonly leftovers = new Map<string, { kind: Leftover['kind']; bytes: number; modified: Date; writer: WriterId | undefined }>();
  private closed = false;
  private archiveEncrypted = false;

  private readonly keyring: Keyring | undefined;

  constructor(description = 'memory:', opts: MemoryStoreOptions = {}) {
    this.description = description;
    this.keyring = opts.keyring;
    this.objects = opts.sharedWith?.objects ?? new Map();
  }

  /** A view of the same objects read and written with other keys (or none): encryption tests. */
  withKeyring(keyring: Keyring | undefined): MemoryStore {
    return new MemoryStore(this.description, { ...(keyring ? { keyring } : {}), sharedWith: this });
  }

  /** Test hook: exchange what two names hold, records and all (an archive rearranged behind walstream's back). */
  swap(a: string, b: string): void {
    const ea = this.objects.get(a);
    const eb = this.objects.get(b);
    if (!ea) throw new NotFoundError(a);
    if (!eb) throw new NotFoundError(b);
    this.objects.set(a, eb);
    this.objects.set(b, ea);
  }

  /** Test hook: flip one byte of the stored object (its recorded checksum stays). */
  corrupt(name: string): void {
    const e = this.objects.get(name);
    if (!e) throw new NotFoundError(name);
    const stored = e.stored.length === 0 ? Buffer.from([0]) : Buffer.from(e.stored);
    const i = Math.floor(stored.length / 2);
    stored[i] = stored[i]! ^ 0xff;
    this.objects.set(name, { ...e, stored });
  }

  /** Test hook: set the modification time of a stored object (what list and head report). */
  setModified(name: string, when: Date): void {
    const e = this.objects.get(name);
    if (!e) throw new NotFoundError(name);
    this.objects.set(name, { ...e, modified: when });
  }

  /** Test hook: the next operation (put, get, head, list, delete or a look for leftovers) rejects with `err`. */
  failNext(err: Error): void {
    this.failures.push(err);
  }

  /** Test hook: something a killed writer left (a temp file or an upload), written by `writer` (undefined: unknown). */
  addLeftover(name: string, l: { kind?: Leftover['kind']; bytes: number; modified: Date; writer?: WriterId }): void {
    this.leftovers.set(name, { kind: l.kind ?? 'temp-file', bytes: l.bytes, modified: l.modified, writer: l.writer });
  }

  async scanLeftovers(opts: LeftoverOptions = {}): Promise<LeftoverScan> {
    this.open();
    this.injected();
    const leftovers: Leftover[] = [...this.leftovers]
      .map(([name, l]) => ({
        name,
        kind: l.kind,
        bytes: l.bytes,
        modified: l.modified,
        writer: l.writer ? { pid: l.writer.pid, host: l.writer.host } : undefined,
        state: judgeLeftover(l.writer, l.modified, opts),
      }))
      .sort(byName);
    return { leftovers, unavailable: undefined };
  }

  async removeLeftovers(opts: LeftoverOptions & { dryRun?: boolean } = {}): Promise<LeftoverRemoval> {
    const scan = await this.scanLeftovers(opts);
    const removed = scan.leftovers.filter((l) => removable(l.state));
    if (!opts.dryRun) for (const l of removed) this.leftovers.delete(l.name);
    return { ...scan, removed, failed: [] };
  }

  setArchiveEncrypted(encrypted: boolean): void {
    this.archiveEncrypted = encrypted;
  }

  async put(name: string, data: Buffer, opts: PutOptions = {}): Promise<PutResult> {
    this.check(name);
    const compression = opts.compression ?? 'none';
    assertCompressionAvailable(compression);
    const keyring = opts.unencrypted ? undefined : this.keyring;
    const entry: Entry = {
      stored: Buffer.from(encodeStored(keyring, name, compression, await compress(data, compression))),
      compression,
      checksum: sha256Hex(data),
      size: data.length,
      modified: new Date(),
    };
    for (;;) {
      const before = this.objects.get(name);
      const verdict = before
        ? await judgeStored(name, { stored: before.stored, compression: before.compression, checksum: before.checksum, size: before.size }, data, {
            keyring,
            plainIsDamaged: keyring !== undefined && (keyring.requireEncrypted || this.archiveEncrypted) && isWalName(name),
          })
        : undefined;
      // From here on, synchronous: the decision and the store are one step (judged again if the
      // object changed meanwhile).
      this.injected();
      const existing = this.objects.get(name);
      if (existing !== before) continue;
      if (!existing || !verdict) {
        this.objects.set(name, entry);
        return { status: 'created', info: info(name, entry) };
      }
      switch (verdict.kind) {
        case 'identical':
          return { status: 'exists', info: info(name, existing) };
        case 'unauthenticated':
          throw unauthenticatedError(name, verdict.keyId);
        case 'damaged': {
          const kept = this.freeQuarantineName(name, entry.modified);
          this.objects.set(kept, existing);
          this.objects.set(name, entry);
          return { status: 'created', info: info(name, entry), replacedDamaged: kept };
        }
        case 'different':
          for (let attempt = 0; attempt < QUARANTINE_ATTEMPTS; attempt++) {
            const q = quarantineName(name, entry.modified, attempt);
            const held = this.objects.get(q);
            if (held && held.checksum !== entry.checksum) continue;
            if (!held) this.objects.set(q, entry);
            throw new ConflictError(name, q);
          }
          throw new StorageError(`"${name}" conflicts with the archive and no free quarantine name was found`, false);
      }
    }
  }

  private freeQuarantineName(name: string, when: Date): string {
    for (let attempt = 0; attempt < QUARANTINE_ATTEMPTS; attempt++) {
      const q = quarantineName(name, when, attempt);
      if (!this.objects.has(q)) return q;
    }
    throw new StorageError(`"${name}" is damaged in the archive and no free quarantine name was found`, false);
  }

  async get(name: string): Promise<GetResult> {
    this.check(name);
    this.injected();
    const e = this.objects.get(name);
    if (!e) throw new NotFoundError(name);
    const { payload, keyId } = decodeStored(this.keyring, name, e.compression, e.stored, plainRefused(this.keyring?.requireEncrypted === true, name));
    let data: Buffer;
    try {
      data = await decompress(payload, e.compression);
    } catch (err) {
      throw new IntegrityError(name, `cannot decompress (${e.compression}): ${(err as Error).message}`);
    }
    const actual = sha256Hex(data);
    if (actual !== e.checksum) throw new IntegrityError(name, `SHA-256 ${actual} does not match the recorded ${e.checksum}`);
    return { data, info: { ...info(name, e), ...(keyId !== undefined ? { keyId } : {}) } };
  }

  async head(name: string): Promise<ObjectInfo | undefined> {
    this.check(name);
    this.injected();
    const e = this.objects.get(name);
    return e ? info(name, e) : undefined;
  }

  async list(prefix = '', opts: ListOptions = {}): Promise<ObjectInfo[]> {
    this.open();
    this.injected();
    const out: ObjectInfo[] = [];
    for (const [name, e] of this.objects) if (listedUnder(name, prefix)) out.push(info(name, e));
    out.sort(byName);
    return opts.limit !== undefined ? out.slice(0, opts.limit) : out;
  }

  async delete(name: string): Promise<void> {
    this.check(name);
    this.injected();
    this.objects.delete(name);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private open(): void {
    if (this.closed) throw new StorageError(`archive ${this.description} is closed`, false);
  }

  private check(name: string): void {
    this.open();
    assertArchiveName(name);
  }

  private injected(): void {
    const err = this.failures.shift();
    if (err) throw err;
  }
}

function info(name: string, e: Entry): ObjectInfo {
  return { name, size: e.size, storedSize: e.stored.length, checksum: e.checksum, compression: e.compression, modified: e.modified };
}
