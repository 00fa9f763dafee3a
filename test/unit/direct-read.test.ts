// The socket that reads into one reused buffer (session/direct-read.ts): pg's listeners get
// copies that later reads never change; a consumer that takes the reads gets views of the shared
// buffer and no 'data' is emitted meanwhile; given back, reads are copied again.
import { once } from 'node:events';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { directReaderOf, directReadSocket } from '../../src/session/direct-read.js';

const servers: net.Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

/** A server that sends each part when asked by a line from the client ("next\n"). */
async function serve(parts: Buffer[]): Promise<number> {
  const server = net.createServer((c) => {
    let i = 0;
    c.on('data', () => {
      if (i < parts.length) c.write(parts[i++]!);
      if (i === parts.length) c.end();
    });
  });
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as net.AddressInfo).port;
}

async function connected(port: number, bytes: number): Promise<net.Socket> {
  const socket = directReadSocket(bytes);
  socket.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  return socket;
}

/** Ask for the next part and wait until `n` bytes more have come in, as `received` counts them. */
async function next(socket: net.Socket, received: () => number, n: number): Promise<void> {
  const want = received() + n;
  socket.write('next\n');
  while (received() < want) await new Promise((r) => setTimeout(r, 5));
}

describe('directReadSocket', () => {
  it("emits copies as 'data' while no consumer holds the reads: later reads do not change them", async () => {
    const a = Buffer.alloc(32, 0x61);
    const b = Buffer.alloc(32, 0x62);
    const port = await serve([a, b]);
    const socket = await connected(port, 64);
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    const got = (): number => chunks.reduce((n, c) => n + c.length, 0);
    await next(socket, got, 32);
    await next(socket, got, 32);
    expect(Buffer.concat(chunks)).toEqual(Buffer.concat([a, b]));
    expect(directReaderOf(socket)).toBeDefined();
    socket.destroy();
  });

  it('hands reads to a consumer as views of one buffer, and gives them back', async () => {
    const parts = [Buffer.alloc(40, 1), Buffer.alloc(40, 2), Buffer.alloc(40, 3)];
    const port = await serve(parts);
    const socket = await connected(port, 64);
    const emitted: Buffer[] = [];
    socket.on('data', (c: Buffer) => emitted.push(c));
    const seen: { bytes: Buffer; memory: ArrayBufferLike }[] = [];
    const release = directReaderOf(socket)!.take((view) => seen.push({ bytes: Buffer.from(view), memory: view.buffer }));
    const viewed = (): number => seen.reduce((n, s) => n + s.bytes.length, 0);
    await next(socket, viewed, 40);
    await next(socket, viewed, 40);
    expect(emitted).toEqual([]);
    expect(Buffer.concat(seen.map((s) => s.bytes))).toEqual(Buffer.concat(parts.slice(0, 2)));
    expect(new Set(seen.map((s) => s.memory)).size).toBe(1);
    expect(() => directReaderOf(socket)!.take(() => undefined)).toThrow(/taken already/);
    release();
    await next(socket, () => emitted.reduce((n, c) => n + c.length, 0), 40);
    expect(Buffer.concat(emitted)).toEqual(parts[2]);
    socket.destroy();
  });

  it('is not a direct reader: any other stream', () => {
    expect(directReaderOf(new net.Socket())).toBeUndefined();
  });
});
