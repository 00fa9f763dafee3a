// Comparing WAL directories: walstream's output against pg_receivewal's and the server's pg_wal.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

export const SEG_RE = /^[0-9A-F]{24}$/;

export function listDir(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => !n.startsWith('.'))
    .sort();
}

export function completeSegments(dir: string): string[] {
  return listDir(dir).filter((n) => SEG_RE.test(n));
}

/** Name of the segment holding `lsn` on `tli`. */
export function segName(tli: number, lsn: bigint, segSize: number): string {
  const segNo = lsn / BigInt(segSize);
  const per = 0x100000000n / BigInt(segSize);
  const h = (n: bigint | number): string => n.toString(16).toUpperCase().padStart(8, '0');
  return h(tli) + h(segNo / per) + h(segNo % per);
}

export function lsnOf(text: string): bigint {
  const [hi, lo] = text.split('/');
  return (BigInt('0x' + hi) << 32n) | BigInt('0x' + lo);
}

/** Every complete segment in `dir` equals the file of the same name in `reference` (which must have it). */
export function assertSegmentsMatch(dir: string, reference: string, names = completeSegments(dir)): number {
  let n = 0;
  for (const name of names) {
    const a = readFileSync(join(dir, name));
    const b = readFileSync(join(reference, name));
    if (!a.equals(b)) throw new Error(`segment ${name} differs between ${dir} and ${reference}`);
    n++;
  }
  return n;
}

/** The first `length` bytes of two files are equal. */
export function assertPrefixEqual(a: string, b: string, length: number): void {
  const x = readFileSync(a).subarray(0, length);
  const y = readFileSync(b).subarray(0, length);
  if (x.length !== length || y.length !== length) throw new Error(`${a} or ${b} is shorter than ${length} bytes`);
  if (!x.equals(y)) throw new Error(`${a} and ${b} differ within the first ${length} bytes`);
}

export function fileSize(path: string): number {
  return statSync(path).size;
}
