// How much of a timeline walstream holds past the point where a newer timeline forked from it:
// after a failover with asynchronous replication, the old primary's last WAL never reached the
// promoted standby, and it is in walstream's directory and archive only (xlog.c
// CleanupAfterArchiveRecovery keeps the same kind of WAL as <segment>.partial). That WAL is kept
// as it is, never overwritten; this module measures it, so the receiver can say which range the
// new timeline lacks (the transactions lost in the failover). A pre-padded file's bytes past the
// fork are zeros unless WAL was written there, so the last non-zero byte marks its end exactly.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decompress } from '../storage/codec.js';
import type { ArchiveStore } from '../storage/types.js';
import { listWalFiles } from '../sink/scan.js';
import type { Lsn } from '../wal/lsn.js';
import { parseWalFileName } from '../wal/segment.js';
import { listPieces } from './partial.js';

/** The position after the last non-zero byte of `data` from `from` on (or `from` when there is none). */
function lastNonZero(data: Buffer, from: number): number {
  for (let i = data.length - 1; i >= from; i--) if (data[i] !== 0) return i + 1;
  return from;
}

async function fileBytes(path: string, compressed: boolean, compression: 'none' | 'gzip' | 'zstd'): Promise<Buffer | undefined> {
  try {
    const raw = await readFile(path);
    return compressed ? await decompress(raw, compression, { allowTruncated: true }) : raw;
  } catch {
    return undefined;
  }
}

/**
 * The end of the WAL of `tli` held past `fork` in a receiver's directory and its archive, or
 * `fork` when nothing of it lies beyond. Whole segments after the fork's segment count whole;
 * the fork's own segment and a .partial count up to their last non-zero byte.
 */
export async function heldPast(o: { dir?: string; store?: ArchiveStore; tli: number; fork: Lsn; segSize: number }): Promise<Lsn> {
  const segSize = BigInt(o.segSize);
  const forkSeg = o.fork / segSize;
  let end = o.fork;
  const consider = (v: Lsn): void => {
    if (v > end) end = v;
  };
  for (const e of o.dir !== undefined ? await listWalFiles(o.dir, o.segSize) : []) {
    if (e.tli !== o.tli || e.segNo < forkSeg) continue;
    const start = e.segNo * segSize;
    if (!e.partial && e.segNo > forkSeg) {
      consider(start + segSize);
      continue;
    }
    const data = await fileBytes(join(o.dir!, e.file), e.compression !== 'none', e.compression);
    if (!data) continue;
    const from = e.segNo === forkSeg ? Number(o.fork - start) : 0;
    consider(start + BigInt(lastNonZero(data, Math.min(from, data.length))));
  }
  if (o.store) {
    const prefix = o.tli.toString(16).toUpperCase().padStart(8, '0');
    const pieced = new Set<string>();
    for (const obj of await o.store.list(prefix)) {
      const m = /^([0-9A-F]{24})(\.partial\.[0-9A-F]{8})?$/.exec(obj.name);
      if (!m) continue;
      let segNo: bigint;
      try {
        segNo = parseWalFileName(m[1]!, o.segSize).segNo;
      } catch {
        continue;
      }
      if (segNo < forkSeg) continue;
      const start = segNo * segSize;
      if (m[2] !== undefined) pieced.add(m[1]!);
      else if (segNo > forkSeg) consider(start + segSize);
      else consider(start + BigInt(lastNonZero((await o.store.get(obj.name)).data, Number(o.fork - start))));
    }
    // Pieces of a segment in progress on that timeline: the contiguous bytes from its start.
    for (const seg of pieced) {
      let bytes = 0;
      for (const p of await listPieces(o.store, seg)) if (p.offset === bytes) bytes += p.size;
      consider(parseWalFileName(seg, o.segSize).segNo * segSize + BigInt(bytes));
    }
  }
  return end;
}
