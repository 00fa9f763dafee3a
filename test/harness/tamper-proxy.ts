/**
 * A lying server for tests: a TCP proxy on 127.0.0.1 between walstream and a real PostgreSQL
 * server that parses the backend's protocol messages and lets a test rewrite them.
 *
 *   const proxy = await TamperProxy.start(primary.port);
 *   proxy.tamper(once(xlogFrom(lsn, (x) => ({ ...x, dataStart: x.dataStart + 8192n }))));
 *   // connect walstream to 127.0.0.1:proxy.port with sslmode=disable
 *   await proxy.stop();
 *
 * Frontend → backend bytes pass unchanged; the proxy only reads them to know which command the
 * answers belong to (the last simple Query). Backend → frontend messages (type byte, Int32
 * length, body) are parsed one by one and handed to the tamper function, which may return them
 * unchanged, changed, or as any number of messages. A TLS connection (the server answering 'S'
 * to SSLRequest) is passed through untouched, so tests connect with sslmode=disable.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { once as onceEvent } from 'node:events';

const HOST = '127.0.0.1';
const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;

export interface BackendMessage {
  /** The message type, e.g. 'd' CopyData, 'D' DataRow, 'T' RowDescription. */
  type: string;
  /** The body, without type and length. */
  body: Buffer;
}

/** What the proxy knows about the conversation when a backend message arrives. */
export interface TamperContext {
  /** The text of the last simple Query the client sent ('' before any). */
  query: string;
  /** Column names of the last RowDescription. */
  fields: string[];
  /** Connection number (1 for the first connection the proxy accepted). */
  connection: number;
}

/** Returns the messages to send instead, or undefined to send `msg` unchanged. */
export type Tamper = (msg: BackendMessage, ctx: TamperContext) => BackendMessage[] | undefined;

export interface XLogDataView {
  dataStart: bigint;
  walEnd: bigint;
  sendTime: bigint;
  data: Buffer;
}

/** The XLogData inside a CopyData message, if it is one. */
export function readXLogData(msg: BackendMessage): XLogDataView | undefined {
  if (msg.type !== 'd' || msg.body.length < 25 || msg.body[0] !== 0x77) return undefined;
  return {
    dataStart: msg.body.readBigUInt64BE(1),
    walEnd: msg.body.readBigUInt64BE(9),
    sendTime: msg.body.readBigInt64BE(17),
    data: msg.body.subarray(25),
  };
}

export function xlogDataMessage(x: XLogDataView): BackendMessage {
  const body = Buffer.alloc(25 + x.data.length);
  body[0] = 0x77;
  body.writeBigUInt64BE(x.dataStart, 1);
  body.writeBigUInt64BE(x.walEnd, 9);
  body.writeBigInt64BE(x.sendTime, 17);
  x.data.copy(body, 25);
  return { type: 'd', body };
}

/** The fields of a DataRow (null for SQL NULL), as text. */
export function readDataRow(msg: BackendMessage): (string | null)[] {
  const n = msg.body.readInt16BE(0);
  const out: (string | null)[] = [];
  let off = 2;
  for (let i = 0; i < n; i++) {
    const len = msg.body.readInt32BE(off);
    off += 4;
    if (len < 0) out.push(null);
    else {
      out.push(msg.body.subarray(off, off + len).toString('utf8'));
      off += len;
    }
  }
  return out;
}

export function dataRowMessage(fields: (string | Buffer | null)[]): BackendMessage {
  const parts: Buffer[] = [];
  const count = Buffer.alloc(2);
  count.writeInt16BE(fields.length);
  parts.push(count);
  for (const f of fields) {
    const len = Buffer.alloc(4);
    if (f === null) {
      len.writeInt32BE(-1);
      parts.push(len);
      continue;
    }
    const b = typeof f === 'string' ? Buffer.from(f, 'utf8') : f;
    len.writeInt32BE(b.length);
    parts.push(len, b);
  }
  return { type: 'D', body: Buffer.concat(parts) };
}

function readRowDescription(body: Buffer): string[] {
  const n = body.readInt16BE(0);
  const names: string[] = [];
  let off = 2;
  for (let i = 0; i < n; i++) {
    const end = body.indexOf(0, off);
    names.push(body.subarray(off, end).toString('utf8'));
    off = end + 1 + 18;
  }
  return names;
}

/** Apply `t` to the first message it changes, then never again. */
export function once(t: Tamper): Tamper & { fired: boolean } {
  const f = ((msg: BackendMessage, ctx: TamperContext) => {
    if (f.fired) return undefined;
    const out = t(msg, ctx);
    if (out !== undefined) f.fired = true;
    return out;
  }) as Tamper & { fired: boolean };
  f.fired = false;
  return f;
}

/** Change the first XLogData (of any connection) whose dataStart is at or after `from`. */
export function xlogFrom(from: bigint, change: (x: XLogDataView) => XLogDataView): Tamper {
  return (msg) => {
    const x = readXLogData(msg);
    if (!x || x.dataStart < from) return undefined;
    return [xlogDataMessage(change(x))];
  };
}

/** Change the DataRow answering a command that starts with `command` (e.g. 'IDENTIFY_SYSTEM'). */
export function rowOf(command: string, change: (row: (string | null)[], fields: string[]) => (string | Buffer | null)[]): Tamper {
  return (msg, ctx) => {
    if (msg.type !== 'D' || !ctx.query.trim().toUpperCase().startsWith(command)) return undefined;
    return [dataRowMessage(change(readDataRow(msg), ctx.fields))];
  };
}

