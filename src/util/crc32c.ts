// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of every WAL record
// (pg_crc32c.h, xlogrecord.h xl_crc) and the one PostgreSQL's backup manifests use by default
// (src/common/checksum_helper.c). The native implementation
// of @node-rs/crc32 when it loads (prebuilt, SIMD), else a table-driven slicing-by-16 one in JS.
// Values are the finished CRC (as FIN_CRC32C leaves it), chainable: crc32c(b, crc32c(a)) equals
// crc32c(a ++ b).
import { createRequire } from 'node:module';

const POLY = 0x82f63b78;

/**
 * Sixteen 256-entry tables in one array: T[k * 256 + i] is the CRC register after byte i followed
 * by k zero bytes (int32, so that the XORs stay in 32-bit integers).
 */
const T: Int32Array = (() => {
  const t = new Int32Array(16 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[i] = c;
  }
  for (let k = 1; k < 16; k++) {
    for (let i = 0; i < 256; i++) {
      const p = t[(k - 1) * 256 + i]!;
      t[k * 256 + i] = (p >>> 8) ^ t[p & 0xff]!;
    }
  }
  return t;
})();

/** CRC-32C in JavaScript (slicing-by-16), continuing from `crc` (a finished value; 0 to start). */
export function crc32cJs(data: Uint8Array, crc = 0): number {
  return crc32cJsRange(data, 0, data.length, crc);
}

