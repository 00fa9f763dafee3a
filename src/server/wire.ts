// Writing to one client's socket with bounded memory: writes are queued by the socket, and the
// sender stops producing once more than `highWater` bytes wait there, until the socket drains
// (a client that stops reading holds at most that much of walstream's memory).
import type { Duplex } from 'node:stream';

export const DEFAULT_HIGH_WATER = 1024 * 1024;

export class Wire {
  private ended = false;
  private readonly closeWaiters = new Set<() => void>();

  constructor(
    readonly socket: Duplex,
    private readonly highWater = DEFAULT_HIGH_WATER,
  ) {
    const done = (): void => {
      this.ended = true;
      for (const w of [...this.closeWaiters]) w();
      this.closeWaiters.clear();
    };
    socket.once('close', done);
    socket.once('error', done);
  }

  get closed(): boolean {
    return this.ended || this.socket.destroyed;
  }

  /** Queue messages; true while the socket's queue is below the high-water mark. */
  send(...bufs: Buffer[]): boolean {
    if (this.closed) return false;
    if (bufs.length > 1) this.socket.cork();
    for (const b of bufs) this.socket.write(b);
    if (bufs.length > 1) this.socket.uncork();
    return this.socket.writableLength < this.highWater;
  }

  /** Bytes queued and not yet taken by the kernel. */
  get queued(): number {
    return this.socket.writableLength;
  }

  /** Resolves once the queue is below the high-water mark again, or the socket closed. */
  writable(): Promise<void> {
    if (this.closed || this.socket.writableLength < this.highWater) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.socket.removeListener('drain', done);
        this.closeWaiters.delete(done);
        resolve();
      };
      this.socket.once('drain', done);
      this.closeWaiters.add(done);
    });
  }

  /** Resolves when the socket closes. */
  whenClosed(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => this.closeWaiters.add(resolve));
  }

  /** Send what is queued, then close our side. */
  end(last?: Buffer): void {
    if (this.closed) return;
    this.socket.end(last);
    // A client that never reads would keep the socket open forever: give it a moment, then drop it.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  destroy(): void {
    this.socket.destroy();
  }
}
