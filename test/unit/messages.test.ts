import { describe, it, expect } from 'vitest';
import {
  decodeServerCopyData,
  decodeStandbyStatus,
  encodeKeepalive,
  encodeStandbyStatus,
  encodeXLogData,
  ProtocolError,
  MSG_XLOG_DATA,
  MSG_KEEPALIVE,
  MSG_STANDBY_STATUS,
  XLOG_DATA_HEADER_SIZE,
  KEEPALIVE_SIZE,
  STANDBY_STATUS_SIZE,
  type ServerCopyMessage,
} from '../../src/protocol/messages.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

// Golden messages written out by hand, field by field (big-endian).
// XLogData: dataStart 1/3000000, walEnd 1/30000A0, sendTime 0x0002B7E1A2B3C4D5, data DE AD BE EF.
const XLOG_HEX = '77' + '0000000103000000' + '00000001030000a0' + '0002b7e1a2b3c4d5' + 'deadbeef';
// Keepalive: walEnd 0/DB2210, sendTime 0x0002B7E1A2B3C4D5, reply requested.
const KEEPALIVE_HEX = '6b' + '0000000000db2210' + '0002b7e1a2b3c4d5' + '01';
// Keepalive: walEnd FFFFFFFF/FFFFFFFF, sendTime -1, no reply requested.
const KEEPALIVE_MAX_HEX = '6b' + 'ffffffffffffffff' + 'ffffffffffffffff' + '00';
// Standby status: write 0/3000000, flush 0/2FFFF00, apply 0/0, clientTime 0x0002B7E1A2B3C4D5, no reply.
const STATUS_HEX = '72' + '0000000003000000' + '0000000002ffff00' + '0000000000000000' + '0002b7e1a2b3c4d5' + '00';
// Standby status: write/flush/apply 12345678/9ABCDEF0, clientTime -2 (before 2000-01-01), reply requested.
const STATUS2_HEX = '72' + '123456789abcdef0' + '123456789abcdef0' + '123456789abcdef0' + 'fffffffffffffffe' + '01';

const SEND_TIME = 0x0002b7e1a2b3c4d5n;

describe('message constants', () => {
  it('type bytes and sizes', () => {
    expect(MSG_XLOG_DATA).toBe(0x77);
    expect(MSG_KEEPALIVE).toBe(0x6b);
    expect(MSG_STANDBY_STATUS).toBe(0x72);
    expect(XLOG_DATA_HEADER_SIZE).toBe(25);
    expect(KEEPALIVE_SIZE).toBe(18);
    expect(STANDBY_STATUS_SIZE).toBe(34);
    expect(hex(XLOG_HEX).length).toBe(29);
    expect(hex(KEEPALIVE_HEX).length).toBe(18);
    expect(hex(STATUS_HEX).length).toBe(34);
  });
});

describe('XLogData', () => {
  it('decodes the golden bytes', () => {
    const m = decodeServerCopyData(hex(XLOG_HEX));
    expect(m).toEqual({
      kind: 'xlogdata',
      dataStart: 0x103000000n,
      walEnd: 0x1030000a0n,
      sendTime: SEND_TIME,
      data: hex('deadbeef'),
    });
  });

  it('encodes to the golden bytes', () => {
    expect(encodeXLogData(0x103000000n, 0x1030000a0n, SEND_TIME, hex('deadbeef')).toString('hex')).toBe(XLOG_HEX);
  });

  it('with no data and a negative send time', () => {
    const golden = '77' + '0000000000000000' + 'ffffffffffffffff' + '8000000000000000';
    const m = decodeServerCopyData(hex(golden));
    expect(m).toEqual({ kind: 'xlogdata', dataStart: 0n, walEnd: 0xffffffffffffffffn, sendTime: -(1n << 63n), data: Buffer.alloc(0) });
    expect(encodeXLogData(0n, 0xffffffffffffffffn, -(1n << 63n), Buffer.alloc(0)).toString('hex')).toBe(golden);
  });

  it('data is a view of the payload after the 25-byte header', () => {
    const payload = hex(XLOG_HEX);
    const m = decodeServerCopyData(payload);
    expect(m.kind).toBe('xlogdata');
    if (m.kind !== 'xlogdata') return;
    expect(m.data.buffer).toBe(payload.buffer);
    expect(m.data.byteOffset).toBe(payload.byteOffset + 25);
  });

  it('round-trips a large payload', () => {
    const data = Buffer.alloc(65536);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
    const m = decodeServerCopyData(encodeXLogData(0x7000000n, 0x7010000n, 1n, data));
    expect(m.kind === 'xlogdata' && m.data.equals(data)).toBe(true);
  });
});

