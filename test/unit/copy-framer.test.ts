// The framer a START_REPLICATION uses while it runs: whatever pieces the socket delivers, the WAL
// handed on is the server's bytes at their positions, keepalives arrive whole, and every other
// message reaches pg's parser whole and in order; XLogData is never copied.
import { describe, expect, it } from 'vitest';
import { CopyFramer } from '../../src/session/copyboth.js';
import { encodeKeepalive, encodeXLogData, ProtocolError } from '../../src/protocol/messages.js';
import { commandComplete, copyData, copyDone, readyForQuery } from '../../src/protocol/backend.js';

function wal(start: bigint, n: number): { start: bigint; bytes: Buffer } {
  const bytes = Buffer.alloc(n);
  for (let i = 0; i < n; i++) bytes[i] = (Number(start) + i * 31) & 0xff;
  return { start, bytes };
}

/** A conversation: XLogData of several sizes, keepalives, then the end of the command. */
function conversation(): { stream: Buffer; walBytes: Buffer; start: bigint; keepalives: number; others: Buffer[] } {
  const parts: Buffer[] = [];
  let lsn = 0x3000000n;
  const all: Buffer[] = [];
  let keepalives = 0;
  for (const n of [0, 1, 24, 25, 100, 8192, 131072, 70000, 3]) {
    const w = wal(lsn, n);
    parts.push(copyData(encodeXLogData(lsn, lsn + 999n, 7n, w.bytes)));
    all.push(w.bytes);
    lsn += BigInt(n);
    parts.push(copyData(encodeKeepalive(lsn, 8n, keepalives % 2 === 0)));
    keepalives++;
  }
  const others = [copyDone(), commandComplete('START_STREAMING'), commandComplete('START_REPLICATION'), readyForQuery()];
  parts.push(...others);
  return { stream: Buffer.concat(parts), walBytes: Buffer.concat(all), start: 0x3000000n, keepalives, others };
}

function run(stream: Buffer, cut: (i: number) => number): { walBytes: Buffer; lsnsOk: boolean; keepalives: Buffer[]; others: Buffer[]; pieces: Buffer[] } {
  const pieces: Buffer[] = [];
  const keepalives: Buffer[] = [];
  const others: Buffer[] = [];
  let next = 0x3000000n;
  let lsnsOk = true;
  const framer = new CopyFramer({
    wal: (lsn, walEnd, piece) => {
      if (lsn !== next || walEnd < 0x3000000n) lsnsOk = false;
      next = lsn + BigInt(piece.length);
      pieces.push(piece);
    },
    copyData: (payload) => keepalives.push(Buffer.from(payload)),
    other: (m) => others.push(Buffer.from(m)),
  });
  for (let pos = 0, i = 0; pos < stream.length; i++) {
    const n = Math.max(1, Math.min(cut(i), stream.length - pos));
    framer.push(stream.subarray(pos, pos + n));
    pos += n;
  }
  return { walBytes: Buffer.concat(pieces.map((p) => Buffer.from(p))), lsnsOk, keepalives, others, pieces };
}

describe('CopyFramer', () => {
  const c = conversation();

  it('hands on the same WAL and messages whatever the socket delivers, splitting at every offset', () => {
    const whole = run(c.stream, () => c.stream.length);
    expect(whole.walBytes.equals(c.walBytes)).toBe(true);
    expect(whole.keepalives).toHaveLength(c.keepalives);
    expect(whole.others).toEqual(c.others);
    for (let at = 1; at < c.stream.length; at += at < 300 ? 1 : 997) {
      const two = run(c.stream, (i) => (i === 0 ? at : c.stream.length));
      expect(two.walBytes.equals(c.walBytes), `split at ${at}`).toBe(true);
      expect(two.lsnsOk).toBe(true);
      expect(two.keepalives).toEqual(whole.keepalives);
      expect(two.others).toEqual(c.others);
    }
    for (const size of [1, 2, 5, 29, 30, 31, 1000, 65536]) {
      const r = run(c.stream, () => size);
      expect(r.walBytes.equals(c.walBytes), `pieces of ${size}`).toBe(true);
      expect(r.others).toEqual(c.others);
    }
  });

  it("hands XLogData on as views of the socket's chunks, never copies", () => {
    const chunk = Buffer.from(c.stream);
    const pieces: Buffer[] = [];
    new CopyFramer({ wal: (_l, _e, p) => pieces.push(p), copyData: () => undefined, other: () => undefined }).push(chunk);
    for (const p of pieces.filter((x) => x.length > 0)) expect(p.buffer).toBe(chunk.buffer);
  });

  it('refuses impossible lengths before buffering anything', () => {
    const framer = new CopyFramer({ wal: () => undefined, copyData: () => undefined, other: () => undefined });
    expect(() => framer.push(Buffer.from([0x43, 0, 0, 0, 2]))).toThrow(ProtocolError);
    const big = new CopyFramer({ wal: () => undefined, copyData: () => undefined, other: () => undefined });
    expect(() => big.push(Buffer.from([0x43, 0x7f, 0xff, 0xff, 0xff]))).toThrow(/too long/);
    expect(big.pendingBytes).toBe(0);
  });
});
