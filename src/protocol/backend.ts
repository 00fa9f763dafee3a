// Messages a server sends (protocol 3.0, "Message Formats" in protocol.sgml; pqcomm.c/pqformat.c on
// the server side): authentication requests, ParameterStatus, BackendKeyData, ReadyForQuery, the
// text-format result of a replication command (RowDescription, DataRow, CommandComplete),
// ErrorResponse, and the CopyBoth framing of physical replication (walsender.c XLogSendPhysical,
// WalSndKeepalive). Pure: values in, Buffers out, built with pg-protocol's Writer.
import { Writer } from 'pg-protocol/dist/buffer-writer.js';
import { MSG_KEEPALIVE, MSG_XLOG_DATA, XLOG_DATA_HEADER_SIZE } from './messages.js';

/** Backend message type bytes. */
export const BE = {
  Authentication: 0x52, // 'R'
  ParameterStatus: 0x53, // 'S'
  BackendKeyData: 0x4b, // 'K'
  ReadyForQuery: 0x5a, // 'Z'
  RowDescription: 0x54, // 'T'
  DataRow: 0x44, // 'D'
  CommandComplete: 0x43, // 'C'
  EmptyQueryResponse: 0x49, // 'I'
  ErrorResponse: 0x45, // 'E'
  NoticeResponse: 0x4e, // 'N'
  CopyBothResponse: 0x57, // 'W'
  CopyData: 0x64, // 'd'
  CopyDone: 0x63, // 'c'
  NegotiateProtocolVersion: 0x76, // 'v'
} as const;

/** AuthenticationRequest codes (pqcomm.h AUTH_REQ_*). */
export const AUTH = { Ok: 0, CleartextPassword: 3, MD5Password: 5, SASL: 10, SASLContinue: 11, SASLFinal: 12 } as const;

/** Type OIDs used in replication results (pg_type.dat). */
export const OID = { int4: 23, int8: 20, text: 25, bytea: 17 } as const;

function message(code: number, build?: (w: Writer) => void): Buffer {
  const w = new Writer(64);
  build?.(w);
  return w.flush(code);
}

export function authenticationOk(): Buffer {
  return message(BE.Authentication, (w) => w.addInt32(AUTH.Ok));
}

export function authenticationCleartextPassword(): Buffer {
  return message(BE.Authentication, (w) => w.addInt32(AUTH.CleartextPassword));
}

export function authenticationMD5Password(salt: Buffer): Buffer {
  if (salt.length !== 4) throw new RangeError('an MD5 salt is 4 bytes');
  return message(BE.Authentication, (w) => w.addInt32(AUTH.MD5Password).add(salt));
}

/** AuthenticationSASL: the mechanisms offered, in order of preference. */
export function authenticationSASL(mechanisms: readonly string[]): Buffer {
  return message(BE.Authentication, (w) => {
    w.addInt32(AUTH.SASL);
    for (const m of mechanisms) w.addCString(m);
    w.addCString('');
  });
}

export function authenticationSASLContinue(data: string): Buffer {
  return message(BE.Authentication, (w) => w.addInt32(AUTH.SASLContinue).addString(data));
}

export function authenticationSASLFinal(data: string): Buffer {
  return message(BE.Authentication, (w) => w.addInt32(AUTH.SASLFinal).addString(data));
}

export function parameterStatus(name: string, value: string): Buffer {
  return message(BE.ParameterStatus, (w) => w.addCString(name).addCString(value));
}

export function backendKeyData(pid: number, key: number): Buffer {
  return message(BE.BackendKeyData, (w) => w.addInt32(pid).addInt32(key));
}

/** ReadyForQuery; a walsender is always idle ('I') between commands. */
export function readyForQuery(status: 'I' | 'T' | 'E' = 'I'): Buffer {
  return message(BE.ReadyForQuery, (w) => w.addString(status));
}

export interface FieldDescription {
  name: string;
  typeOid: number;
  /** pg_type.typlen: -1 for varlena types (text, bytea), 4 for int4, 8 for int8. */
  typeLen: number;
  typeMod?: number;
}

export function textField(name: string): FieldDescription {
  return { name, typeOid: OID.text, typeLen: -1 };
}

export function int4Field(name: string): FieldDescription {
  return { name, typeOid: OID.int4, typeLen: 4 };
}

export function int8Field(name: string): FieldDescription {
  return { name, typeOid: OID.int8, typeLen: 8 };
}

