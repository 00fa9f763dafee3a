// A storage driver in memory (storage/driver.ts): a map of keys to bytes and their record. It
// mirrors an object store with atomic conditional creates: each create checks and stores in one
// synchronous step, so concurrent creates of one key have exactly one winner. Test hooks change
// what is stored behind the archive's back and inject failures.
import { judgeLeftover, removable, type WriterId } from '../leftovers.js';
import { NotFoundError, StorageError, type Leftover, type LeftoverOptions, type LeftoverRemoval, type LeftoverScan } from '../types.js';
import type { CreateResult, Driver, DriverObject, NewMeta, ReadResult } from '../driver.js';

export interface MemoryEntry {
  body: Buffer;
  meta: NewMeta;
  modified: Date;
}

export class MemoryDriver implements Driver {
  readonly description: string;
  readonly bodyChecksum = false;
  /** The objects, shared by every driver made with `sharedWith` (views of one archive). */
  readonly objects: Map<string, MemoryEntry>;
  private readonly failures: Error[] = [];
  private readonly leftovers = new Map<string, { kind: Leftover['kind']; bytes: number; modified: Date; writer: WriterId | undefined }>();
  private closed = false;

  constructor(description = 'memory:', sharedWith?: MemoryDriver) {
    this.description = description;
    this.objects = sharedWith?.objects ?? new Map();
  }

  async create(key: string, body: Buffer, meta: NewMeta): Promise<CreateResult> {
    this.enter();
    if (this.objects.has(key)) return { created: false };
    const modified = new Date();
    this.objects.set(key, { body: Buffer.from(body), meta: { ...meta }, modified });
    return { created: true, modified };
  }

  async createStream(key: string, body: AsyncIterable<Buffer>, meta: () => NewMeta): Promise<CreateResult> {
    const parts: Buffer[] = [];
    for await (const b of body) parts.push(Buffer.from(b));
    return this.create(key, Buffer.concat(parts), meta());
  }

  async readStream(key: string): Promise<{ object: DriverObject; meta: NewMeta; body: AsyncIterable<Buffer> } | undefined> {
    this.enter();
    const e = this.objects.get(key);
    if (!e) return undefined;
    const body = async function* (): AsyncGenerator<Buffer> {
      for (let at = 0; at < e.body.length; at += 64 * 1024) yield e.body.subarray(at, at + 64 * 1024);
    };
    return { object: entryInfo(key, e), meta: { ...e.meta }, body: body() };
  }

  async overwrite(key: string, body: Buffer, meta: NewMeta): Promise<void> {
    this.enter();
    this.objects.set(key, { body: Buffer.from(body), meta: { ...meta }, modified: new Date() });
  }

  async read(key: string): Promise<ReadResult | undefined> {
    this.enter();
    const e = this.objects.get(key);
    return e ? { key, body: e.body, owned: false, storedSize: e.body.length, modified: e.modified, meta: { ...e.meta } } : undefined;
  }

  async stat(key: string): Promise<DriverObject | undefined> {
    this.enter();
    const e = this.objects.get(key);
    return e ? entryInfo(key, e) : undefined;
  }

  async *list(prefix: string, opts: { accept?: (key: string) => boolean } = {}): AsyncIterable<DriverObject[]> {
    this.enter();
    const depth = prefix.lastIndexOf('/') + 1;
    const page: DriverObject[] = [];
    for (const [key, e] of this.objects) {
      if (!key.startsWith(prefix) || key.indexOf('/', depth) >= 0 || (opts.accept && !opts.accept(key))) continue;
      page.push(entryInfo(key, e));
    }
    page.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    yield page;
  }

  async delete(key: string): Promise<void> {
    this.enter();
    this.objects.delete(key);
  }

  async scanLeftovers(opts: LeftoverOptions = {}): Promise<LeftoverScan> {
    this.enter();
    const leftovers: Leftover[] = [...this.leftovers]
      .map(([name, l]) => ({
        name,
        kind: l.kind,
        bytes: l.bytes,
        modified: l.modified,
        writer: l.writer ? { pid: l.writer.pid, host: l.writer.host } : undefined,
        state: judgeLeftover(l.writer, l.modified, opts),
      }))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return { leftovers, unavailable: undefined };
  }

  async removeLeftovers(opts: LeftoverOptions & { dryRun?: boolean } = {}): Promise<LeftoverRemoval> {
    const scan = await this.scanLeftovers(opts);
    const removed = scan.leftovers.filter((l) => removable(l.state));
    if (!opts.dryRun) for (const l of removed) this.leftovers.delete(l.name);
    return { ...scan, removed, failed: [] };
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  // --- test hooks ---

  entry(key: string): MemoryEntry {
    const e = this.objects.get(key);
    if (!e) throw new NotFoundError(key);
    return e;
  }

  set(key: string, e: MemoryEntry): void {
    this.objects.set(key, e);
  }

  failNext(err: Error): void {
    this.failures.push(err);
  }

  addLeftover(name: string, l: { kind?: Leftover['kind']; bytes: number; modified: Date; writer?: WriterId }): void {
    this.leftovers.set(name, { kind: l.kind ?? 'temp-file', bytes: l.bytes, modified: l.modified, writer: l.writer });
  }

  /** Every call starts here: refused once closed, or failing with an injected error. */
  private enter(): void {
    if (this.closed) throw new StorageError(`archive ${this.description} is closed`, false);
    const err = this.failures.shift();
    if (err) throw err;
  }
}

function entryInfo(key: string, e: MemoryEntry): DriverObject {
  return { key, storedSize: e.body.length, modified: e.modified, meta: { ...e.meta } };
}
