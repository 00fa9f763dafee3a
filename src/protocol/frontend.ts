// Messages a client sends to a server (protocol 3.0; postmaster.c ProcessStartupPacket, pqcomm.c
// pq_getmessage, postgres.c SocketBackend): the untyped first packets (SSLRequest, GSSENCRequest,
// CancelRequest, StartupMessage) and the typed messages after them, framed incrementally from
// whatever pieces the socket delivers. Lengths are bounded before anything is buffered, so a
// client cannot make the server hold more than the limit of one message. Pure: Buffers in,
// messages or a ProtocolViolation out.
import { ProtocolError } from './messages.js';

/** Codes of the untyped first packets (pqcomm.h). */
export const CANCEL_REQUEST_CODE = 80877102; // 1234 << 16 | 5678
export const SSL_REQUEST_CODE = 80877103; // 1234 << 16 | 5679
export const GSSENC_REQUEST_CODE = 80877104; // 1234 << 16 | 5680
export const PROTOCOL_3_0 = 196608; // 3 << 16

/** postmaster.c MAX_STARTUP_PACKET_LENGTH. */
export const MAX_STARTUP_PACKET_LENGTH = 10000;
/** auth.c PG_MAX_AUTH_TOKEN_LENGTH: the largest message accepted before authentication is done. */
export const MAX_AUTH_MESSAGE_LENGTH = 65535;

/** Frontend message type bytes. */
export const FE = {
  Query: 0x51, // 'Q'
  Password: 0x70, // 'p' (PasswordMessage, SASLInitialResponse, SASLResponse)
  Terminate: 0x58, // 'X'
  CopyData: 0x64, // 'd'
  CopyDone: 0x63, // 'c'
  CopyFail: 0x66, // 'f'
  Sync: 0x53, // 'S'
  Flush: 0x48, // 'H'
  Parse: 0x50, // 'P'
  Bind: 0x42, // 'B'
  Describe: 0x44, // 'D'
  Execute: 0x45, // 'E'
  Close: 0x43, // 'C'
  FunctionCall: 0x46, // 'F'
} as const;

/** A violation of the protocol by the client: the connection is closed after saying so (08P01). */
export class ProtocolViolation extends ProtocolError {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolViolation';
  }
}

export type FirstPacket = { kind: 'ssl' } | { kind: 'gssenc' } | { kind: 'cancel'; pid: number; key: number } | { kind: 'startup'; major: number; minor: number; params: Map<string, string> };

export interface TypedMessage {
  type: number;
  /** The message body after the length word. A view: consume it before the next push. */
  body: Buffer;
}

/**
 * Decode an untyped first packet (its 4-byte length already removed). Parameters of a
 * StartupMessage are name/value C strings ending with an empty name (postmaster.c
 * ProcessStartupPacket); a name given twice keeps the last value, as there.
 */
export function parseFirstPacket(body: Buffer): FirstPacket {
  if (body.length < 4) throw new ProtocolViolation('invalid length of startup packet');
  const code = body.readUInt32BE(0);
  if (code === SSL_REQUEST_CODE) return { kind: 'ssl' };
  if (code === GSSENC_REQUEST_CODE) return { kind: 'gssenc' };
  if (code === CANCEL_REQUEST_CODE) {
    if (body.length !== 12) throw new ProtocolViolation('invalid length of cancel request packet');
    return { kind: 'cancel', pid: body.readInt32BE(4), key: body.readInt32BE(8) };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== 3) {
    throw new ProtocolViolation(`unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0`);
  }
  const params = new Map<string, string>();
  let pos = 4;
  for (;;) {
    const nameEnd = body.indexOf(0, pos);
    if (nameEnd < 0) throw new ProtocolViolation('invalid startup packet layout: expected terminator as last byte');
    if (nameEnd === pos) {
      if (nameEnd !== body.length - 1) throw new ProtocolViolation('invalid startup packet layout: expected terminator as last byte');
      break;
    }
    const valueEnd = body.indexOf(0, nameEnd + 1);
    if (valueEnd < 0) throw new ProtocolViolation('invalid startup packet layout: expected terminator as last byte');
    params.set(body.toString('utf8', pos, nameEnd), body.toString('utf8', nameEnd + 1, valueEnd));
    pos = valueEnd + 1;
  }
  return { kind: 'startup', major, minor, params };
}

