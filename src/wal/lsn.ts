// LSN arithmetic: PostgreSQL's XLogRecPtr is an unsigned 64-bit byte position, printed "%X/%X"
// (pg_lsn_out). We hold it as bigint; parsing accepts any width and either case, as 19dev
// zero-pads the low half.

export type Lsn = bigint;

export const INVALID_LSN: Lsn = 0n;
const MAX_LSN = (1n << 64n) - 1n;
const LSN_RE = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

export class LsnParseError extends Error {
  constructor(text: string) {
    super(`invalid LSN "${text}": expected two hexadecimal halves like 0/16B3748`);
    this.name = 'LsnParseError';
  }
}

export function parseLsn(text: string): Lsn {
  const m = LSN_RE.exec(text.trim());
  if (!m) throw new LsnParseError(text);
  return (BigInt('0x' + m[1]) << 32n) | BigInt('0x' + m[2]);
}

export function formatLsn(lsn: Lsn): string {
  if (lsn < 0n || lsn > MAX_LSN) throw new RangeError(`LSN out of range: ${lsn}`);
  const hi = Number(lsn >> 32n);
  const lo = Number(lsn & 0xffffffffn);
  return `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`;
}