/** CRC-32C in JavaScript of data[start, end), continuing from `crc`, without making a view. */
export function crc32cJsRange(d: Uint8Array, start: number, end: number, crc = 0): number {
  let c = ~crc;
  let i = start;
  const end16 = end - ((end - start) & 15);
  while (i < end16) {
    const a = c ^ (d[i]! | (d[i + 1]! << 8) | (d[i + 2]! << 16) | (d[i + 3]! << 24));
    c =
      T[3840 + (a & 0xff)]! ^
      T[3584 + ((a >>> 8) & 0xff)]! ^
      T[3328 + ((a >>> 16) & 0xff)]! ^
      T[3072 + (a >>> 24)]! ^
      T[2816 + d[i + 4]!]! ^
      T[2560 + d[i + 5]!]! ^
      T[2304 + d[i + 6]!]! ^
      T[2048 + d[i + 7]!]! ^
      T[1792 + d[i + 8]!]! ^
      T[1536 + d[i + 9]!]! ^
      T[1280 + d[i + 10]!]! ^
      T[1024 + d[i + 11]!]! ^
      T[768 + d[i + 12]!]! ^
      T[512 + d[i + 13]!]! ^
      T[256 + d[i + 14]!]! ^
      T[d[i + 15]!]!;
    i += 16;
  }
  while (i < end) c = T[(c ^ d[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/**
 * CRC-32C in JavaScript of the bytes [start, end) of the DataView `v`, continuing from `crc`:
 * the same value as crc32cJsRange over the same bytes, read four at a time (little-endian loads,
 * any alignment).
 */
export function crc32cJsView(v: DataView, start: number, end: number, crc = 0): number {
  return ~updateView(~crc, v, start, end) >>> 0;
}

/**
 * CRC-32C in JavaScript of the bytes [start1, end1) then [start2, end2) of the DataView `v`, from
 * the start: a WAL record's (its data, then its header up to xl_crc) in one call.
 */
export function crc32cJsView2(v: DataView, start1: number, end1: number, start2: number, end2: number): number {
  return ~updateView(updateView(-1, v, start1, end1), v, start2, end2) >>> 0;
}

/** The CRC register `c` (not inverted) after the bytes [i, end) of `v`. */
function updateView(c: number, v: DataView, i: number, end: number): number {
  while (end - i >= 16) {
    const a = c ^ v.getInt32(i, true);
    const b = v.getInt32(i + 4, true);
    const x = v.getInt32(i + 8, true);
    const y = v.getInt32(i + 12, true);
    c =
      T[3840 + (a & 0xff)]! ^
      T[3584 + ((a >>> 8) & 0xff)]! ^
      T[3328 + ((a >>> 16) & 0xff)]! ^
      T[3072 + (a >>> 24)]! ^
      T[2816 + (b & 0xff)]! ^
      T[2560 + ((b >>> 8) & 0xff)]! ^
      T[2304 + ((b >>> 16) & 0xff)]! ^
      T[2048 + (b >>> 24)]! ^
      T[1792 + (x & 0xff)]! ^
      T[1536 + ((x >>> 8) & 0xff)]! ^
      T[1280 + ((x >>> 16) & 0xff)]! ^
      T[1024 + (x >>> 24)]! ^
      T[768 + (y & 0xff)]! ^
      T[512 + ((y >>> 8) & 0xff)]! ^
      T[256 + ((y >>> 16) & 0xff)]! ^
      T[y >>> 24]!;
    i += 16;
  }
  if (end - i >= 8) {
    const a = c ^ v.getInt32(i, true);
    const b = v.getInt32(i + 4, true);
    c =
      T[1792 + (a & 0xff)]! ^
      T[1536 + ((a >>> 8) & 0xff)]! ^
      T[1280 + ((a >>> 16) & 0xff)]! ^
      T[1024 + (a >>> 24)]! ^
      T[768 + (b & 0xff)]! ^
      T[512 + ((b >>> 8) & 0xff)]! ^
      T[256 + ((b >>> 16) & 0xff)]! ^
      T[b >>> 24]!;
    i += 8;
  }
  if (end - i >= 4) {
    const a = c ^ v.getInt32(i, true);
    c = T[768 + (a & 0xff)]! ^ T[512 + ((a >>> 8) & 0xff)]! ^ T[256 + ((a >>> 16) & 0xff)]! ^ T[a >>> 24]!;
    i += 4;
  }
  while (i < end) c = T[(c ^ v.getUint8(i++)) & 0xff]! ^ (c >>> 8);
  return c;
}

type Crc32cFn = (input: Uint8Array, initialState?: number) => number;

function loadNative(): Crc32cFn | undefined {
  if (process.env['WALSTREAM_CRC32C'] === 'js') return undefined;
  try {
    const mod = createRequire(import.meta.url)('@node-rs/crc32') as { crc32c?: Crc32cFn };
    const fn = mod.crc32c;
    // Trust it only once it gives the check value.
    if (typeof fn === 'function' && fn(Buffer.from('123456789')) >>> 0 === 0xe3069283) return fn;
  } catch {
    // not installed, or no prebuilt binary for this platform: the JS one serves
  }
  return undefined;
}

/**
 * The native CRC, loaded at its first use (null until then): a call that never checksums a
 * large range (a fetch, a push) does not pay for loading a shared library.
 */
let native: Crc32cFn | undefined | null = null;

function nativeCrc(): Crc32cFn | undefined {
  if (native === null) native = loadNative();
  return native;
}

/** Which implementation crc32c uses. */
export function crc32cImplementation(): 'native' | 'js' {
  return nativeCrc() ? 'native' : 'js';
}

/** CRC-32C of `data`, continuing from `crc` (a finished value; 0 to start). */
export function crc32c(data: Uint8Array, crc = 0): number {
  const n = native === null ? nativeCrc() : native;
  if (n) return data.length === 0 ? crc >>> 0 : n(data, crc) >>> 0;
  return crc32cJs(data, crc);
}

/**
 * Below this many bytes the JavaScript CRC is faster than a call into the native one (the call
 * itself and the view it needs cost more than the bytes): measured by npm run bench:verify (on
 * x86-64, Node 20: a native call costs about what the JS CRC through a DataView takes for 450
 * bytes).
 */
export const NATIVE_CRC_MIN_BYTES = 448;

/**
 * CRC-32C of data[start, end), continuing from `crc` (a finished value; 0 to start): a running
 * CRC over pieces, for data that never sits in one buffer. Small ranges in JavaScript, larger
 * ones natively when the native one loaded.
 */
export function crc32cRange(data: Uint8Array, start: number, end: number, crc = 0): number {
  if (end - start >= NATIVE_CRC_MIN_BYTES) {
    const n = native === null ? nativeCrc() : native;
    if (n) return n(data.subarray(start, end), crc) >>> 0;
  }
  return crc32cJsRange(data, start, end, crc);
}

/**
 * crc32cRange over the bytes [start, end) of the DataView `v`: small ranges read through the view
 * four bytes at a time, larger ones natively when the native one loaded.
 */
export function crc32cRangeView(v: DataView, start: number, end: number, crc = 0): number {
  // (a plain Uint8Array view: cheaper to make than a Buffer's subarray)
  if (end - start >= NATIVE_CRC_MIN_BYTES) {
    const n = native === null ? nativeCrc() : native;
    if (n) return n(new Uint8Array(v.buffer, v.byteOffset + start, end - start), crc) >>> 0;
  }
  return ~updateView(~crc, v, start, end) >>> 0;
}