/**
 * Cuts the byte stream from a client into messages. The first packet (and a second after an
 * SSLRequest or GSSENCRequest answered 'N') is untyped; everything after the StartupMessage is
 * typed. `maxLength` bounds the typed messages accepted now (callers lower it before
 * authentication and raise it after).
 */
export class FrontendFramer {
  private buf: Buffer = Buffer.alloc(0);
  private untyped = true;

  constructor(public maxLength: number = MAX_AUTH_MESSAGE_LENGTH) {}

  /** The next packets are typed messages (after the StartupMessage). */
  startTyped(): void {
    this.untyped = false;
  }

  /** Bytes received but not yet part of a whole message. */
  get pendingBytes(): number {
    return this.buf.length;
  }

  /** Take bytes from the socket; the chunk is copied only when a message spans pieces. */
  push(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
  }

  /**
   * Bytes received after the last whole message, handed over and forgotten: after an SSLRequest
   * they must be none (a client sending more before the server's answer is trying to inject
   * plaintext into what becomes a TLS session; libpq sends nothing).
   */
  takeRemainder(): Buffer {
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    return rest;
  }

  /** The next whole untyped packet's body, or undefined when more bytes are needed. */
  nextFirstPacket(): Buffer | undefined {
    if (!this.untyped) throw new Error('nextFirstPacket after the startup packet');
    if (this.buf.length < 4) return undefined;
    const len = this.buf.readUInt32BE(0);
    // postmaster.c compares the length without its own 4 bytes.
    if (len < 8 || len - 4 > MAX_STARTUP_PACKET_LENGTH) throw new ProtocolViolation('invalid length of startup packet');
    if (this.buf.length < len) return undefined;
    const body = this.buf.subarray(4, len);
    this.buf = this.buf.subarray(len);
    return body;
  }

  /** The next whole typed message, or undefined when more bytes are needed. */
  next(): TypedMessage | undefined {
    if (this.untyped) throw new Error('next() before the startup packet');
    if (this.buf.length < 5) return undefined;
    const type = this.buf[0]!;
    const len = this.buf.readUInt32BE(1);
    if (len < 4) throw new ProtocolViolation(`invalid message length ${len}`);
    if (len > this.maxLength) throw new ProtocolViolation(`invalid message length ${len} for message type "${printable(type)}"`);
    if (this.buf.length < 1 + len) return undefined;
    const body = this.buf.subarray(5, 1 + len);
    this.buf = this.buf.subarray(1 + len);
    return { type, body };
  }
}

/** A message type byte as printed in errors: the character when printable, else its code. */
export function printable(type: number): string {
  return type >= 0x20 && type < 0x7f ? String.fromCharCode(type) : `\\x${type.toString(16).padStart(2, '0')}`;
}

/** A C string at `pos` in `body`: its text and the position after its terminator. */
function cstring(body: Buffer, pos: number, what: string): { text: string; next: number } {
  const end = body.indexOf(0, pos);
  if (end < 0) throw new ProtocolViolation(`invalid string in message: ${what}`);
  return { text: body.toString('utf8', pos, end), next: end + 1 };
}

/** A Query message's text: one C string filling the body (postgres.c exec_simple_query input). */
export function parseQuery(body: Buffer): string {
  const { text, next } = cstring(body, 0, 'query');
  if (next !== body.length) throw new ProtocolViolation('invalid message format');
  return text;
}

/** A PasswordMessage (cleartext or "md5..." hash): one C string. */
export function parsePasswordMessage(body: Buffer): string {
  const { text, next } = cstring(body, 0, 'password');
  if (next !== body.length) throw new ProtocolViolation('invalid password packet size');
  return text;
}

/** SASLInitialResponse: the mechanism chosen and the client's first message (absent when length is -1). */
export function parseSASLInitialResponse(body: Buffer): { mechanism: string; data: Buffer | undefined } {
  const { text, next } = cstring(body, 0, 'SASL mechanism');
  if (next + 4 > body.length) throw new ProtocolViolation('malformed SASL message: no length of the initial response');
  const len = body.readInt32BE(next);
  if (len === -1) {
    if (next + 4 !== body.length) throw new ProtocolViolation('malformed SASL message');
    return { mechanism: text, data: undefined };
  }
  if (len < 0 || next + 4 + len !== body.length) throw new ProtocolViolation('malformed SASL message: length mismatch');
  return { mechanism: text, data: body.subarray(next + 4) };
}
