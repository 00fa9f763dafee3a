// Where to resume in an output directory (pg_receivewal.c FindStreamingStart): the highest
// segment number, then the highest timeline; a complete file resumes at the next segment, a
// .partial is streamed again from its start. Also reads the system identifier from the newest
// segment so a directory of another cluster is refused before anything is written.
import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import zlib from 'node:zlib';
import { createReadStream } from 'node:fs';
import { readLongPageHeader, LONG_PAGE_HEADER_SIZE } from '../wal/page.js';
import { parseWalFileName, segNoToLsn, type ParsedWalName } from '../wal/segment.js';
import type { Lsn } from '../wal/lsn.js';
import type { Compression } from './segment-file.js';

export interface DirEntry extends ParsedWalName {
  file: string;
  compression: Compression;
  partial: boolean;
}

const ENTRY_RE = /^([0-9A-F]{24})(\.gz|\.zst)?(\.partial)?$/;

export async function listWalFiles(dir: string, segSize: number): Promise<DirEntry[]> {
  const names = await readdir(dir);
  const out: DirEntry[] = [];
  for (const file of names) {
    const m = ENTRY_RE.exec(file);
    if (!m) continue;
    let parsed: ParsedWalName;
    try {
      parsed = parseWalFileName(m[1]!, segSize);
    } catch {
      continue;
    }
    out.push({ ...parsed, file, compression: m[2] === '.gz' ? 'gzip' : m[2] === '.zst' ? 'zstd' : 'none', partial: m[3] !== undefined });
  }
  return out;
}

export interface ResumePoint {
  start: Lsn;
  tli: number;
  /** The file the decision rests on (to check its system identifier). */
  entry: DirEntry;
}

/**
 * Decide where to resume from the directory's files, or undefined when it has no usable segment.
 * With `onlyTli`, only that timeline's files count (after a fork, the old timeline's files beyond
 * the fork stay, but the stream goes on on the new one).
 */
export async function findStreamingStart(dir: string, segSize: number, onlyTli?: number): Promise<ResumePoint | undefined> {
  const entries = (await listWalFiles(dir, segSize)).filter((e) => onlyTli === undefined || e.tli === onlyTli);
  let best: DirEntry | undefined;
  const present: DirEntry[] = [];
  for (const e of entries) {
    const path = join(dir, e.file);
    if (!e.partial) {
      // A complete file must really be complete (pg_receivewal checks the size, or gzip's ISIZE).
      // It may vanish meanwhile (the archive uploader removes what it archived): skip it then.
      if (e.compression === 'none') {
        const size = await sizeOrUndefined(path);
        if (size === undefined) continue;
        if (size !== segSize) {
          throw new Error(`segment file "${e.file}" has incorrect size ${size}, expected ${segSize}; move it aside`);
        }
      } else {
        if ((await sizeOrUndefined(path)) === undefined) continue;
        const size = await uncompressedSize(path, e.compression);
        if (size !== segSize) {
          throw new Error(`compressed segment file "${e.file}" has incorrect uncompressed size ${size}, expected ${segSize}; move it aside`);
        }
      }
    }
    present.push(e);
    if (!best || e.segNo > best.segNo || (e.segNo === best.segNo && e.tli > best.tli) || (e.segNo === best.segNo && e.tli === best.tli && best.partial && !e.partial)) {
      best = e;
    }
  }
  if (!best) return undefined;
  // Segments are published in order, but the next one is written while the previous one is
  // still being synced, so a crash can leave more than one .partial after the newest complete
  // segment. Resume from the lowest of them, or nothing in between would ever be completed.
  const tli = best.tli;
  let lastComplete: DirEntry | undefined;
  for (const e of present) {
    if (e.tli === tli && !e.partial && (!lastComplete || e.segNo > lastComplete.segNo)) lastComplete = e;
  }
  let firstPartial: DirEntry | undefined;
  for (const e of present) {
    if (e.tli !== tli || !e.partial) continue;
    if (lastComplete && e.segNo <= lastComplete.segNo) continue;
    if (!firstPartial || e.segNo < firstPartial.segNo) firstPartial = e;
  }
  if (firstPartial) return { start: segNoToLsn(firstPartial.segNo, segSize), tli, entry: firstPartial };
  return { start: segNoToLsn(best.segNo + 1n, segSize), tli, entry: best };
}

async function sizeOrUndefined(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Uncompressed byte count of a gzip or zstd file (gzip by its ISIZE trailer, as pg_receivewal does). */
export async function uncompressedSize(path: string, compression: Compression): Promise<number> {
  if (compression === 'gzip') {
    const fh = await open(path, 'r');
    try {
      const { size } = await fh.stat();
      if (size < 18) return -1;
      const b = Buffer.alloc(4);
      await fh.read(b, 0, 4, size - 4);
      return b.readUInt32LE(0);
    } finally {
      await fh.close();
    }
  }
  let total = 0;
  await new Promise<void>((resolve, reject) => {
    const src = createReadStream(path);
    const z = decompressor(compression);
    src.on('error', reject);
    z.on('error', reject);
    z.on('data', (c: Buffer) => {
      total += c.length;
    });
    z.on('end', () => resolve());
    src.pipe(z);
  });
  return total;
}

function decompressor(c: Compression): NodeJS.ReadWriteStream {
  if (c === 'gzip') return zlib.createGunzip();
  const zz = zlib as unknown as { createZstdDecompress?: () => NodeJS.ReadWriteStream };
  if (!zz.createZstdDecompress) throw new Error('this Node.js has no zstd support (needs Node 22.15 or newer)');
  return zz.createZstdDecompress();
}

/** The system identifier in a segment file's long page header, or undefined if it has none yet. */
export async function readSegmentSystemId(path: string, compression: Compression): Promise<bigint | undefined> {
  let head: Buffer;
  if (compression === 'none') {
    const fh = await open(path, 'r');
    try {
      head = Buffer.alloc(LONG_PAGE_HEADER_SIZE);
      const { bytesRead } = await fh.read(head, 0, LONG_PAGE_HEADER_SIZE, 0);
      if (bytesRead < LONG_PAGE_HEADER_SIZE) return undefined;
    } finally {
      await fh.close();
    }
  } else {
    head = await new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      let got = 0;
      const src = createReadStream(path);
      const z = decompressor(compression);
      const finish = (): void => {
        src.destroy();
        resolve(Buffer.concat(chunks));
      };
      z.on('data', (c: Buffer) => {
        chunks.push(c);
        got += c.length;
        if (got >= LONG_PAGE_HEADER_SIZE) finish();
      });
      z.on('end', finish);
      z.on('error', finish);
      src.on('error', finish);
      src.pipe(z);
    });
    if (head.length < LONG_PAGE_HEADER_SIZE) return undefined;
  }
  if (head.subarray(0, LONG_PAGE_HEADER_SIZE).every((b) => b === 0)) return undefined;
  return readLongPageHeader(head).systemId;
}
