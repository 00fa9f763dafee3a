// The CopyBoth sub-protocol of physical replication (walsender.c XLogSendPhysical,
// WalSndKeepalive, ProcessStandbyReplyMessage; receivelog.c sendFeedback). Pure codec:
// Buffers in, values out. All integers big-endian, LSNs uint64, times int64 µs since 2000-01-01.

export const MSG_XLOG_DATA = 0x77; // 'w'
export const MSG_KEEPALIVE = 0x6b; // 'k'
export const MSG_STANDBY_STATUS = 0x72; // 'r'
export const MSG_HOT_STANDBY_FEEDBACK = 0x68; // 'h'

export const XLOG_DATA_HEADER_SIZE = 25;
export const KEEPALIVE_SIZE = 18;
export const STANDBY_STATUS_SIZE = 34;

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

export interface XLogData {
  kind: 'xlogdata';
  dataStart: bigint;
  walEnd: bigint;
  sendTime: bigint;
  /** View into the source buffer: copy it before the source may be reused. */
  data: Buffer;
}

export interface Keepalive {
  kind: 'keepalive';
  walEnd: bigint;
  sendTime: bigint;
  replyRequested: boolean;
}

export type ServerCopyMessage = XLogData | Keepalive;

/** Decode one CopyData payload sent by a walsender. Throws ProtocolError on anything malformed. */
export function decodeServerCopyData(payload: Buffer): ServerCopyMessage {
  if (payload.length === 0) throw new ProtocolError('empty CopyData message from server');
  const type = payload[0];
  if (type === MSG_XLOG_DATA) {
    if (payload.length < XLOG_DATA_HEADER_SIZE) {
      throw new ProtocolError(`XLogData message too short: ${payload.length} bytes`);
    }
    return {
      kind: 'xlogdata',
      dataStart: payload.readBigUInt64BE(1),
      walEnd: payload.readBigUInt64BE(9),
      sendTime: payload.readBigInt64BE(17),
      data: payload.subarray(XLOG_DATA_HEADER_SIZE),
    };
  }
  if (type === MSG_KEEPALIVE) {
    if (payload.length < KEEPALIVE_SIZE) throw new ProtocolError(`keepalive message too short: ${payload.length} bytes`);
    const reply = payload[17]!;
    return {
      kind: 'keepalive',
      walEnd: payload.readBigUInt64BE(1),
      sendTime: payload.readBigInt64BE(9),
      replyRequested: reply !== 0,
    };
  }
  throw new ProtocolError(`unrecognized streaming header: "${String.fromCharCode(type!)}" (0x${type!.toString(16)})`);
}

export interface StandbyStatus {
  write: bigint;
  flush: bigint;
  apply: bigint;
  clientTime: bigint;
  replyRequested: boolean;
}

export function encodeStandbyStatus(s: StandbyStatus): Buffer {
  const b = Buffer.alloc(STANDBY_STATUS_SIZE);
  b[0] = MSG_STANDBY_STATUS;
  b.writeBigUInt64BE(s.write, 1);
  b.writeBigUInt64BE(s.flush, 9);
  b.writeBigUInt64BE(s.apply, 17);
  b.writeBigInt64BE(s.clientTime, 25);
  b[33] = s.replyRequested ? 1 : 0;
  return b;
}

/** Encoders for server messages: used by tests and by fault-injecting fake servers. */
export function encodeXLogData(dataStart: bigint, walEnd: bigint, sendTime: bigint, data: Buffer): Buffer {
  const b = Buffer.alloc(XLOG_DATA_HEADER_SIZE + data.length);
  b[0] = MSG_XLOG_DATA;
  b.writeBigUInt64BE(dataStart, 1);
  b.writeBigUInt64BE(walEnd, 9);
  b.writeBigInt64BE(sendTime, 17);
  data.copy(b, XLOG_DATA_HEADER_SIZE);
  return b;
}

export function encodeKeepalive(walEnd: bigint, sendTime: bigint, replyRequested: boolean): Buffer {
  const b = Buffer.alloc(KEEPALIVE_SIZE);
  b[0] = MSG_KEEPALIVE;
  b.writeBigUInt64BE(walEnd, 1);
  b.writeBigInt64BE(sendTime, 9);
  b[17] = replyRequested ? 1 : 0;
  return b;
}

export function decodeStandbyStatus(payload: Buffer): StandbyStatus {
  if (payload.length !== STANDBY_STATUS_SIZE || payload[0] !== MSG_STANDBY_STATUS) {
    throw new ProtocolError('not a standby status update');
  }
  return {
    write: payload.readBigUInt64BE(1),
    flush: payload.readBigUInt64BE(9),
    apply: payload.readBigUInt64BE(17),
    clientTime: payload.readBigInt64BE(25),
    replyRequested: payload[33] !== 0,
  };
}

export const HOT_STANDBY_FEEDBACK_SIZE = 25;

/** Hot standby feedback ('h', walsender.c ProcessStandbyHSFeedbackMessage): all-zero xmins mean "none". */
export interface HotStandbyFeedback {
  clientTime: bigint;
  xmin: number;
  xminEpoch: number;
  catalogXmin: number;
  catalogXminEpoch: number;
}

export function decodeHotStandbyFeedback(payload: Buffer): HotStandbyFeedback {
  if (payload.length !== HOT_STANDBY_FEEDBACK_SIZE || payload[0] !== MSG_HOT_STANDBY_FEEDBACK) {
    throw new ProtocolError('not a hot standby feedback message');
  }
  return {
    clientTime: payload.readBigInt64BE(1),
    xmin: payload.readUInt32BE(9),
    xminEpoch: payload.readUInt32BE(13),
    catalogXmin: payload.readUInt32BE(17),
    catalogXminEpoch: payload.readUInt32BE(21),
  };
}

export function encodeHotStandbyFeedback(f: HotStandbyFeedback): Buffer {
  const b = Buffer.alloc(HOT_STANDBY_FEEDBACK_SIZE);
  b[0] = MSG_HOT_STANDBY_FEEDBACK;
  b.writeBigInt64BE(f.clientTime, 1);
  b.writeUInt32BE(f.xmin, 9);
  b.writeUInt32BE(f.xminEpoch, 13);
  b.writeUInt32BE(f.catalogXmin, 17);
  b.writeUInt32BE(f.catalogXminEpoch, 21);
  return b;
}
