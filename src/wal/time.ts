// PostgreSQL timestamps on the wire: int64 microseconds since 2000-01-01 00:00:00 UTC
// (POSTGRES_EPOCH_JDATE; see GetCurrentTimestamp and the replication protocol's sendTime).

export const PG_EPOCH_OFFSET_US = 946_684_800_000_000n;

export function unixMsToPgTime(ms: number): bigint {
  return BigInt(Math.round(ms * 1000)) - PG_EPOCH_OFFSET_US;
}

export function pgTimeToUnixMs(pgTime: bigint): number {
  return Number(pgTime + PG_EPOCH_OFFSET_US) / 1000;
}

export function nowPgTime(): bigint {
  return unixMsToPgTime(Date.now());
}
