// Client-side encryption of archived objects: AES-256-GCM (node:crypto) over the bytes a backend
// stores (after compression), with the key id and nonce in a small header inside the object, so
// every backend (directory, S3, memory) keeps the same format and an object carries all it needs
// besides the key. Guarantees: a fresh random 96-bit nonce per object; the header, the object's
// name and its compression are authenticated, so a byte changed anywhere, an object copied or
// renamed to another name, or its compression label changed fails as IntegrityError; an object
// encrypted with a key that is not given is KeyUnavailableError, never served. Key material is
// never part of any message, JSON or inspect output.
//
// Stored object format (version 1), all integers single bytes:
//
//   offset  size  field
//   0       8     magic 89 57 53 45 4E 43 0D 0A ("\x89WSENC\r\n": no WAL segment, gzip or zstd
//                 stream or history/backup text starts with it)
//   8       1     format version = 1
//   9       1     algorithm = 1 (AES-256-GCM, 16-byte tag)
//   10      1     key id length L (1-64)
//   11      L     key id (ASCII: letters, digits, ".", "_", "-")
//   11+L    12    nonce (random per object)
//   23+L    n     ciphertext of the payload (the compressed bytes; n = their length)
//   23+L+n  16    GCM authentication tag
//
// Additional authenticated data: the header (bytes 0 .. 23+L) || 0x00 || the object's name in
// UTF-8 || 0x00 || its compression ("none", "gzip" or "zstd"). The name is the WAL file name; a
// quarantine copy (quarantine/<name>.<time>Z) is bound to <name>, the name it was written for.
//
// Keys (loadKeyring): 32 bytes, as 64 hexadecimal digits or base64 (standard or URL-safe). A key
// file holds one key a line, "id=KEY" or "KEY" alone, "#" comment lines and blank lines ignored;
// the first key encrypts new objects, every key decrypts (rotation: put the new key first, keep
// the old ones below while objects written with them remain). A key given without an id gets
// one derived from it: the first 8 hex digits of SHA-256("walstream key id\0" || key).
import { open } from 'node:fs/promises';
import { IntegrityError, KeyUnavailableError, QUARANTINE_PREFIX, StorageError, type Compression } from './types.js';
import { builtin, util } from '../util/lazy.js';

const { inspect } = util;

/** node:crypto, loaded at the first key or sealed object (a call that meets neither never loads it). */
const crypto = builtin<typeof import('node:crypto')>('node:crypto');

export const SEALED_MAGIC = Buffer.from([0x89, 0x57, 0x53, 0x45, 0x4e, 0x43, 0x0d, 0x0a]);
export const SEALED_VERSION = 1;
export const ALG_AES_256_GCM = 1;
export const NONCE_LENGTH = 12;
export const TAG_LENGTH = 16;
export const KEY_LENGTH = 32;
const KEY_ID_RE = /^[A-Za-z0-9._-]{1,64}$/;
/** Largest key file read (a few hundred keys). */
const MAX_KEY_FILE_BYTES = 64 * 1024;

export interface EncryptionKeyInfo {
  id: string;
}

/**
 * The keys an archive is read and written with. The first encrypts, all decrypt. Holds the key
 * bytes in private fields: logging, JSON or inspecting a Keyring shows the ids only.
 */
export class Keyring {
  readonly #keys = new Map<string, Buffer>();
  readonly #current: string;
  /** Where the keys came from (a file path or the variable's name), for messages. */
  readonly source: string;
  /**
   * Refuse objects stored unencrypted (IntegrityError), so that whoever can write to the archive
   * cannot slip in plain WAL in place of an encrypted object. Off by default: an archive may hold
   * plain objects from before encryption was turned on.
   */
  readonly requireEncrypted: boolean;

