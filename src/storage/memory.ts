// An in-memory archive for unit tests: the archive's policy (storage/archive.ts) over the memory
// driver (storage/drivers/memory.ts), so it has exactly the semantics of the real backends (never
// overwrite, quarantine on conflict, verify on get), plus test hooks: corrupt(), swap(),
// setModified(), failNext() and addLeftover() (what a killed writer would have left, judged by the
// same rule as everywhere: storage/leftovers.ts).
import { Archive } from './archive.js';
import { MemoryDriver } from './drivers/memory.js';
import type { Keyring } from './encryption.js';
import type { WriterId } from './leftovers.js';
import type { Leftover } from './types.js';

export interface MemoryStoreOptions {
  keyring?: Keyring;
  /** Hold the same objects as this store (a view with other keys: see withKeyring). */
  sharedWith?: MemoryStore;
}

export class MemoryStore extends Archive {
  private readonly memory: MemoryDriver;

  constructor(description = 'memory:', opts: MemoryStoreOptions = {}) {
    const driver = new MemoryDriver(description, opts.sharedWith?.memory);
    super(driver, opts.keyring ? { keyring: opts.keyring } : {});
    this.memory = driver;
  }

  /** A view of the same objects read and written with other keys (or none): encryption tests. */
  withKeyring(keyring: Keyring | undefined): MemoryStore {
    return new MemoryStore(this.description, { ...(keyring ? { keyring } : {}), sharedWith: this });
  }

  /** Test hook: exchange what two names hold, records and all (an archive rearranged behind walstream's back). */
  swap(a: string, b: string): void {
    const ea = this.memory.entry(a);
    const eb = this.memory.entry(b);
    this.memory.set(a, eb);
    this.memory.set(b, ea);
  }

  /** Test hook: flip one byte of the stored object (its recorded checksum stays). */
  corrupt(name: string): void {
    const e = this.memory.entry(name);
    const body = e.body.length === 0 ? Buffer.from([0]) : Buffer.from(e.body);
    const i = Math.floor(body.length / 2);
    body[i] = body[i]! ^ 0xff;
    this.memory.set(name, { ...e, body });
  }

  /** Test hook: the bytes stored for `name`, as the store keeps them (sealed, compressed). */
  rawStored(name: string): Buffer {
    return this.memory.entry(name).body;
  }

  /** Test hook: change the stored bytes of `name`, keeping its record. */
  mutate(name: string, fn: (stored: Buffer) => Buffer): void {
    const e = this.memory.entry(name);
    this.memory.set(name, { ...e, body: fn(Buffer.from(e.body)) });
  }

  /** Test hook: set the modification time of a stored object (what list and head report). */
  setModified(name: string, when: Date): void {
    const e = this.memory.entry(name);
    this.memory.set(name, { ...e, modified: when });
  }

  /** Test hook: the next operation (put, get, head, list, delete or a look for leftovers) rejects with `err`. */
  failNext(err: Error): void {
    this.memory.failNext(err);
  }

  /** Test hook: something a killed writer left (a temp file or an upload), written by `writer` (undefined: unknown). */
  addLeftover(name: string, l: { kind?: Leftover['kind']; bytes: number; modified: Date; writer?: WriterId }): void {
    this.memory.addLeftover(name, l);
  }
}
