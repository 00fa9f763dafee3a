// Streamed objects, the pieces of issue 19 part 3 the archive's policy will build putStream and
// getStream from: compression on the fly, encryption in authenticated chunks, and the SHA-256
// as the bytes go by, each with memory bounded by one chunk whatever the object's size. It
// mirrors the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár) as age and Tink use it,
// and guarantees that unsealStream never yields a byte before the chunk holding it has
// authenticated, and that a stream cut at a chunk boundary, reordered, or moved to another name
// fails as IntegrityError.
//
// Sealed stream format (version 2; whole objects keep version 1, storage/encryption.ts):
//
//   offset  size  field
//   0       8     magic 89 57 53 45 4E 43 0D 0A (as version 1)
//   8       1     format version = 2
//   9       1     algorithm = 1 (AES-256-GCM, 16-byte tag)
//   10      1     key id length L (1-64)
//   11      L     key id
//   11+L    8     nonce prefix (random per object)
//   19+L    4     chunk size C, big-endian (plaintext bytes per chunk, 1 KiB - 16 MiB)
//   23+L    ...   chunks: each the AES-256-GCM ciphertext of C plaintext bytes (the last one 0
//                 to C bytes) followed by its 16-byte tag
//
// Chunk i (from 0) has the nonce prefix || i as 4 bytes big-endian, and as additional data the
// header || 0x00 || the object's name (a quarantine copy: the name it was written for) || 0x00 ||
// its compression || 0x00 || i (4 bytes) || 1 for the last chunk, else 0. An empty object is one
// empty last chunk.
import { zstdAvailable } from '../sink/segment-file.js';
import { rechunk } from '../util/chunks.js';
import { ALG_AES_256_GCM, SEALED_MAGIC, TAG_LENGTH, boundName, isSealed, type Keyring } from './encryption.js';
import { IntegrityError, KeyUnavailableError, StorageError, type Compression } from './types.js';
import { builtin } from '../util/lazy.js';

/** node:zlib, loaded for the first compressed stream. */
const zlib = builtin<typeof import('node:zlib')>('node:zlib');
/** node:crypto and node:stream, loaded when first used (not by a call that streams nothing). */
const crypto = builtin<typeof import('node:crypto')>('node:crypto');
const stream = builtin<typeof import('node:stream')>('node:stream');

export { rechunk };

export const STREAM_VERSION = 2;
/** Plaintext bytes per chunk unless asked otherwise. */
export const DEFAULT_CHUNK = 1024 * 1024;
const MIN_CHUNK = 1024;
const MAX_CHUNK = 16 * 1024 * 1024;
const PREFIX_LENGTH = 8;

/** The SHA-256 and length of the bytes that pass through `src`, known once it is consumed. */
export class Digesting {
  #hash = crypto().createHash('sha256');
  #hex: string | undefined;
  size = 0;

  async *pass(src: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    for await (const b of src) {
      this.#hash.update(b);
      this.size += b.length;
      yield b;
    }
  }

  /** The hex SHA-256, once every byte went by. */
  get hex(): string {
    this.#hex ??= this.#hash.digest('hex');
    return this.#hex;
  }
}

function zlibStream(c: Compression, direction: 'compress' | 'decompress'): NodeJS.ReadWriteStream | undefined {
  if (c === 'none') return undefined;
  if (c === 'gzip') return direction === 'compress' ? zlib().createGzip() : zlib().createGunzip();
  if (!zstdAvailable()) throw new StorageError(`zstd needs Node 22.15+ (this is Node ${process.versions.node})`, false);
  const z = zlib() as unknown as { createZstdCompress(): NodeJS.ReadWriteStream; createZstdDecompress(): NodeJS.ReadWriteStream };
  return direction === 'compress' ? z.createZstdCompress() : z.createZstdDecompress();
}

/** `src` compressed (or decompressed) on the fly, with backpressure: zlib holds at most its own buffers. */
export function transcode(src: AsyncIterable<Buffer>, c: Compression, direction: 'compress' | 'decompress'): AsyncIterable<Buffer> {
  const z = zlibStream(c, direction);
  if (!z) return src;
  // pipeline (not pipe): a failing source fails the output too, and nothing is left running.
  stream().pipeline(stream().Readable.from(src), z, (err) => {
    if (err) (z as unknown as { destroy(e: Error): void }).destroy(err);
  });
  return z as unknown as AsyncIterable<Buffer>;
}

function chunkAad(header: Buffer, name: string, compression: Compression, index: number, last: boolean): Buffer {
  const tail = Buffer.alloc(5);
  tail.writeUInt32BE(index, 0);
  tail[4] = last ? 1 : 0;
  return Buffer.concat([header, Buffer.from([0]), Buffer.from(boundName(name), 'utf8'), Buffer.from([0]), Buffer.from(compression, 'ascii'), Buffer.from([0]), tail]);
}

function chunkNonce(prefix: Buffer, index: number): Buffer {
  const n = Buffer.alloc(PREFIX_LENGTH + 4);
  prefix.copy(n, 0);
  n.writeUInt32BE(index, PREFIX_LENGTH);
  return n;
}

