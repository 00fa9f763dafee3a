// A TCP socket for pg whose reads land in one buffer reused for every read (net.Socket's onread),
// where libpq has its one growing input buffer (fe-misc.c pqReadData). A socket read otherwise
// gets a fresh 64 kB buffer each time: at WAL rates that is a page fault per 4 kB read, garbage
// for the collector, and most of a receiver's CPU time.
// Guarantees: while a consumer holds the reads (START_REPLICATION's framer, session/copyboth.ts)
// it gets each read as a view of the shared buffer and must consume it before returning; at any
// other time every read is copied and emitted as 'data', so pg reads the connection as ever.
import net from 'node:net';

/** The most one read takes from the socket. */
export const READ_BUFFER_BYTES = 256 * 1024;

export type ChunkConsumer = (chunk: Buffer) => void;

export class DirectReader {
  private consumer: ChunkConsumer | undefined;

  constructor(private readonly socket: net.Socket) {}

  /**
   * Hand every read from now on to `consumer`, as a view that is overwritten by the next read.
   * Returns the function that gives the reads back to the socket's 'data' listeners.
   */
  take(consumer: ChunkConsumer): () => void {
    if (this.consumer) throw new Error('the socket reads are taken already');
    this.consumer = consumer;
    return () => {
      if (this.consumer === consumer) this.consumer = undefined;
    };
  }

  deliver(chunk: Buffer): void {
    const consumer = this.consumer;
    if (consumer) consumer(chunk);
    else this.socket.emit('data', Buffer.from(chunk));
  }
}

const readers = new WeakMap<object, DirectReader>();

/** A new, unconnected socket reading into one buffer of `bytes` (pg's `stream` option). */
export function directReadSocket(bytes = READ_BUFFER_BYTES): net.Socket {
  const buffer = Buffer.allocUnsafeSlow(bytes);
  let reader: DirectReader | undefined;
  const onread: net.OnReadOpts = {
    buffer,
    callback: (n, buf) => {
      reader!.deliver(Buffer.from(buf.buffer, buf.byteOffset, n));
      return true;
    },
  };
  // The constructor takes onread as connect() does (@types/node lists it for connect() only).
  const socket = new net.Socket({ onread } as net.SocketConstructorOpts);
  reader = new DirectReader(socket);
  readers.set(socket, reader);
  return socket;
}

/** The reader of a socket made by directReadSocket, else undefined (a TLS socket, another stream). */
export function directReaderOf(stream: object): DirectReader | undefined {
  return readers.get(stream);
}