/** RowDescription of a text-format result with no table behind it (table OID 0, attnum 0, format 0). */
export function rowDescription(fields: readonly FieldDescription[]): Buffer {
  return message(BE.RowDescription, (w) => {
    w.addInt16(fields.length);
    for (const f of fields) {
      w.addCString(f.name)
        .addInt32(0)
        .addInt16(0)
        .addInt32(f.typeOid)
        .addInt16(f.typeLen)
        .addInt32(f.typeMod ?? -1)
        .addInt16(0);
    }
  });
}

/** DataRow: each value as text (or raw bytes), null for SQL NULL. */
export function dataRow(values: readonly (string | Buffer | null)[]): Buffer {
  return message(BE.DataRow, (w) => {
    w.addInt16(values.length);
    for (const v of values) {
      if (v === null) {
        w.addInt32(-1);
      } else {
        const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
        w.addInt32(b.length).add(b);
      }
    }
  });
}

export function commandComplete(tag: string): Buffer {
  return message(BE.CommandComplete, (w) => w.addCString(tag));
}

export function emptyQueryResponse(): Buffer {
  return message(BE.EmptyQueryResponse);
}

export type Severity = 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE' | 'LOG' | 'INFO' | 'DEBUG';

export interface ErrorFields {
  severity: Severity;
  /** SQLSTATE, five characters. */
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

function noticeFields(w: Writer, e: ErrorFields): void {
  if (!/^[0-9A-Z]{5}$/.test(e.code)) throw new RangeError(`invalid SQLSTATE "${e.code}"`);
  // S: localized severity, V: the same unlocalized (9.6+), C: SQLSTATE, M, D, H; a zero byte ends the list.
  w.addString('S').addCString(e.severity).addString('V').addCString(e.severity).addString('C').addCString(e.code).addString('M').addCString(e.message);
  if (e.detail !== undefined) w.addString('D').addCString(e.detail);
  if (e.hint !== undefined) w.addString('H').addCString(e.hint);
  w.addCString('');
}

export function errorResponse(e: ErrorFields): Buffer {
  return message(BE.ErrorResponse, (w) => noticeFields(w, e));
}

export function noticeResponse(e: ErrorFields): Buffer {
  return message(BE.NoticeResponse, (w) => noticeFields(w, e));
}

/** CopyBothResponse as a walsender sends it: text format, no columns. */
export function copyBothResponse(): Buffer {
  return message(BE.CopyBothResponse, (w) => w.addString('\0').addInt16(0));
}

export function copyDone(): Buffer {
  return message(BE.CopyDone);
}

export function copyData(payload: Buffer): Buffer {
  return message(BE.CopyData, (w) => w.add(payload));
}

/** NegotiateProtocolVersion: the newest minor version supported and the startup options not recognized. */
export function negotiateProtocolVersion(newestMinor: number, unrecognized: readonly string[]): Buffer {
  return message(BE.NegotiateProtocolVersion, (w) => {
    w.addInt32((3 << 16) | newestMinor).addInt32(unrecognized.length);
    for (const o of unrecognized) w.addCString(o);
  });
}

/** The CopyData frame header (5 bytes) and XLogData header (25 bytes) in front of `length` WAL bytes. */
export const XLOG_DATA_FRAME_HEADER_SIZE = 5 + XLOG_DATA_HEADER_SIZE;

/**
 * The 30 bytes that precede `length` bytes of WAL in one CopyData XLogData message, so that the WAL
 * itself is written to the socket as it is, without a copy (walsender.c XLogSendPhysical).
 */
export function xlogDataFrameHeader(dataStart: bigint, walEnd: bigint, sendTime: bigint, length: number): Buffer {
  const b = Buffer.allocUnsafe(XLOG_DATA_FRAME_HEADER_SIZE);
  b[0] = BE.CopyData;
  b.writeUInt32BE(4 + XLOG_DATA_HEADER_SIZE + length, 1);
  b[5] = MSG_XLOG_DATA;
  b.writeBigUInt64BE(dataStart, 6);
  b.writeBigUInt64BE(walEnd, 14);
  b.writeBigInt64BE(sendTime, 22);
  return b;
}

/** A whole CopyData keepalive message (walsender.c WalSndKeepalive): 18 bytes of payload. */
export function keepaliveFrame(walEnd: bigint, sendTime: bigint, replyRequested: boolean): Buffer {
  const b = Buffer.alloc(5 + 18);
  b[0] = BE.CopyData;
  b.writeUInt32BE(4 + 18, 1);
  b[5] = MSG_KEEPALIVE;
  b.writeBigUInt64BE(walEnd, 6);
  b.writeBigInt64BE(sendTime, 14);
  b[22] = replyRequested ? 1 : 0;
  return b;
}