/** Change the DataRow of a result set with a column `field` (e.g. 'next_tli' after an end of timeline). */
export function rowWithField(field: string, change: (row: (string | null)[], fields: string[]) => (string | Buffer | null)[]): Tamper {
  return (msg, ctx) => {
    if (msg.type !== 'D' || !ctx.fields.includes(field)) return undefined;
    return [dataRowMessage(change(readDataRow(msg), ctx.fields))];
  };
}

function encode(msg: BackendMessage): Buffer {
  const head = Buffer.alloc(5);
  head.write(msg.type, 0, 'latin1');
  head.writeInt32BE(msg.body.length + 4, 1);
  return Buffer.concat([head, msg.body]);
}

interface Conn {
  client: Socket;
  upstream: Socket;
  ctx: TamperContext;
  /** Frontend: still in the untyped startup packets. */
  startup: boolean;
  /** Backend: one byte answers an SSLRequest/GSSENCRequest before the typed messages. */
  awaitingSslByte: number;
  passthrough: boolean;
  up: Buffer;
  down: Buffer;
}

export class TamperProxy {
  /** Messages changed by the tamper function. */
  tampered = 0;
  private tamperFn: Tamper | undefined;
  private readonly conns = new Set<Conn>();
  private accepted = 0;
  private stopped = false;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly upstreamPort: number,
  ) {}

  static async start(upstreamPort: number): Promise<TamperProxy> {
    const server = createServer({ pauseOnConnect: true });
    server.listen(0, HOST);
    await onceEvent(server, 'listening');
    const proxy = new TamperProxy(server, (server.address() as { port: number }).port, upstreamPort);
    server.on('connection', (s: Socket) => proxy.accept(s));
    return proxy;
  }

  /** Set (or clear) the tamper function; it sees every backend message from now on. */
  tamper(t: Tamper | undefined): void {
    this.tamperFn = t;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of this.conns) {
      c.client.destroy();
      c.upstream.destroy();
    }
    await closed;
  }

  private accept(client: Socket): void {
    if (this.stopped) {
      client.destroy();
      return;
    }
    const upstream = connect({ host: HOST, port: this.upstreamPort });
    const c: Conn = {
      client,
      upstream,
      ctx: { query: '', fields: [], connection: ++this.accepted },
      startup: true,
      awaitingSslByte: 0,
      passthrough: false,
      up: Buffer.alloc(0),
      down: Buffer.alloc(0),
    };
    this.conns.add(c);
    const close = (): void => {
      this.conns.delete(c);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
    upstream.once('connect', () => {
      client.on('data', (chunk: Buffer) => {
        this.readFrontend(c, chunk);
        upstream.write(chunk);
      });
      upstream.on('data', (chunk: Buffer) => this.fromBackend(c, chunk));
      client.on('end', () => upstream.end());
      upstream.on('end', () => client.end());
      client.resume();
    });
  }

  /** Follow the client's messages: startup packets, then typed ones (remember Query texts). */
  private readFrontend(c: Conn, chunk: Buffer): void {
    if (c.passthrough) return;
    c.up = Buffer.concat([c.up, chunk]);
    for (;;) {
      if (c.startup) {
        if (c.up.length < 8) return;
        const len = c.up.readInt32BE(0);
        if (c.up.length < len) return;
        const code = c.up.readInt32BE(4);
        if (code === SSL_REQUEST || code === GSSENC_REQUEST) c.awaitingSslByte++;
        else c.startup = false;
        c.up = c.up.subarray(len);
        continue;
      }
      if (c.up.length < 5) return;
      const len = c.up.readInt32BE(1);
      if (c.up.length < 1 + len) return;
      const type = String.fromCharCode(c.up[0]!);
      if (type === 'Q') {
        const body = c.up.subarray(5, 1 + len);
        c.ctx.query = body.subarray(0, Math.max(0, body.indexOf(0))).toString('utf8');
      }
      c.up = c.up.subarray(1 + len);
    }
  }

  private fromBackend(c: Conn, chunk: Buffer): void {
    if (c.passthrough) {
      c.client.write(chunk);
      return;
    }
    c.down = c.down.length === 0 ? chunk : Buffer.concat([c.down, chunk]);
    const out: Buffer[] = [];
    while (c.awaitingSslByte > 0 && c.down.length > 0) {
      const answer = c.down.subarray(0, 1);
      c.down = c.down.subarray(1);
      c.awaitingSslByte--;
      out.push(Buffer.from(answer));
      if (answer[0] === 0x53 /* 'S' */ || answer[0] === 0x47 /* 'G' */) {
        // Encrypted from here on: nothing can be read or changed.
        c.passthrough = true;
        out.push(Buffer.from(c.down));
        c.down = Buffer.alloc(0);
        c.client.write(Buffer.concat(out));
        return;
      }
    }
    while (c.down.length >= 5) {
      const len = c.down.readInt32BE(1);
      if (c.down.length < 1 + len) break;
      const msg: BackendMessage = { type: String.fromCharCode(c.down[0]!), body: Buffer.from(c.down.subarray(5, 1 + len)) };
      c.down = c.down.subarray(1 + len);
      if (msg.type === 'T') c.ctx.fields = readRowDescription(msg.body);
      const replaced = this.tamperFn?.(msg, c.ctx);
      if (replaced === undefined) out.push(encode(msg));
      else {
        this.tampered++;
        for (const m of replaced) out.push(encode(m));
      }
    }
    if (c.down.length > 0) c.down = Buffer.from(c.down);
    if (out.length > 0) c.client.write(Buffer.concat(out));
  }
}
