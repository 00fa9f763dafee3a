// The SHA-256 of a stream read piece by piece, computed on a worker thread beside the thread that
// reads the pieces and uses them (a restore parses, checks and writes each piece of a stored tar:
// hashing it too on the same thread is about half of that thread's work). The pieces are read into
// a few buffers of this module's own, handed to the thread once the reader is done with each
// (their memory moves, it is not copied) and back to be read into again: no fresh memory per
// piece, and the reader waits when the thread falls behind.
//
// Guarantees: the digest covers exactly the pieces given to update(), in that order. If the thread
// fails, the pieces it held are gone with it: every later call fails (the stream's check cannot be
// completed), nothing is hashed on another thread in its place.
import { builtin } from './lazy.js';

const crypto = builtin<typeof import('node:crypto')>('node:crypto');
const workerThreads = builtin<typeof import('node:worker_threads')>('node:worker_threads');

const THREAD_SCRIPT = `
const { parentPort } = require('node:worker_threads');
const hash = require('node:crypto').createHash('sha256');
parentPort.on('message', (m) => {
  if (m.memory !== undefined) {
    hash.update(new Uint8Array(m.memory, m.offset, m.length));
    parentPort.postMessage({ memory: m.memory }, [m.memory]);
  } else {
    parentPort.postMessage({ hex: hash.digest('hex') });
  }
});
`;

export interface PieceHashOptions {
  /** Bytes in each buffer (default 1 MiB). */
  pieceBytes?: number;
  /** How many buffers at most (default 4: one being read, one in use, two being hashed). */
  pieces?: number;
  /** Hash on a worker thread (default true); false: on the calling thread, buffers reused all the same. */
  thread?: boolean;
}

/** A SHA-256 of pieces read into its own buffers (buffer()), hashed in order as update() hands them over. */
export class PieceHash {
  private readonly pieceBytes: number;
  private readonly maxPieces: number;
  private readonly free: ArrayBuffer[] = [];
  private allocated = 0;
  private readonly waiting: { resolve: (b: ArrayBuffer) => void; reject: (err: Error) => void }[] = [];
  private readonly worker: import('node:worker_threads').Worker | undefined;
  private readonly local: import('node:crypto').Hash | undefined;
  private digestWanted: { resolve: (hex: string) => void; reject: (err: Error) => void } | undefined;
  private failure: Error | undefined;
  private finished = false;
  /** Pieces with the thread: while any (or the digest) is awaited, the thread keeps the process alive. */
  private inFlight = 0;

  constructor(opts: PieceHashOptions = {}) {
    this.pieceBytes = opts.pieceBytes ?? 1 << 20;
    this.maxPieces = Math.max(2, opts.pieces ?? 4);
    if (opts.thread === false) {
      this.local = crypto().createHash('sha256');
      return;
    }
    const worker = new (workerThreads().Worker)(THREAD_SCRIPT, { eval: true });
    worker.unref();
    this.worker = worker;
    worker.on('message', (m: { memory?: ArrayBuffer; hex?: string }) => {
      if (m.memory !== undefined) {
        if (--this.inFlight === 0 && this.digestWanted === undefined) worker.unref();
        this.release(m.memory);
      } else if (m.hex !== undefined) {
        const d = this.digestWanted;
        this.digestWanted = undefined;
        d?.resolve(m.hex);
      }
    });
    const fail = (err: Error): void => {
      if (this.finished) return;
      this.fail(new Error(`the hashing thread stopped: ${err.message}`));
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`exit code ${code}`)));
  }

  /** A buffer to read the next piece into: a free one, a new one while fewer than `pieces` exist, else the next one handed back. */
  async buffer(): Promise<Buffer> {
    if (this.failure) throw this.failure;
    const ready = this.free.pop();
    if (ready !== undefined) return Buffer.from(ready);
    if (this.allocated < this.maxPieces) {
      this.allocated++;
      return Buffer.allocUnsafeSlow(this.pieceBytes);
    }
    const memory = await new Promise<ArrayBuffer>((resolve, reject) => this.waiting.push({ resolve, reject }));
    return Buffer.from(memory);
  }

  /**
   * Hash `piece` (a view of a buffer from buffer()) after those before it. Its buffer is taken
   * over: nothing may use it (or another view of it) again; it comes back through buffer().
   */
  update(piece: Buffer): void {
    if (this.failure) throw this.failure;
    if (this.finished) throw new Error('PieceHash: update after digest');
    const memory = piece.buffer as ArrayBuffer;
    if (this.local) {
      this.local.update(piece);
      this.release(memory);
      return;
    }
    if (this.inFlight++ === 0) this.worker!.ref();
    this.worker!.postMessage({ memory, offset: piece.byteOffset, length: piece.length }, [memory]);
  }

  /** The hex SHA-256 of every piece given to update(); the thread is then let go. */
  async digest(): Promise<string> {
    if (this.failure) throw this.failure;
    if (this.finished) throw new Error('PieceHash: digest asked twice');
    if (this.local) {
      this.finished = true;
      return this.local.digest('hex');
    }
    const hex = await new Promise<string>((resolve, reject) => {
      this.digestWanted = { resolve, reject };
      this.worker!.ref();
      this.worker!.postMessage({ digest: true });
    });
    this.close();
    return hex;
  }

  /** Let the thread go (a stream given up early): no further call is answered. */
  close(): void {
    if (this.finished) return;
    this.finished = true;
    void this.worker?.terminate();
    this.fail(new Error('PieceHash: closed'));
  }

  private release(memory: ArrayBuffer): void {
    const w = this.waiting.shift();
    if (w) w.resolve(memory);
    else this.free.push(memory);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiting.splice(0)) w.reject(this.failure);
    const d = this.digestWanted;
    this.digestWanted = undefined;
    d?.reject(this.failure);
  }
}