  constructor(keys: readonly { id: string; key: Buffer }[], source: string, opts: { requireEncrypted?: boolean } = {}) {
    if (keys.length === 0) throw new StorageError(`${source}: no encryption key`, false);
    for (const k of keys) {
      if (!KEY_ID_RE.test(k.id)) throw new StorageError(`${source}: invalid key id (1-64 letters, digits, ".", "_" or "-")`, false);
      if (k.key.length !== KEY_LENGTH) throw new StorageError(`${source}: key "${k.id}" is not ${KEY_LENGTH} bytes`, false);
      if (this.#keys.has(k.id)) throw new StorageError(`${source}: key id "${k.id}" appears twice`, false);
      this.#keys.set(k.id, Buffer.from(k.key));
    }
    this.#current = keys[0]!.id;
    this.source = source;
    this.requireEncrypted = opts.requireEncrypted ?? false;
  }

  /** The same keys, refusing unencrypted objects when `requireEncrypted`. */
  withRequireEncrypted(requireEncrypted: boolean): Keyring {
    return new Keyring(
      this.ids.map((id) => ({ id, key: this.#keys.get(id)! })),
      this.source,
      { requireEncrypted },
    );
  }

  /** The id of the key new objects are encrypted with. */
  get currentId(): string {
    return this.#current;
  }

  get ids(): string[] {
    return [...this.#keys.keys()];
  }

  has(id: string): boolean {
    return this.#keys.has(id);
  }

  /** @internal the key bytes, for seal/unseal only. */
  keyFor(id: string): Buffer | undefined {
    return this.#keys.get(id);
  }

  toJSON(): object {
    return { source: this.source, ids: this.ids, current: this.#current, requireEncrypted: this.requireEncrypted };
  }

  [inspect.custom](): string {
    return `Keyring(${this.source}: ${this.ids.join(', ')}; encrypts with ${this.#current})`;
  }
}

/** The name an object's encryption is bound to: a quarantine copy's original name. */
export function boundName(name: string): string {
  if (!name.startsWith(QUARANTINE_PREFIX)) return name;
  return name.slice(QUARANTINE_PREFIX.length).replace(/\.\d{8}T\d{6}(?:\.\d+)?Z$/, '');
}

function aad(header: Buffer, name: string, compression: Compression): Buffer {
  return Buffer.concat([header, Buffer.from([0]), Buffer.from(boundName(name), 'utf8'), Buffer.from([0]), Buffer.from(compression, 'ascii')]);
}

/** Whether stored bytes are an encrypted object (they begin with the magic). */
export function isSealed(stored: Buffer): boolean {
  return stored.length >= SEALED_MAGIC.length && stored.subarray(0, SEALED_MAGIC.length).equals(SEALED_MAGIC);
}

interface ParsedHeader {
  keyId: string;
  header: Buffer;
  nonce: Buffer;
}

/** Parse the header of a sealed object; IntegrityError naming the object when it is malformed. */
export function sealedHeader(name: string, stored: Buffer): ParsedHeader {
  const bad = (why: string): IntegrityError => new IntegrityError(name, `its encryption header is invalid (${why})`);
  if (!isSealed(stored)) throw bad('no magic');
  if (stored.length < 11) throw bad('truncated');
  const version = stored[8]!;
  const alg = stored[9]!;
  const idLen = stored[10]!;
  if (version !== SEALED_VERSION) throw bad(`format version ${version}, this walstream reads ${SEALED_VERSION}`);
  if (alg !== ALG_AES_256_GCM) throw bad(`unknown algorithm ${alg}`);
  if (idLen < 1 || idLen > 64) throw bad('key id length');
  const headerLen = 11 + idLen + NONCE_LENGTH;
  if (stored.length < headerLen + TAG_LENGTH) throw bad('truncated');
  const keyId = stored.subarray(11, 11 + idLen).toString('latin1');
  if (!KEY_ID_RE.test(keyId)) throw bad('key id characters');
  return { keyId, header: stored.subarray(0, headerLen), nonce: stored.subarray(11 + idLen, headerLen) };
}

/** Encrypt `payload` (the compressed bytes) for `name` with the keyring's current key. */
export function seal(keyring: Keyring, name: string, compression: Compression, payload: Buffer, nonce: Buffer = crypto().randomBytes(NONCE_LENGTH)): Buffer {
  const keyId = keyring.currentId;
  const key = keyring.keyFor(keyId)!;
  if (nonce.length !== NONCE_LENGTH) throw new Error('nonce must be 12 bytes');
  const idBytes = Buffer.from(keyId, 'latin1');
  const header = Buffer.concat([SEALED_MAGIC, Buffer.from([SEALED_VERSION, ALG_AES_256_GCM, idBytes.length]), idBytes, nonce]);
  const cipher = crypto().createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_LENGTH });
  cipher.setAAD(aad(header, name, compression));
  const body = Buffer.concat([cipher.update(payload), cipher.final()]);
  return Buffer.concat([header, body, cipher.getAuthTag()]);
}

/**
 * The payload of a sealed object, authenticated. KeyUnavailableError when the keyring lacks its
 * key (or there is none), IntegrityError when it fails authentication.
 */
export function unseal(keyring: Keyring | undefined, name: string, compression: Compression, stored: Buffer): { payload: Buffer; keyId: string } {
  const h = sealedHeader(name, stored);
  const key = keyring?.keyFor(h.keyId);
  if (!key) throw new KeyUnavailableError(name, h.keyId, keyring?.ids);
  const decipher = crypto().createDecipheriv('aes-256-gcm', key, h.nonce, { authTagLength: TAG_LENGTH });
  decipher.setAAD(aad(h.header, name, compression));
  decipher.setAuthTag(stored.subarray(stored.length - TAG_LENGTH));
  try {
    const payload = Buffer.concat([decipher.update(stored.subarray(h.header.length, stored.length - TAG_LENGTH)), decipher.final()]);
    return { payload, keyId: h.keyId };
  } catch {
    throw new IntegrityError(name, `it fails authentication with key "${h.keyId}" (changed, damaged, or stored under another name than it was written for)`);
  }
}

/** What a backend stores for `payload`: sealed with the keyring's current key, or as is without one. */
export function encodeStored(keyring: Keyring | undefined, name: string, compression: Compression, payload: Buffer): Buffer {
  return keyring ? seal(keyring, name, compression, payload) : payload;
}

/**
 * What a backend decompresses for `stored`: unsealed when sealed, else the bytes as stored, or
 * IntegrityError when `refusePlain` (the caller decides which names must be encrypted: see
 * common.ts plainRefused).
 */
export function decodeStored(keyring: Keyring | undefined, name: string, compression: Compression, stored: Buffer, refusePlain: boolean): { payload: Buffer; keyId: string | undefined } {
  if (!isSealed(stored)) {
    if (refusePlain) throw new IntegrityError(name, 'it is not encrypted, and only encrypted objects are accepted (--encryption-required)');
    return { payload: stored, keyId: undefined };
  }
  return unseal(keyring, name, compression, stored);
}

// --- keys ---

/** Derived id of a key given without one. */
export function derivedKeyId(key: Buffer): string {
  return crypto().createHash('sha256').update('walstream key id\0').update(key).digest('hex').slice(0, 8);
}

/** Decode one key's text; undefined when it is not 32 bytes of hex or base64. Never echoes it. */
function decodeKey(text: string): Buffer | undefined {
  if (/^[0-9A-Fa-f]{64}$/.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/]{43}=?$/.test(text) || /^[A-Za-z0-9_-]{43}=?$/.test(text)) {
    const b = Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
    return b.length === KEY_LENGTH ? b : undefined;
  }
  return undefined;
}

/** One "id=KEY" or "KEY" entry; `where` names it in errors (which never contain the key). */
function parseEntry(text: string, where: string): { id: string; key: Buffer } {
  const eq = text.indexOf('=');
  // Base64 may end in "=": an "=" that ends the text is padding, not a separator.
  const hasId = eq > 0 && eq < text.length - 1 && !/^=+$/.test(text.slice(eq));
  const id = hasId ? text.slice(0, eq).trim() : undefined;
  const keyText = (hasId ? text.slice(eq + 1) : text).trim();
  if (id !== undefined && !KEY_ID_RE.test(id)) throw new StorageError(`${where}: the key id (before "=") must be 1-64 letters, digits, ".", "_" or "-"`, false);
  const key = decodeKey(keyText);
  if (!key) {
    throw new StorageError(`${where}: ${id !== undefined ? `the key "${id}"` : 'the key'} is not ${KEY_LENGTH} bytes written as 64 hexadecimal digits or base64 (e.g. from "openssl rand -base64 32")`, false);
  }
  return { id: id ?? derivedKeyId(key), key };
}

/** Parse a key file's text (see the format above). */
export function parseKeyFile(text: string, source: string): Keyring {
  const keys: { id: string; key: Buffer }[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    keys.push(parseEntry(line, `${source}, line ${i + 1}`));
  }
  if (keys.length === 0) throw new StorageError(`${source}: holds no encryption key (one "id=KEY" a line; KEY = 32 bytes in hex or base64)`, false);
  return new Keyring(keys, source);
}

/** Parse the WALSTREAM_ENCRYPTION_KEY value: one "id=KEY" or "KEY". */
export function parseKeyVariable(value: string, name = 'WALSTREAM_ENCRYPTION_KEY'): Keyring {
  const text = value.trim();
  if (text === '') throw new StorageError(`${name} is empty`, false);
  return new Keyring([parseEntry(text, name)], name);
}

/**
 * Read a key file, refusing one that other users could read or change (as ssh refuses a private
 * key file with group or other permissions).
 */
export async function readKeyFile(path: string): Promise<Keyring> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new StorageError(`cannot read encryption key file ${path}: ${e.code ?? e.message}`, false);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new StorageError(`encryption key file ${path} is not a regular file`, false);
    if ((st.mode & 0o077) !== 0) {
      throw new StorageError(`encryption key file ${path} is accessible by group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); use chmod 600`, false);
    }
    if (st.size > MAX_KEY_FILE_BYTES) throw new StorageError(`encryption key file ${path} is larger than ${MAX_KEY_FILE_BYTES} bytes: not a key file`, false);
    return parseKeyFile(await fh.readFile('utf8'), `encryption key file ${path}`);
  } finally {
    await fh.close();
  }
}

export interface KeySources {
  /** --encryption-key-file (or WALSTREAM_ENCRYPTION_KEY_FILE). */
  keyFile?: string;
  /** The WALSTREAM_ENCRYPTION_KEY value. */
  keyVariable?: string;
  /** --encryption-required: refuse unencrypted objects (needs a key). */
  requireEncrypted?: boolean;
}

/** The keyring the sources give, undefined when none is given. Both at once is an error. */
export async function loadKeyring(src: KeySources): Promise<Keyring | undefined> {
  const file = src.keyFile !== undefined && src.keyFile !== '' ? src.keyFile : undefined;
  const variable = src.keyVariable !== undefined && src.keyVariable !== '' ? src.keyVariable : undefined;
  if (file !== undefined && variable !== undefined) {
    throw new StorageError('give the encryption key either in a file (--encryption-key-file) or in WALSTREAM_ENCRYPTION_KEY, not both', false);
  }
  const required = src.requireEncrypted === true;
  if (file !== undefined) return (await readKeyFile(file)).withRequireEncrypted(required);
  if (variable !== undefined) return parseKeyVariable(variable).withRequireEncrypted(required);
  if (required) throw new StorageError('--encryption-required needs an encryption key (--encryption-key-file or WALSTREAM_ENCRYPTION_KEY)', false);
  return undefined;
}