describe('keepalive', () => {
  it('decodes the golden bytes', () => {
    expect(decodeServerCopyData(hex(KEEPALIVE_HEX))).toEqual({ kind: 'keepalive', walEnd: 0xdb2210n, sendTime: SEND_TIME, replyRequested: true });
    expect(decodeServerCopyData(hex(KEEPALIVE_MAX_HEX))).toEqual({
      kind: 'keepalive',
      walEnd: 0xffffffffffffffffn,
      sendTime: -1n,
      replyRequested: false,
    });
  });

  it('encodes to the golden bytes', () => {
    expect(encodeKeepalive(0xdb2210n, SEND_TIME, true).toString('hex')).toBe(KEEPALIVE_HEX);
    expect(encodeKeepalive(0xffffffffffffffffn, -1n, false).toString('hex')).toBe(KEEPALIVE_MAX_HEX);
  });

  it('any non-zero reply byte requests a reply', () => {
    const b = hex(KEEPALIVE_HEX);
    b[17] = 0x02;
    expect(decodeServerCopyData(b)).toMatchObject({ replyRequested: true });
  });
});

describe('standby status update', () => {
  it('encodes to the golden bytes', () => {
    expect(encodeStandbyStatus({ write: 0x3000000n, flush: 0x2ffff00n, apply: 0n, clientTime: SEND_TIME, replyRequested: false }).toString('hex')).toBe(STATUS_HEX);
    const v = 0x123456789abcdef0n;
    expect(encodeStandbyStatus({ write: v, flush: v, apply: v, clientTime: -2n, replyRequested: true }).toString('hex')).toBe(STATUS2_HEX);
  });

  it('decodes the golden bytes', () => {
    expect(decodeStandbyStatus(hex(STATUS_HEX))).toEqual({ write: 0x3000000n, flush: 0x2ffff00n, apply: 0n, clientTime: SEND_TIME, replyRequested: false });
    const v = 0x123456789abcdef0n;
    expect(decodeStandbyStatus(hex(STATUS2_HEX))).toEqual({ write: v, flush: v, apply: v, clientTime: -2n, replyRequested: true });
  });

  it('rejects a wrong length or type byte', () => {
    expect(() => decodeStandbyStatus(hex(STATUS_HEX).subarray(0, 33))).toThrow(ProtocolError);
    expect(() => decodeStandbyStatus(Buffer.concat([hex(STATUS_HEX), hex('00')]))).toThrow(ProtocolError);
    const wrongType = hex(STATUS_HEX);
    wrongType[0] = 0x68;
    expect(() => decodeStandbyStatus(wrongType)).toThrow(ProtocolError);
    expect(() => decodeStandbyStatus(Buffer.alloc(0))).toThrow(ProtocolError);
  });

  it('the walsender does not send standby status: decodeServerCopyData refuses it', () => {
    expect(() => decodeServerCopyData(hex(STATUS_HEX))).toThrow(ProtocolError);
  });
});

describe('malformed server messages', () => {
  it('every truncation of an XLogData header throws ProtocolError', () => {
    const full = hex(XLOG_HEX);
    for (let len = 0; len < 25; len++) {
      expect(() => decodeServerCopyData(full.subarray(0, len)), `length ${len}`).toThrow(ProtocolError);
    }
    expect(decodeServerCopyData(full.subarray(0, 25))).toMatchObject({ kind: 'xlogdata', data: Buffer.alloc(0) });
  });

  it('every truncation of a keepalive throws ProtocolError', () => {
    const full = hex(KEEPALIVE_HEX);
    for (let len = 0; len < 18; len++) {
      expect(() => decodeServerCopyData(full.subarray(0, len)), `length ${len}`).toThrow(ProtocolError);
    }
  });

  it.each([0x00, 0x57, 0x4b, 0x68, 0x64, 0xff])('unknown type byte %i throws ProtocolError', (type) => {
    const b = Buffer.alloc(40);
    b[0] = type;
    expect(() => decodeServerCopyData(b)).toThrow(ProtocolError);
    expect(() => decodeServerCopyData(b)).toThrow(/unrecognized streaming header/);
  });

  it('an empty message throws ProtocolError', () => {
    expect(() => decodeServerCopyData(Buffer.alloc(0))).toThrow(ProtocolError);
  });
});

