// Whole WAL files in memory: read with one system call (fs.readFile goes 512 kB at a time, one
// thread-pool round trip per piece, into a fresh buffer), and their SHA-256 computed on worker
// threads. (Writes are better left to FileHandle.writeFile's 512 kB pieces: one 16 MB write
// costs the kernel more time than 32 small ones.)
//
// A command that handles several 16 MB segments at once (push --parallel, the prefetch worker)
// spends most of its main thread hashing (SHA-256 runs at about 1.6 GB/s), which also holds up
// the reads, writes and fsyncs it should be issuing meanwhile. After useHashThreads(n),
// sha256Owned hands a large buffer's memory to one of n worker threads and gets it back with the
// digest, without copying: the caller gives up the buffer it passed (it is left empty) and goes
// on with the one returned. (Memory shared with the threads instead would need no hand-over, but
// Linux reads and writes into a SharedArrayBuffer are several times slower.) If a thread fails,
// the jobs it held fail with it (their memory went with it) and from then on every buffer is
// hashed on the calling thread.
import { builtin } from './lazy.js';

// Loaded when first used: a call that hashes nothing (fetch from the prefetch spool) loads neither.
const crypto = builtin<typeof import('node:crypto')>('node:crypto');
const workerThreads = builtin<typeof import('node:worker_threads')>('node:worker_threads');

const MAX_THREADS = 4;
/** Below this a thread round trip costs more than the hash. */
const OFFLOAD_MIN_BYTES = 1 << 20;

const THREAD_SCRIPT = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.on('message', (m) => {
  let hex;
  try {
    hex = createHash('sha256').update(new Uint8Array(m.memory, m.offset, m.length)).digest('hex');
  } catch (err) {
    hex = undefined;
  }
  parentPort.postMessage({ id: m.id, hex, memory: m.memory }, [m.memory]);
});
`;

function hashHere(data: Uint8Array): string {
  return crypto().createHash('sha256').update(data).digest('hex');
}

export interface Hashed {
  /** The bytes hashed (the same memory as the buffer passed in). */
  data: Buffer;
  hex: string;
}

interface Job {
  offset: number;
  length: number;
  resolve: (r: Hashed) => void;
  reject: (err: Error) => void;
}

interface Thread {
  worker: import('node:worker_threads').Worker;
  jobs: Map<number, Job>;
}

class HashThreads {
  private readonly threads: Thread[] = [];
  private nextId = 0;
  private broken = false;

  constructor(readonly size: number) {}

  hash(data: Buffer): Promise<Hashed> {
    const thread = this.pick();
    if (!thread) return Promise.resolve({ data, hex: hashHere(data) });
    return new Promise<Hashed>((resolve, reject) => {
      const id = this.nextId++;
      if (thread.jobs.size === 0) thread.worker.ref(); // a pending hash keeps the process alive
      thread.jobs.set(id, { offset: data.byteOffset, length: data.length, resolve, reject });
      const memory = data.buffer as ArrayBuffer;
      thread.worker.postMessage({ id, memory, offset: data.byteOffset, length: data.length }, [memory]);
    });
  }

  /** The thread with the fewest jobs, starting another while fewer than `size` run and all are busy. */
  private pick(): Thread | undefined {
    if (this.broken) return undefined;
    let best: Thread | undefined;
    for (const t of this.threads) if (!best || t.jobs.size < best.jobs.size) best = t;
    if ((!best || best.jobs.size > 0) && this.threads.length < this.size) {
      try {
        return this.start();
      } catch {
        this.broken = true;
        return undefined;
      }
    }
    return best;
  }

  private start(): Thread {
    const worker = new (workerThreads().Worker)(THREAD_SCRIPT, { eval: true });
    worker.unref();
    const thread: Thread = { worker, jobs: new Map() };
    worker.on('message', (m: { id: number; hex?: string; memory: ArrayBuffer }) => {
      const job = thread.jobs.get(m.id);
      if (!job) return;
      thread.jobs.delete(m.id);
      if (thread.jobs.size === 0) worker.unref();
      const data = Buffer.from(m.memory, job.offset, job.length);
      job.resolve({ data, hex: typeof m.hex === 'string' ? m.hex : hashHere(data) });
    });
    const fail = (): void => {
      // The memory of its pending jobs went with the thread: those fail (the caller tries again
      // later, hashing on its own thread from now on).
      this.broken = true;
      const i = this.threads.indexOf(thread);
      if (i >= 0) this.threads.splice(i, 1);
      for (const job of thread.jobs.values()) job.reject(new Error('a hashing thread stopped'));
      thread.jobs.clear();
    };
    worker.on('error', fail);
    worker.on('exit', fail);
    this.threads.push(thread);
    return thread;
  }
}

let threads: HashThreads | undefined;

/**
 * Hash buffers of 1 MB and more on up to `count` worker threads from now on, at most four (they
 * hash faster than a disk or network here writes): started when first needed, they never keep
 * the process alive on their own. 0 or 1: on the calling thread.
 */
export function useHashThreads(count: number): void {
  const size = Math.min(MAX_THREADS, Math.floor(count));
  if (threads?.size === size) return;
  threads = size > 1 ? new HashThreads(size) : undefined;
}

/**
 * The hex SHA-256 of `data`, on a worker thread when threads are in use and `data` is large. The
 * caller must own `data`'s memory (no other view of it is used again): it is handed to the thread
 * and `data` is left empty; go on with the `data` returned.
 */
export function sha256Owned(data: Buffer): Promise<Hashed> {
  if (threads && data.length >= OFFLOAD_MIN_BYTES && data.buffer instanceof ArrayBuffer && data.buffer.byteLength >= OFFLOAD_MIN_BYTES) return threads.hash(data);
  return Promise.resolve({ data, hex: hashHere(data) });
}

export { readWhole, type ReadWholeOptions } from './read-whole.js';
