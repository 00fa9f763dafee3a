// The newest WAL of a running receiver (`walstream receive --serve`), held in memory for the
// clients streaming at its head: the receiver's sink hands every piece it accepts to append(),
// and setDurable() moves the end that may be served. Nothing beyond the durable position is ever
// read out, so a client never holds WAL the receiver could still lose. Bytes are copied into
// slabs that are only appended to, so a view handed to a socket never changes under it; the
// oldest slabs are dropped once more than `maxBytes` is held (clients further back read the files).
import type { Lsn } from '../wal/lsn.js';

const SLAB_SIZE = 1024 * 1024;

interface Slab {
  start: Lsn;
  buf: Buffer;
  used: number;
}

export class LiveTail {
  private slabs: Slab[] = [];
  private tli = 0;
  private received: Lsn = 0n;
  private durableEnd: Lsn = 0n;
  private held = 0;
  private readonly listeners = new Set<() => void>();

  constructor(private readonly maxBytes = 32 * 1024 * 1024) {}

  /** The timeline being received (0 before the first stream). */
  get timeline(): number {
    return this.tli;
  }

  /** First position held, or undefined when nothing is. */
  get first(): Lsn | undefined {
    return this.slabs[0]?.start;
  }

  /** End of what may be served. */
  get durable(): Lsn {
    return this.durableEnd;
  }

  /**
   * A stream starts at `start` on `tli` (the sink's begin). Continuing exactly where the last one
   * ended on the same timeline keeps what is held; anything else starts afresh.
   */
  begin(start: Lsn, tli: number): void {
    if (tli === this.tli && start === this.received && this.slabs.length > 0) return;
    this.slabs = [];
    this.held = 0;
    this.tli = tli;
    this.received = start;
    this.durableEnd = start;
    this.emit();
  }

  /** WAL accepted by the sink at `lsn` (copied: the caller's buffer may be reused). */
  append(lsn: Lsn, data: Buffer): void {
    if (lsn !== this.received) {
      // Not contiguous (cannot happen with a sink that checks contiguity): hold nothing rather than a hole.
      this.slabs = [];
      this.held = 0;
      this.received = lsn;
      this.durableEnd = lsn;
    }
    let pos = 0;
    while (pos < data.length) {
      let slab = this.slabs[this.slabs.length - 1];
      if (!slab || slab.used === slab.buf.length) {
        slab = { start: this.received, buf: Buffer.allocUnsafeSlow(SLAB_SIZE), used: 0 };
        this.slabs.push(slab);
        this.held += SLAB_SIZE;
      }
      const n = Math.min(data.length - pos, slab.buf.length - slab.used);
      data.copy(slab.buf, slab.used, pos, pos + n);
      slab.used += n;
      pos += n;
      this.received += BigInt(n);
    }
    // Drop the oldest, but never the slab holding the durable end (clients at the head read it).
    while (this.held > this.maxBytes && this.slabs.length > 1 && this.slabs[1]!.start <= this.durableEnd) {
      this.held -= this.slabs.shift()!.buf.length;
    }
  }

  /** The durable position of the receiver moved. */
  setDurable(lsn: Lsn): void {
    const end = lsn < this.received ? lsn : this.received;
    if (end <= this.durableEnd) return;
    this.durableEnd = end;
    this.emit();
  }

  /**
   * Up to `max` bytes at `pos` on `tli`, no further than the durable end: a view into an
   * append-only slab. Undefined when the tail does not hold `pos` (another timeline, or older than
   * what is held); an empty buffer when `pos` is the durable end.
   */
  read(tli: number, pos: Lsn, max: number): Buffer | undefined {
    if (tli !== this.tli || this.slabs.length === 0 || pos < this.slabs[0]!.start || pos > this.durableEnd) return undefined;
    if (pos === this.durableEnd) return Buffer.alloc(0);
    for (let i = this.slabs.length - 1; i >= 0; i--) {
      const s = this.slabs[i]!;
      if (pos < s.start) continue;
      const from = Number(pos - s.start);
      const limit = Math.min(s.used, Number(this.durableEnd - s.start), from + max);
      return s.buf.subarray(from, limit);
    }
    return undefined;
  }

  /** Call `fn` whenever more becomes servable or a new stream begins; returns the remover. */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(): void {
    for (const fn of [...this.listeners]) fn();
  }
}