/**
 * A minimal CopyData framer as a socket reader would need it: 'd', int32 length counting
 * itself, payload. Accepts arbitrary chunks; returns complete payloads as copies.
 */
class TestFramer {
  private buf = Buffer.alloc(0);

  push(chunk: Buffer): Buffer[] {
    this.buf = Buffer.concat([this.buf, chunk]);
    const out: Buffer[] = [];
    while (this.buf.length >= 5) {
      if (this.buf[0] !== 0x64) throw new Error(`not CopyData: 0x${this.buf[0]!.toString(16)}`);
      const len = this.buf.readInt32BE(1);
      if (len < 4) throw new Error(`bad length ${len}`);
      if (this.buf.length < 1 + len) break;
      out.push(Buffer.from(this.buf.subarray(5, 1 + len)));
      this.buf = this.buf.subarray(1 + len);
    }
    return out;
  }

  get buffered(): number {
    return this.buf.length;
  }
}

describe('CopyData stream split at every offset', () => {
  const payloads = [
    hex(XLOG_HEX),
    hex(KEEPALIVE_HEX),
    hex('77' + '0000000103000004' + '0000000103000004' + '0000000000000001'), // XLogData without data
    hex(KEEPALIVE_MAX_HEX),
    Buffer.concat([hex('77' + '0000000103000004' + '0000000103000104' + '0000000000000002'), Buffer.alloc(256, 0xab)]),
  ];
  // Frame headers by hand: 'd' then length = 4 + payload length.
  const frameHeaders = ['6400000021', '6400000016', '640000001d', '6400000016', '640000011d'];
  const stream = Buffer.concat(payloads.flatMap((p, i) => [hex(frameHeaders[i]!), p]));

  const decodeAll = (chunks: Buffer[]): ServerCopyMessage[] => {
    const framer = new TestFramer();
    const out: ServerCopyMessage[] = [];
    for (const c of chunks) for (const p of framer.push(c)) out.push(decodeServerCopyData(p));
    if (framer.buffered !== 0) throw new Error(`${framer.buffered} bytes left in the framer`);
    return out;
  };

  const expected = payloads.map((p) => decodeServerCopyData(p));
  // A compact, exact rendering of decoded messages: cheap to compare thousands of times.
  const render = (ms: ServerCopyMessage[]): string =>
    ms.map((m) => (m.kind === 'xlogdata' ? `w ${m.dataStart} ${m.walEnd} ${m.sendTime} ${m.data.toString('hex')}` : `k ${m.walEnd} ${m.sendTime} ${m.replyRequested}`)).join('|');
  const expectedText = render(expected);

  it('the whole stream decodes to the five messages', () => {
    expect(stream.length).toBe(payloads.reduce((n, p) => n + 5 + p.length, 0));
    expect(decodeAll([stream])).toEqual(expected);
    expect(render(expected)).toContain('k 14361104 765129678636245 true');
    expect(expected.map((m) => m.kind)).toEqual(['xlogdata', 'keepalive', 'xlogdata', 'keepalive', 'xlogdata']);
  });

  it('two pieces, split at every offset', () => {
    for (let at = 0; at <= stream.length; at++) {
      const got = decodeAll([stream.subarray(0, at), stream.subarray(at)]);
      expect(render(got), `split at ${at}`).toBe(expectedText);
    }
  });

  it('three pieces, the second split point at every offset after a fixed first one', () => {
    for (const first of [1, 4, 5, 20, 34, 40]) {
      for (let at = first; at <= stream.length; at++) {
        const got = decodeAll([stream.subarray(0, first), stream.subarray(first, at), stream.subarray(at)]);
        expect(render(got), `split at ${first} and ${at}`).toBe(expectedText);
      }
    }
  });

  it('one byte at a time', () => {
    const chunks: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) chunks.push(stream.subarray(i, i + 1));
    expect(decodeAll(chunks)).toEqual(expected);
  });
});
