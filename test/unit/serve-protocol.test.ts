// The wire codec of walstream serve, byte for byte. Every backend encoder (src/protocol/backend.ts)
// is checked against golden bytes written out by hand from the protocol's "Message Formats"
// (type byte, Int32 length counting itself, fields), and the same bytes are handed to
// pg-protocol's own client Parser, the one node-postgres reads servers with, whole and split at
// every offset, to show a real client reads them as meant. The frontend side
// (src/protocol/frontend.ts) is fed what libpq-compatible clients send (pg-protocol's serializer):
// the untyped first packets and the typed messages after them, cut into pieces at every offset
// and every piece size, must come out as the same messages; lengths are refused after the header
// with nothing buffered beyond; startup packet layout errors use PostgreSQL's wording.
import { describe, expect, it } from 'vitest';
import { serialize } from 'pg-protocol';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import {
  authenticationCleartextPassword,
  authenticationMD5Password,
  authenticationOk,
  authenticationSASL,
  authenticationSASLContinue,
  authenticationSASLFinal,
  backendKeyData,
  commandComplete,
  copyBothResponse,
  copyData,
  copyDone,
  dataRow,
  emptyQueryResponse,
  errorResponse,
  int4Field,
  int8Field,
  keepaliveFrame,
  negotiateProtocolVersion,
  noticeResponse,
  parameterStatus,
  readyForQuery,
  rowDescription,
  textField,
  XLOG_DATA_FRAME_HEADER_SIZE,
  xlogDataFrameHeader,
} from '../../src/protocol/backend.js';
import {
  CANCEL_REQUEST_CODE,
  FrontendFramer,
  GSSENC_REQUEST_CODE,
  MAX_AUTH_MESSAGE_LENGTH,
  MAX_STARTUP_PACKET_LENGTH,
  PROTOCOL_3_0,
  ProtocolViolation,
  SSL_REQUEST_CODE,
  parseFirstPacket,
  parsePasswordMessage,
  parseQuery,
  parseSASLInitialResponse,
  type FirstPacket,
} from '../../src/protocol/frontend.js';
import { decodeHotStandbyFeedback, decodeServerCopyData, decodeStandbyStatus, encodeHotStandbyFeedback, encodeStandbyStatus } from '../../src/protocol/messages.js';
import { rng } from './fixture.js';

// ---------------------------------------------------------------------------------------------
// Helpers: hex written by hand, and pg-protocol's parser as the client.
// ---------------------------------------------------------------------------------------------

/** Bytes from hex pieces (spaces ignored), so goldens read field by field. */
function hex(...parts: string[]): Buffer {
  const s = parts.join('').replace(/\s+/g, '');
  if (!/^([0-9a-f]{2})*$/i.test(s)) throw new Error(`bad hex in test: ${s}`);
  return Buffer.from(s, 'hex');
}

/** The hex of a string's UTF-8 bytes (no terminator). */
function t(s: string): string {
  return Buffer.from(s, 'utf8').toString('hex');
}

/** A C string: its bytes and the terminating zero. */
function cs(s: string): string {
  return `${t(s)}00`;
}

/**
 * What pg-protocol's client Parser makes of a byte stream fed in the given pieces. Buffers in
 * its messages are views into a buffer it reuses, so each message is copied as it comes.
 */
function pgParse(stream: Buffer, pieceSizes?: (i: number) => number): BackendMessage[] {
  const parser = new Parser();
  const out: BackendMessage[] = [];
  const keep = (m: BackendMessage): void => {
    const copy = { ...m } as Record<string, unknown>;
    for (const [k, v] of Object.entries(copy)) if (Buffer.isBuffer(v)) copy[k] = Buffer.from(v);
    if (m instanceof Error) {
      copy.message = m.message;
      copy.name = m.name;
    }
    out.push(copy as unknown as BackendMessage);
  };
  if (!pieceSizes) {
    parser.parse(stream, keep);
    return out;
  }
  let off = 0;
  for (let i = 0; off < stream.length; i++) {
    const n = Math.max(1, pieceSizes(i));
    // A copy per piece, as a socket hands over fresh buffers.
    parser.parse(Buffer.from(stream.subarray(off, off + n)), keep);
    off += n;
  }
  return out;
}

function pgParseOne(b: Buffer): Record<string, unknown> {
  const msgs = pgParse(b);
  expect(msgs).toHaveLength(1);
  return msgs[0] as unknown as Record<string, unknown>;
}

/** A plain comparable form of parsed messages (Buffers as hex). */
function plain(msgs: BackendMessage[]): unknown[] {
  return msgs.map((m) =>
    JSON.parse(JSON.stringify(m, (_k, v: unknown) => (v && typeof v === 'object' && (v as { type?: string }).type === 'Buffer' ? Buffer.from((v as { data: number[] }).data).toString('hex') : v))),
  );
}

// ---------------------------------------------------------------------------------------------
// Backend encoders: golden bytes, then pg-protocol's reading of them.
// ---------------------------------------------------------------------------------------------