/** `src` (the compressed bytes) sealed in chunks of `chunkSize` plaintext bytes with the keyring's current key. */
export async function* sealStream(keyring: Keyring, name: string, compression: Compression, src: AsyncIterable<Buffer>, chunkSize = DEFAULT_CHUNK): AsyncGenerator<Buffer> {
  if (!(Number.isInteger(chunkSize) && chunkSize >= MIN_CHUNK && chunkSize <= MAX_CHUNK)) throw new StorageError(`chunk size must be ${MIN_CHUNK}-${MAX_CHUNK} bytes`, false);
  const keyId = keyring.currentId;
  const key = keyring.keyFor(keyId)!;
  const idBytes = Buffer.from(keyId, 'latin1');
  const prefix = crypto().randomBytes(PREFIX_LENGTH);
  const size = Buffer.alloc(4);
  size.writeUInt32BE(chunkSize, 0);
  const header = Buffer.concat([SEALED_MAGIC, Buffer.from([STREAM_VERSION, ALG_AES_256_GCM, idBytes.length]), idBytes, prefix, size]);
  yield header;
  const seal = (plain: Buffer, index: number, last: boolean): Buffer => {
    if (index > 0xffffffff) throw new StorageError(`"${name}" is too large to seal in one stream`, false);
    const cipher = crypto().createCipheriv('aes-256-gcm', key, chunkNonce(prefix, index), { authTagLength: TAG_LENGTH });
    cipher.setAAD(chunkAad(header, name, compression, index, last));
    return Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
  };
  let index = 0;
  let pending: Buffer | undefined;
  for await (const piece of rechunk(src, chunkSize)) {
    if (pending) yield seal(pending, index++, false);
    pending = piece;
  }
  yield seal(pending ?? Buffer.alloc(0), index, true);
}

/** Reads exact byte counts from an async source, holding no more than asked for plus one piece. */
class ByteReader {
  private readonly it: AsyncIterator<Buffer>;
  private parts: Buffer[] = [];
  private held = 0;
  private ended = false;

  constructor(src: AsyncIterable<Buffer>) {
    this.it = src[Symbol.asyncIterator]();
  }

  /** Whether `n` bytes are held (false: the source ended first). */
  async fill(n: number): Promise<boolean> {
    while (this.held < n && !this.ended) {
      const r = await this.it.next();
      if (r.done) this.ended = true;
      else if (r.value.length > 0) {
        this.parts.push(r.value);
        this.held += r.value.length;
      }
    }
    return this.held >= n;
  }

  get available(): number {
    return this.held;
  }

  /** Let the source go (a read given up early releases its file or connection). */
  async close(): Promise<void> {
    if (!this.ended) await this.it.return?.();
  }

  take(n: number): Buffer {
    const all = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.held);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.parts = rest.length > 0 ? [rest] : [];
    this.held = rest.length;
    return out;
  }
}

/**
 * The plaintext (compressed bytes) of a sealed stream, chunk by chunk, each yielded only once it
 * authenticated. KeyUnavailableError when the key is not given, IntegrityError for anything
 * changed, cut, reordered or renamed.
 */
export async function* unsealStream(keyring: Keyring | undefined, name: string, compression: Compression, src: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const bad = (why: string): IntegrityError => new IntegrityError(name, why);
  const r = new ByteReader(src);
  try {
    if (!(await r.fill(11))) throw bad('its encryption header is invalid (truncated)');
    const head = r.take(11);
    if (!isSealed(head)) throw bad('its encryption header is invalid (no magic)');
    if (head[8] !== STREAM_VERSION) throw bad(`its encryption header is invalid (format version ${head[8]}, a stream is version ${STREAM_VERSION})`);
    if (head[9] !== ALG_AES_256_GCM) throw bad(`its encryption header is invalid (unknown algorithm ${head[9]})`);
    const idLen = head[10]!;
    if (idLen < 1 || idLen > 64 || !(await r.fill(idLen + PREFIX_LENGTH + 4))) throw bad('its encryption header is invalid (truncated)');
    const rest = r.take(idLen + PREFIX_LENGTH + 4);
    const header = Buffer.concat([head, rest]);
    const keyId = rest.subarray(0, idLen).toString('latin1');
    const prefix = rest.subarray(idLen, idLen + PREFIX_LENGTH);
    const chunkSize = rest.readUInt32BE(idLen + PREFIX_LENGTH);
    if (chunkSize < MIN_CHUNK || chunkSize > MAX_CHUNK) throw bad('its encryption header is invalid (chunk size)');
    const key = keyring?.keyFor(keyId);
    if (!key) throw new KeyUnavailableError(name, keyId, keyring?.ids);
    const whole = chunkSize + TAG_LENGTH;
    for (let index = 0; ; index++) {
      // One byte past a whole chunk says whether it is the last one.
      const more = await r.fill(whole + 1);
      const n = more ? whole : r.available;
      if (n < TAG_LENGTH) throw bad(`it ends inside chunk ${index} (cut short)`);
      const sealed = r.take(n);
      const decipher = crypto().createDecipheriv('aes-256-gcm', key, chunkNonce(prefix, index), { authTagLength: TAG_LENGTH });
      decipher.setAAD(chunkAad(header, name, compression, index, !more));
      decipher.setAuthTag(sealed.subarray(n - TAG_LENGTH));
      let plain: Buffer;
      try {
        plain = Buffer.concat([decipher.update(sealed.subarray(0, n - TAG_LENGTH)), decipher.final()]);
      } catch {
        throw bad(`chunk ${index} fails authentication with key "${keyId}" (changed, cut short, reordered, or stored under another name than it was written for)`);
      }
      if (plain.length > 0) yield plain;
      if (!more) return;
    }
  } finally {
    await r.close();
  }
}
