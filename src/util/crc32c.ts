// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of every WAL record
// (pg_crc32c.h, xlogrecord.h xl_crc) and the one PostgreSQL's backup manifests use by default
// (src/common/checksum_helper.c). The native implementation
// of @node-rs/crc32 when it loads (prebuilt, SIMD), else a table-driven slicing-by-8 one in JS.
// Values are the finished CRC (as FIN_CRC32C leaves it), chainable: crc32c(b, crc32c(a)) equals
// crc32c(a ++ b).
import { createRequire } from 'node:module';

const POLY = 0x82f63b78;

/** Eight 256-entry tables: TABLES[k][i] is the CRC of byte i followed by k zero bytes. */
const TABLES: Uint32Array[] = (() => {
  const t: Uint32Array[] = [];
  const t0 = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t0[i] = c >>> 0;
  }
  t.push(t0);
  for (let k = 1; k < 8; k++) {
    const prev = t[k - 1]!;
    const tk = new Uint32Array(256);
    for (let i = 0; i < 256; i++) tk[i] = (prev[i]! >>> 8) ^ t0[prev[i]! & 0xff]!;
    t.push(tk);
  }
  return t;
})();

/** CRC-32C in JavaScript (slicing-by-8), continuing from `crc` (a finished value; 0 to start). */
export function crc32cJs(data: Uint8Array, crc = 0): number {
  return crc32cJsRange(data, 0, data.length, crc);
}

/** CRC-32C in JavaScript of data[start, end), continuing from `crc`, without making a view. */
export function crc32cJsRange(data: Uint8Array, start: number, end: number, crc = 0): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  let c = ~crc >>> 0;
  let i = start;
  const n = end;
  const end8 = n - ((n - start) % 8);
  while (i < end8) {
    const a = (c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24))) >>> 0;
    c = t7[a & 0xff]! ^ t6[(a >>> 8) & 0xff]! ^ t5[(a >>> 16) & 0xff]! ^ t4[a >>> 24]! ^ t3[data[i + 4]!]! ^ t2[data[i + 5]!]! ^ t1[data[i + 6]!]! ^ t0[data[i + 7]!]!;
    i += 8;
  }
  while (i < n) c = t0[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
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

const native = loadNative();

/** Which implementation crc32c uses. */
export const crc32cImplementation: 'native' | 'js' = native ? 'native' : 'js';

/** CRC-32C of `data`, continuing from `crc` (a finished value; 0 to start). */
export function crc32c(data: Uint8Array, crc = 0): number {
  if (native) return data.length === 0 ? crc >>> 0 : native(data, crc) >>> 0;
  return crc32cJs(data, crc);
}

/**
 * Below this many bytes the JavaScript CRC is faster than a call into the native one (the call
 * itself and the view it needs cost more than the bytes): measured by npm run bench:verify.
 */
export const NATIVE_CRC_MIN_BYTES = 256;

/**
 * CRC-32C of data[start, end), continuing from `crc` (a finished value; 0 to start): a running
 * CRC over pieces, for data that never sits in one buffer. Small ranges in JavaScript, larger
 * ones natively when the native one loaded.
 */
export function crc32cRange(data: Uint8Array, start: number, end: number, crc = 0): number {
  if (native && end - start >= NATIVE_CRC_MIN_BYTES) return native(data.subarray(start, end), crc) >>> 0;
  return crc32cJsRange(data, start, end, crc);
}