describe('backend encoders: golden bytes', () => {
  it('AuthenticationOk, CleartextPassword, MD5Password', () => {
    expect(authenticationOk()).toEqual(hex('52', '00000008', '00000000'));
    expect(authenticationCleartextPassword()).toEqual(hex('52', '00000008', '00000003'));
    expect(authenticationMD5Password(hex('deadbeef'))).toEqual(hex('52', '0000000c', '00000005', 'deadbeef'));
    expect(() => authenticationMD5Password(hex('0102'))).toThrow(RangeError);
  });

  it('AuthenticationSASL lists the mechanisms as C strings ended by an empty one', () => {
    // 4 (length) + 4 (code 10) + "SCRAM-SHA-256-PLUS\0" (19) + "SCRAM-SHA-256\0" (14) + "\0" (1) = 42
    expect(authenticationSASL(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'])).toEqual(hex('52', '0000002a', '0000000a', cs('SCRAM-SHA-256-PLUS'), cs('SCRAM-SHA-256'), '00'));
    // 4 + 4 + 14 + 1 = 23
    expect(authenticationSASL(['SCRAM-SHA-256'])).toEqual(hex('52', '00000017', '0000000a', cs('SCRAM-SHA-256'), '00'));
  });

  it('AuthenticationSASLContinue and SASLFinal carry the data without a terminator', () => {
    const first = 'r=abc,s=xyz,i=4096'; // 18 bytes: 4 + 4 + 18 = 26
    expect(authenticationSASLContinue(first)).toEqual(hex('52', '0000001a', '0000000b', t(first)));
    expect(authenticationSASLFinal('v=abc')).toEqual(hex('52', '0000000d', '0000000c', t('v=abc')));
  });

  it('ParameterStatus, BackendKeyData, ReadyForQuery', () => {
    // 4 + "integer_datetimes\0" (18) + "on\0" (3) = 25
    expect(parameterStatus('integer_datetimes', 'on')).toEqual(hex('53', '00000019', cs('integer_datetimes'), cs('on')));
    expect(parameterStatus('application_name', '')).toEqual(hex('53', '00000016', cs('application_name'), '00'));
    expect(backendKeyData(0x1234, -2)).toEqual(hex('4b', '0000000c', '00001234', 'fffffffe'));
    expect(backendKeyData(2147483647, 0)).toEqual(hex('4b', '0000000c', '7fffffff', '00000000'));
    expect(readyForQuery()).toEqual(hex('5a', '00000005', '49'));
    expect(readyForQuery('T')).toEqual(hex('5a', '00000005', '54'));
    expect(readyForQuery('E')).toEqual(hex('5a', '00000005', '45'));
  });

  it('RowDescription: text-format columns with table OID 0, attnum 0, typmod -1, format 0', () => {
    // per column: name\0, table oid int32, attnum int16, type oid int32, typlen int16, typmod int32, format int16
    const systemid = cs('systemid') + '00000000' + '0000' + '00000019' + 'ffff' + 'ffffffff' + '0000';
    const timeline4 = cs('timeline') + '00000000' + '0000' + '00000017' + '0004' + 'ffffffff' + '0000';
    const timeline8 = cs('timeline') + '00000000' + '0000' + '00000014' + '0008' + 'ffffffff' + '0000';
    // 4 + 2 + (9 + 18) * 2 = 60
    expect(rowDescription([textField('systemid'), int4Field('timeline')])).toEqual(hex('54', '0000003c', '0002', systemid, timeline4));
    expect(rowDescription([textField('systemid'), int8Field('timeline')])).toEqual(hex('54', '0000003c', '0002', systemid, timeline8));
    expect(rowDescription([])).toEqual(hex('54', '00000006', '0000'));
    // bytea (the content column of TIMELINE_HISTORY in 13) and a typmod
    expect(rowDescription([{ name: 'c', typeOid: 17, typeLen: -1, typeMod: 7 }])).toEqual(hex('54', '0000001a', '0001', cs('c'), '00000000', '0000', '00000011', 'ffff', '00000007', '0000'));
  });

  it('DataRow: length-prefixed values, -1 for NULL, raw bytes as they are', () => {
    // 4 + 2 + (4 + 19) + 4 + (4 + 3) = 40
    expect(dataRow(['7715239396200899024', null, hex('000102')])).toEqual(hex('44', '00000028', '0003', '00000013', t('7715239396200899024'), 'ffffffff', '00000003', '000102'));
    // an empty string is a zero-length value, not NULL
    expect(dataRow([''])).toEqual(hex('44', '0000000a', '0001', '00000000'));
    // text is UTF-8: the length counts bytes
    expect(dataRow(['é'])).toEqual(hex('44', '0000000c', '0001', '00000002', 'c3a9'));
  });

  it('CommandComplete and EmptyQueryResponse', () => {
    expect(commandComplete('IDENTIFY_SYSTEM')).toEqual(hex('43', '00000014', cs('IDENTIFY_SYSTEM')));
    expect(commandComplete('START_STREAMING')).toEqual(hex('43', '00000014', cs('START_STREAMING')));
    expect(commandComplete('COPY 0')).toEqual(hex('43', '0000000b', cs('COPY 0')));
    expect(emptyQueryResponse()).toEqual(hex('49', '00000004'));
  });

  it('ErrorResponse and NoticeResponse: S, V, C, M, then D and H, and a zero byte', () => {
    const m = 'unrecognized configuration parameter "x"'; // 40 bytes
    // S ERROR\0 (7) + V ERROR\0 (7) + C 42704\0 (7) + M msg\0 (42) + \0 (1) = 64; + 4 = 68
    expect(errorResponse({ severity: 'ERROR', code: '42704', message: m })).toEqual(hex('45', '00000044', t('S'), cs('ERROR'), t('V'), cs('ERROR'), t('C'), cs('42704'), t('M'), cs(m), '00'));
    const full = errorResponse({ severity: 'FATAL', code: '28P01', message: 'm', detail: 'd', hint: 'h' });
    // S FATAL\0 (7) V FATAL\0 (7) C 28P01\0 (7) M m\0 (3) D d\0 (3) H h\0 (3) \0 (1) = 31; + 4 = 35
    expect(full).toEqual(hex('45', '00000023', t('S'), cs('FATAL'), t('V'), cs('FATAL'), t('C'), cs('28P01'), t('M'), cs('m'), t('D'), cs('d'), t('H'), cs('h'), '00'));
    // S WARNING\0 (9) V WARNING\0 (9) C 01000\0 (7) M w\0 (3) \0 (1) = 29; + 4 = 33
    expect(noticeResponse({ severity: 'WARNING', code: '01000', message: 'w' })).toEqual(hex('4e', '00000021', t('S'), cs('WARNING'), t('V'), cs('WARNING'), t('C'), cs('01000'), t('M'), cs('w'), '00'));
    expect(() => errorResponse({ severity: 'ERROR', code: '4270', message: 'x' })).toThrow(RangeError);
    expect(() => errorResponse({ severity: 'ERROR', code: '42p01', message: 'x' })).toThrow(RangeError);
  });

  it('CopyBothResponse (text, no columns), CopyDone, CopyData', () => {
    expect(copyBothResponse()).toEqual(hex('57', '00000007', '00', '0000'));
    expect(copyDone()).toEqual(hex('63', '00000004'));
    expect(copyData(Buffer.from('abc'))).toEqual(hex('64', '00000007', t('abc')));
    expect(copyData(Buffer.alloc(0))).toEqual(hex('64', '00000004'));
  });

  it('NegotiateProtocolVersion: newest minor and the options not recognized', () => {
    // 4 + int32 (3 << 16 | 0) + int32 count + "_pq_.compression\0" (17) = 29
    expect(negotiateProtocolVersion(0, ['_pq_.compression'])).toEqual(hex('76', '0000001d', '00030000', '00000001', cs('_pq_.compression')));
    expect(negotiateProtocolVersion(0, [])).toEqual(hex('76', '0000000c', '00030000', '00000000'));
  });

  it('the XLogData frame header: CopyData length covers the 25-byte header and the WAL after it', () => {
    const h = xlogDataFrameHeader(0x700000n, 0x800000n, 0x0102030405060708n, 3);
    expect(XLOG_DATA_FRAME_HEADER_SIZE).toBe(30);
    // 'd', Int32 4 + 25 + 3 = 32, 'w', dataStart, walEnd, sendTime
    expect(h).toEqual(hex('64', '00000020', '77', '0000000000700000', '0000000000800000', '0102030405060708'));
    // the largest values a header can hold
    expect(xlogDataFrameHeader(0xffffffffffffffffn, 0xfedcba9876543210n, -1n, 128 * 1024)).toEqual(hex('64', '0002001d', '77', 'ffffffffffffffff', 'fedcba9876543210', 'ffffffffffffffff'));
    // header + data, read by pg-protocol and by walstream's own client decoder
    const frame = Buffer.concat([h, hex('aabbcc')]);
    const msg = pgParseOne(frame);
    expect(msg.name).toBe('copyData');
    const chunk = msg.chunk as Buffer;
    expect(chunk.length).toBe(28);
    const d = decodeServerCopyData(chunk);
    expect(d).toMatchObject({ kind: 'xlogdata', dataStart: 0x700000n, walEnd: 0x800000n, sendTime: 0x0102030405060708n });
    expect(d.kind === 'xlogdata' && d.data.toString('hex')).toBe('aabbcc');
  });

  it('the keepalive frame: 18 bytes of payload, reply flag last', () => {
    expect(keepaliveFrame(0x800000n, 5n, true)).toEqual(hex('64', '00000016', '6b', '0000000000800000', '0000000000000005', '01'));
    expect(keepaliveFrame(0n, 0n, false)).toEqual(hex('64', '00000016', '6b', '0000000000000000', '0000000000000000', '00'));
    const k = pgParseOne(keepaliveFrame(0x1234567890n, 77n, true));
    expect((k.chunk as Buffer).length).toBe(18);
    expect(decodeServerCopyData(k.chunk as Buffer)).toEqual({ kind: 'keepalive', walEnd: 0x1234567890n, sendTime: 77n, replyRequested: true });
  });
});

/** Every encoder's output, and what pg-protocol must make of it. */
function allBackendMessages(): { bytes: Buffer; want: Record<string, unknown> }[] {
  return [
    { bytes: authenticationOk(), want: { name: 'authenticationOk' } },
    { bytes: authenticationCleartextPassword(), want: { name: 'authenticationCleartextPassword' } },
    { bytes: authenticationMD5Password(hex('01020304')), want: { name: 'authenticationMD5Password', salt: hex('01020304') } },
    { bytes: authenticationSASL(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']), want: { name: 'authenticationSASL', mechanisms: ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'] } },
    { bytes: authenticationSASLContinue('r=abc,s=c2FsdA==,i=4096'), want: { name: 'authenticationSASLContinue', data: 'r=abc,s=c2FsdA==,i=4096' } },
    { bytes: authenticationSASLFinal('v=c2ln'), want: { name: 'authenticationSASLFinal', data: 'v=c2ln' } },
    { bytes: parameterStatus('server_version', '15.0 (walstream)'), want: { name: 'parameterStatus', parameterName: 'server_version', parameterValue: '15.0 (walstream)' } },
    { bytes: backendKeyData(104729, -123456), want: { name: 'backendKeyData', processID: 104729, secretKey: -123456 } },
    { bytes: readyForQuery(), want: { name: 'readyForQuery', status: 'I' } },
    {
      bytes: rowDescription([textField('systemid'), int4Field('timeline'), int8Field('restart_tli')]),
      want: {
        name: 'rowDescription',
        fieldCount: 3,
        fields: [
          { name: 'systemid', tableID: 0, columnID: 0, dataTypeID: 25, dataTypeSize: -1, dataTypeModifier: -1, format: 'text' },
          { name: 'timeline', tableID: 0, columnID: 0, dataTypeID: 23, dataTypeSize: 4, dataTypeModifier: -1, format: 'text' },
          { name: 'restart_tli', tableID: 0, columnID: 0, dataTypeID: 20, dataTypeSize: 8, dataTypeModifier: -1, format: 'text' },
        ],
      },
    },
    { bytes: dataRow(['1', null, '0/800000', '']), want: { name: 'dataRow', fields: ['1', null, '0/800000', ''] } },
    { bytes: commandComplete('TIMELINE_HISTORY'), want: { name: 'commandComplete', text: 'TIMELINE_HISTORY' } },
    { bytes: emptyQueryResponse(), want: { name: 'emptyQuery' } },
    {
      bytes: errorResponse({ severity: 'ERROR', code: 'XX000', message: 'requested starting point 0/900000 is ahead', detail: 'd', hint: 'h' }),
      want: { name: 'error', severity: 'ERROR', code: 'XX000', message: 'requested starting point 0/900000 is ahead', detail: 'd', hint: 'h' },
    },
    { bytes: noticeResponse({ severity: 'NOTICE', code: '00000', message: 'n' }), want: { name: 'notice', severity: 'NOTICE', code: '00000', message: 'n' } },
    { bytes: copyBothResponse(), want: { name: 'replicationStart' } },
    { bytes: copyDone(), want: { name: 'copyDone' } },
    { bytes: copyData(hex('7201')), want: { name: 'copyData', chunk: hex('7201') } },
    { bytes: keepaliveFrame(1n, 2n, false), want: { name: 'copyData' } },
  ];
}

describe('backend encoders: read back by pg-protocol (the node-postgres client parser)', () => {
  it('each message decodes to what it says', () => {
    for (const { bytes, want } of allBackendMessages()) {
      const got = pgParseOne(bytes);
      expect(got, bytes.toString('hex')).toMatchObject(want);
      // the parser agrees on the length word
      expect(got.length).toBe(bytes.readUInt32BE(1));
    }
  });

  it('pg-protocol does not know NegotiateProtocolVersion, so its layout is checked by hand', () => {
    const b = negotiateProtocolVersion(0, ['_pq_.a', '_pq_.b']);
    expect(b[0]).toBe(0x76);
    expect(b.readUInt32BE(1)).toBe(b.length - 1);
    expect(b.readUInt32BE(5)).toBe(PROTOCOL_3_0);
    expect(b.readUInt32BE(9)).toBe(2);
    expect(b.subarray(13).toString('latin1')).toBe('_pq_.a\0_pq_.b\0');
  });

  it('the whole conversation reads the same split at every offset and in pieces of every size', () => {
    const parts = allBackendMessages().map((m) => m.bytes);
    const stream = Buffer.concat([...parts, xlogDataFrameHeader(0x700000n, 0x800000n, 1n, 5), hex('0102030405')]);
    const whole = plain(pgParse(stream));
    expect(whole).toHaveLength(parts.length + 1);
    for (let cut = 1; cut < stream.length; cut++) {
      expect(plain(pgParse(stream, (i) => (i === 0 ? cut : stream.length))), `cut at ${cut}`).toEqual(whole);
    }
    for (let size = 1; size <= 64; size++) {
      expect(plain(pgParse(stream, () => size)), `pieces of ${size}`).toEqual(whole);
    }
  });
});

describe('client CopyData layouts the server decodes (messages.ts)', () => {
  it("standby status update 'r': 34 bytes, write/flush/apply/clientTime/replyRequested", () => {
    const b = hex('72', '0000000000900000', '0000000000800000', '0000000000000000', '0002b8f1d2c3e4f5', '01');
    expect(b.length).toBe(34);
    expect(decodeStandbyStatus(b)).toEqual({ write: 0x900000n, flush: 0x800000n, apply: 0n, clientTime: 0x0002b8f1d2c3e4f5n, replyRequested: true });
    expect(encodeStandbyStatus(decodeStandbyStatus(b))).toEqual(b);
    expect(() => decodeStandbyStatus(b.subarray(0, 33))).toThrow();
  });

  it("hot standby feedback 'h': 25 bytes, time, xmin, epoch, catalog_xmin, epoch", () => {
    const b = hex('68', '0000000000000102', '000003e8', '00000001', '00000000', '00000000');
    expect(b.length).toBe(25);
    expect(decodeHotStandbyFeedback(b)).toEqual({ clientTime: 0x102n, xmin: 1000, xminEpoch: 1, catalogXmin: 0, catalogXminEpoch: 0 });
    expect(encodeHotStandbyFeedback(decodeHotStandbyFeedback(b))).toEqual(b);
    // all-zero xmins (what a standby with hot_standby_feedback=off sends once)
    const zero = hex('68', '0000000000000000', '00000000', '00000000', '00000000', '00000000');
    expect(decodeHotStandbyFeedback(zero)).toMatchObject({ xmin: 0, catalogXmin: 0 });
    expect(() => decodeHotStandbyFeedback(b.subarray(0, 24))).toThrow();
    expect(() => decodeHotStandbyFeedback(Buffer.concat([b, hex('00')]))).toThrow();
  });
});

// ---------------------------------------------------------------------------------------------
// The frontend side: what clients send, cut into pieces.
// ---------------------------------------------------------------------------------------------

const GSSENC_REQUEST = hex('00000008', '04d21630');

/** A walreceiver-like conversation as pg-protocol's serializer writes it, with every message kind the server reads. */
function clientStream(): Buffer {
  const status = hex('72', '0000000000900000', '0000000000900000', '0000000000000000', '0000000000000001', '00');
  const feedback = hex('68', '0000000000000001', '00000000', '00000000', '00000000', '00000000');
  return Buffer.concat([
    GSSENC_REQUEST,
    serialize.requestSsl(),
    serialize.startup({ user: 'replicator', database: 'replication', replication: 'true', application_name: 'walreceiver', options: '-c wal_sender_timeout=0' }),
    serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', 'n,,n=,r=rOprNGfwEbeRWgbNEkqO'),
    serialize.sendSCRAMClientFinalMessage('c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ='),
    serialize.query('IDENTIFY_SYSTEM'),
    serialize.query('TIMELINE_HISTORY 2'),
    serialize.query('CREATE_REPLICATION_SLOT "pg_walreceiver_4743" TEMPORARY PHYSICAL (RESERVE_WAL)'),
    serialize.query('START_REPLICATION SLOT "pg_walreceiver_4743" 0/900000 TIMELINE 1'),
    serialize.copyData(status),
    serialize.copyData(feedback),
    serialize.copyDone(),
    serialize.password('md5' + '0'.repeat(32)),
    serialize.parse({ text: 'select 1' }),
    serialize.bind({}),
    serialize.describe({ type: 'P' }),
    serialize.execute({}),
    serialize.flush(),
    serialize.sync(),
    serialize.copyFail('gone'),
    serialize.query(''),
    serialize.query('SHOW data_directory_mode'),
    serialize.end(),
  ]);
}

type Event = { first: FirstPacket } | { type: string; body: string };

/** Run the framer as the connection does (first packets until the StartupMessage, then typed), pieces as given. */
function frame(stream: Buffer, pieces: (i: number) => number): Event[] {
  const f = new FrontendFramer();
  const out: Event[] = [];
  let typed = false;
  let off = 0;
  for (let i = 0; off < stream.length; i++) {
    const n = Math.max(1, pieces(i));
    f.push(Buffer.from(stream.subarray(off, off + n)));
    off += n;
    for (;;) {
      if (!typed) {
        const body = f.nextFirstPacket();
        if (!body) break;
        const p = parseFirstPacket(body);
        out.push({ first: p });
        if (p.kind === 'startup') {
          f.startTyped();
          typed = true;
        }
        continue;
      }
      const m = f.next();
      if (!m) break;
      // the body is a view: consume it before the next push
      out.push({ type: String.fromCharCode(m.type), body: m.body.toString('hex') });
    }
  }
  expect(f.pendingBytes).toBe(0);
  return out;
}

describe('FrontendFramer: the same messages whatever the pieces', () => {
  const stream = clientStream();
  const whole = frame(stream, () => stream.length);

  it('reads the first packets and every typed message of a conversation', () => {
    expect(whole.slice(0, 3)).toEqual([
      { first: { kind: 'gssenc' } },
      { first: { kind: 'ssl' } },
      {
        first: {
          kind: 'startup',
          major: 3,
          minor: 0,
          params: new Map([
            ['user', 'replicator'],
            ['database', 'replication'],
            ['replication', 'true'],
            ['application_name', 'walreceiver'],
            ['options', '-c wal_sender_timeout=0'],
            ['client_encoding', 'UTF8'],
          ]),
        },
      },
    ]);
    expect(
      whole
        .slice(3)
        .map((e) => (e as { type: string }).type)
        .join(''),
    ).toBe('ppQQQQddcpPBDEHSfQQX');
    const q = whole[8] as { body: string };
    expect(parseQuery(Buffer.from(q.body, 'hex'))).toBe('START_REPLICATION SLOT "pg_walreceiver_4743" 0/900000 TIMELINE 1');
    const sasl = whole[3] as { body: string };
    const init = parseSASLInitialResponse(Buffer.from(sasl.body, 'hex'));
    expect(init.mechanism).toBe('SCRAM-SHA-256');
    expect(init.data?.toString()).toBe('n,,n=,r=rOprNGfwEbeRWgbNEkqO');
    // Sync, Flush, CopyDone, Terminate have empty bodies
    expect(whole.filter((e) => 'type' in e && 'cHSX'.includes(e.type)).every((e) => (e as { body: string }).body === '')).toBe(true);
  });

  it('split at every offset', () => {
    for (let cut = 1; cut < stream.length; cut++) {
      expect(
        frame(stream, (i) => (i === 0 ? cut : stream.length)),
        `cut at ${cut}`,
      ).toEqual(whole);
    }
  });

  it('in pieces of every size from 1 byte to the whole stream', () => {
    for (let size = 1; size <= stream.length; size++) {
      expect(
        frame(stream, () => size),
        `pieces of ${size}`,
      ).toEqual(whole);
    }
  });

  it('in random pieces', () => {
    const r = rng(20240607);
    for (let run = 0; run < 300; run++) {
      expect(frame(stream, () => 1 + Math.floor(r() * (r() < 0.5 ? 8 : 200)))).toEqual(whole);
    }
  });

  it('a CancelRequest as pg-protocol writes it', () => {
    const f = new FrontendFramer();
    f.push(serialize.cancel(104729, -559038737));
    const body = f.nextFirstPacket()!;
    expect(body.readUInt32BE(0)).toBe(CANCEL_REQUEST_CODE);
    expect(parseFirstPacket(body)).toEqual({ kind: 'cancel', pid: 104729, key: -559038737 });
    expect(f.pendingBytes).toBe(0);
  });

  it('the request codes are 1234.5678, 1234.5679, 1234.5680', () => {
    expect(CANCEL_REQUEST_CODE).toBe((1234 << 16) | 5678);
    expect(SSL_REQUEST_CODE).toBe((1234 << 16) | 5679);
    expect(GSSENC_REQUEST_CODE).toBe((1234 << 16) | 5680);
    expect(serialize.requestSsl()).toEqual(hex('00000008', '04d2162f'));
  });
});

describe('FrontendFramer: length bounds', () => {
  function typedFramer(max = MAX_AUTH_MESSAGE_LENGTH): FrontendFramer {
    const f = new FrontendFramer(max);
    f.startTyped();
    return f;
  }

  it('a claimed 2 GB message is refused after its 5 header bytes, with nothing buffered beyond', () => {
    const f = typedFramer();
    f.push(hex('51', '7fff'));
    expect(f.next()).toBeUndefined(); // not enough to know the length yet
    f.push(hex('ffff'));
    expect(f.pendingBytes).toBe(5);
    let err: unknown;
    try {
      f.next();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ProtocolViolation);
    expect((err as Error).message).toMatch(/^invalid message length 2147483647/);
    expect((err as Error).message).toContain('"Q"');
    expect(f.pendingBytes).toBe(5);
    // also with the largest uint32 and after authentication's 1 MB limit
    const g = typedFramer(1024 * 1024);
    g.push(hex('64', 'ffffffff'));
    expect(() => g.next()).toThrow(ProtocolViolation);
    const h = typedFramer(1024 * 1024);
    h.push(hex('64', '00100005'));
    expect(() => h.next()).toThrow(/invalid message length 1048581/);
  });

  it('the limit is inclusive; a length below 4 is refused; an empty body is fine', () => {
    const f = typedFramer(100);
    const ok = Buffer.alloc(101, 0x61);
    ok[0] = 0x51;
    ok.writeUInt32BE(100, 1);
    ok[100] = 0;
    f.push(ok);
    const m = f.next()!;
    expect(m.type).toBe(0x51);
    expect(m.body.length).toBe(96);
    const g = typedFramer(100);
    g.push(hex('51', '00000065'));
    expect(() => g.next()).toThrow(ProtocolViolation);
    for (const len of ['00000000', '00000003']) {
      const h = typedFramer();
      h.push(hex('53', len));
      expect(() => h.next()).toThrow(/invalid message length/);
    }
    const s = typedFramer();
    s.push(hex('53', '00000004'));
    expect(s.next()).toEqual({ type: 0x53, body: Buffer.alloc(0) });
  });

  it('the limit can be raised after authentication (the connection does so)', () => {
    const f = typedFramer();
    const big = Buffer.alloc(1 + 100_000);
    big[0] = 0x64;
    big.writeUInt32BE(100_000, 1);
    f.push(big.subarray(0, 5));
    expect(() => f.next()).toThrow(ProtocolViolation);
    const g = typedFramer();
    g.maxLength = 1024 * 1024;
    g.push(big);
    expect(g.next()?.body.length).toBe(100_000 - 4);
  });

  it('an untyped first packet is bounded as postmaster.c bounds it: 4 + 4 to 4 + MAX_STARTUP_PACKET_LENGTH bytes', () => {
    // ProcessStartupPacket: len -= 4; if (len < sizeof(ProtocolVersion) || len > MAX_STARTUP_PACKET_LENGTH) ...
    expect(MAX_STARTUP_PACKET_LENGTH).toBe(10000);
    const f = new FrontendFramer();
    f.push(hex('7fffffff'));
    expect(() => f.nextFirstPacket()).toThrow('invalid length of startup packet');
    expect(f.pendingBytes).toBe(4);
    for (const len of [0, 4, 7, 10005, 0xffffffff]) {
      const g = new FrontendFramer();
      const b = Buffer.alloc(4);
      b.writeUInt32BE(len);
      g.push(b);
      expect(() => g.nextFirstPacket(), `length ${len}`).toThrow(ProtocolViolation);
    }
    const max = Buffer.alloc(10004);
    max.writeUInt32BE(10004, 0);
    max.writeUInt32BE(PROTOCOL_3_0, 4);
    const h = new FrontendFramer();
    h.push(max.subarray(0, 10003));
    expect(h.nextFirstPacket()).toBeUndefined();
    h.push(max.subarray(10003));
    expect(h.nextFirstPacket()?.length).toBe(10000);
    // the smallest: an 8-byte packet that is only a code
    const s = new FrontendFramer();
    s.push(hex('00000008', '04d2162f'));
    expect(s.nextFirstPacket()).toEqual(hex('04d2162f'));
  });

  it('takeRemainder hands over what came after the last whole packet', () => {
    const f = new FrontendFramer();
    f.push(Buffer.concat([serialize.requestSsl(), hex('16030100')]));
    expect(parseFirstPacket(f.nextFirstPacket()!)).toEqual({ kind: 'ssl' });
    expect(f.takeRemainder()).toEqual(hex('16030100'));
    expect(f.pendingBytes).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------
// Startup packet layout, with PostgreSQL's wording (postmaster.c ProcessStartupPacket).
// ---------------------------------------------------------------------------------------------

/** A StartupMessage body: protocol version then the given raw bytes. */
function startupBody(version: number, rest: string): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(version >>> 0);
  return Buffer.concat([b, Buffer.from(rest, 'latin1')]);
}

describe('parseFirstPacket: startup layout', () => {
  const LAYOUT = 'invalid startup packet layout: expected terminator as last byte';

  it('reads parameters as name/value C strings ending with an empty name', () => {
    const p = parseFirstPacket(startupBody(PROTOCOL_3_0, 'user\0rep\0replication\0true\0options\0\0\0'));
    expect(p).toEqual({
      kind: 'startup',
      major: 3,
      minor: 0,
      params: new Map([
        ['user', 'rep'],
        ['replication', 'true'],
        ['options', ''],
      ]),
    });
    // a name given twice keeps the last value
    const d = parseFirstPacket(startupBody(PROTOCOL_3_0, 'user\0a\0user\0b\0\0'));
    expect(d.kind === 'startup' && d.params.get('user')).toBe('b');
    // no parameters at all
    expect(parseFirstPacket(startupBody(PROTOCOL_3_0, '\0'))).toEqual({ kind: 'startup', major: 3, minor: 0, params: new Map() });
    // UTF-8 values
    const u = parseFirstPacket(Buffer.concat([startupBody(PROTOCOL_3_0, ''), Buffer.from('application_name\0wälder\0\0', 'utf8')]));
    expect(u.kind === 'startup' && u.params.get('application_name')).toBe('wälder');
    // what pg-protocol writes
    const f = new FrontendFramer();
    f.push(serialize.startup({ user: 'u', database: 'replication', replication: 'true' }));
    expect(parseFirstPacket(f.nextFirstPacket()!)).toMatchObject({
      kind: 'startup',
      params: new Map([
        ['user', 'u'],
        ['database', 'replication'],
        ['replication', 'true'],
        ['client_encoding', 'UTF8'],
      ]),
    });
  });

  it.each([
    ['no terminator at all', ''],
    ['a name without its value', 'user\0'],
    ['a value without its terminator', 'user\0rep'],
    ['a name and value without the final terminator', 'user\0rep\0'],
    ['bytes after the terminator', 'user\0rep\0\0x'],
    ['two terminators', 'user\0rep\0\0\0'],
    ['an unterminated name', 'user'],
  ])('%s: %s', (_what, rest) => {
    expect(() => parseFirstPacket(startupBody(PROTOCOL_3_0, rest))).toThrow(new ProtocolViolation(LAYOUT));
  });

  it('protocol versions: 3.x accepted with its minor, anything else refused', () => {
    expect(parseFirstPacket(startupBody((3 << 16) | 2, 'user\0u\0\0'))).toMatchObject({ kind: 'startup', major: 3, minor: 2 });
    expect(() => parseFirstPacket(startupBody(2 << 16, 'user\0u\0\0'))).toThrow('unsupported frontend protocol 2.0: server supports 3.0 to 3.0');
    expect(() => parseFirstPacket(startupBody((4 << 16) | 1, 'user\0u\0\0'))).toThrow('unsupported frontend protocol 4.1: server supports 3.0 to 3.0');
    expect(() => parseFirstPacket(startupBody((1234 << 16) | 5681, ''))).toThrow('unsupported frontend protocol 1234.5681: server supports 3.0 to 3.0');
  });

  it('short packets and malformed cancel requests', () => {
    expect(() => parseFirstPacket(hex('000300'))).toThrow('invalid length of startup packet');
    expect(() => parseFirstPacket(hex('04d2162e', '00000001'))).toThrow(ProtocolViolation);
    expect(() => parseFirstPacket(hex('04d2162e', '00000001', '00000002', '00'))).toThrow(ProtocolViolation);
    expect(parseFirstPacket(hex('04d2162f'))).toEqual({ kind: 'ssl' });
    expect(parseFirstPacket(hex('04d21630'))).toEqual({ kind: 'gssenc' });
  });
});

// ---------------------------------------------------------------------------------------------
// Typed message bodies.
// ---------------------------------------------------------------------------------------------

describe('typed message bodies', () => {
  it('parseQuery: one C string filling the body', () => {
    expect(parseQuery(Buffer.from('IDENTIFY_SYSTEM\0'))).toBe('IDENTIFY_SYSTEM');
    expect(parseQuery(Buffer.from('\0'))).toBe('');
    expect(parseQuery(Buffer.from('SHOW "wälder"\0', 'utf8'))).toBe('SHOW "wälder"');
    expect(() => parseQuery(Buffer.from('IDENTIFY_SYSTEM'))).toThrow(ProtocolViolation);
    expect(() => parseQuery(Buffer.alloc(0))).toThrow(ProtocolViolation);
    expect(() => parseQuery(Buffer.from('A\0B\0'))).toThrow(new ProtocolViolation('invalid message format'));
  });

  it('parsePasswordMessage: one C string', () => {
    expect(parsePasswordMessage(Buffer.from('md5abc\0'))).toBe('md5abc');
    expect(() => parsePasswordMessage(Buffer.from('x'))).toThrow(ProtocolViolation);
    expect(() => parsePasswordMessage(Buffer.from('x\0y'))).toThrow(ProtocolViolation);
  });

  /** The body of a SASLInitialResponse: mechanism, Int32 length, data. */
  function saslBody(mech: string, len: number, data: Buffer = Buffer.alloc(0)): Buffer {
    const l = Buffer.alloc(4);
    l.writeInt32BE(len);
    return Buffer.concat([Buffer.from(`${mech}\0`), l, data]);
  }

  it('parseSASLInitialResponse: what pg-protocol sends', () => {
    const msg = serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256-PLUS', 'p=tls-server-end-point,,n=*,r=abc');
    const body = msg.subarray(5);
    expect(msg[0]).toBe(0x70);
    const r = parseSASLInitialResponse(body);
    expect(r.mechanism).toBe('SCRAM-SHA-256-PLUS');
    expect(r.data?.toString()).toBe('p=tls-server-end-point,,n=*,r=abc');
  });

  it('parseSASLInitialResponse: edge cases of the length word', () => {
    // -1: no initial response
    expect(parseSASLInitialResponse(saslBody('SCRAM-SHA-256', -1))).toEqual({ mechanism: 'SCRAM-SHA-256', data: undefined });
    // 0: an empty one (the SCRAM layer refuses it, not the framing)
    expect(parseSASLInitialResponse(saslBody('SCRAM-SHA-256', 0)).data).toEqual(Buffer.alloc(0));
    // binary-safe data, the exact length
    expect(parseSASLInitialResponse(saslBody('X', 3, hex('00ff00'))).data).toEqual(hex('00ff00'));
    // an empty mechanism name is the framing's business only
    expect(parseSASLInitialResponse(saslBody('', 1, hex('41'))).mechanism).toBe('');
    const bad: [string, Buffer][] = [
      ['-1 with bytes after it', saslBody('SCRAM-SHA-256', -1, hex('41'))],
      ['a length beyond the body', saslBody('SCRAM-SHA-256', 10, Buffer.from('abc'))],
      ['bytes beyond the length', saslBody('SCRAM-SHA-256', 1, Buffer.from('abc'))],
      ['a negative length other than -1', saslBody('SCRAM-SHA-256', -2, Buffer.from('abc'))],
      ['the most negative length', saslBody('SCRAM-SHA-256', -2147483648)],
      ['a huge length', saslBody('SCRAM-SHA-256', 2147483647, Buffer.from('abc'))],
      ['no length word', Buffer.from('SCRAM-SHA-256\0')],
      ['three bytes of length', Buffer.from('SCRAM-SHA-256\0\0\0\0')],
      ['an unterminated mechanism', Buffer.from('SCRAM-SHA-256')],
      ['nothing', Buffer.alloc(0)],
    ];
    for (const [what, body] of bad) expect(() => parseSASLInitialResponse(body), what).toThrow(ProtocolViolation);
  });
});
