// Password authentication on the server side, as PostgreSQL does it (auth-scram.c, auth.c
// CheckMD5Auth, crypt.c): SCRAM-SHA-256 (RFC 5802 / RFC 7677), with channel binding
// tls-server-end-point over TLS (SCRAM-SHA-256-PLUS), and md5 for clients that know nothing else.
// Secrets are what pg_authid.rolpassword holds (a SCRAM verifier "SCRAM-SHA-256$iter:salt$StoredKey:ServerKey",
// or "md5" + md5(password || user)), or a plain password. A user without a secret goes through a
// mock exchange and fails like a wrong password, so a client cannot probe which users exist.
// Pure but for randomness and readPasswordFile.
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual, X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';

export const SCRAM_MECHANISM = 'SCRAM-SHA-256';
export const SCRAM_PLUS_MECHANISM = 'SCRAM-SHA-256-PLUS';
/** scram-common.h SCRAM_SHA_256_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN, SCRAM_RAW_NONCE_LEN. */
export const SCRAM_DEFAULT_ITERATIONS = 4096;
const SCRAM_SALT_LEN = 16;
const SCRAM_NONCE_LEN = 18;
const KEY_LEN = 32;

/** An authentication failure: FATAL with this SQLSTATE and message, then the connection closes. */
export class AuthError extends Error {
  constructor(
    /** SQLSTATE: 28P01 wrong password, 28000 refused, 08P01 protocol violation, 57P03 cannot connect now. */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'AuthError';
  }
}

export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

export type Secret = { kind: 'scram'; verifier: ScramVerifier } | { kind: 'md5'; hash: string } | { kind: 'plain'; password: string };

const VERIFIER_RE = /^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$/;
const MD5_RE = /^md5[0-9a-f]{32}$/;

export function parseScramVerifier(text: string): ScramVerifier | undefined {
  const m = VERIFIER_RE.exec(text);
  if (!m) return undefined;
  const iterations = Number(m[1]);
  const storedKey = Buffer.from(m[3]!, 'base64');
  const serverKey = Buffer.from(m[4]!, 'base64');
  if (!Number.isSafeInteger(iterations) || iterations < 1 || storedKey.length !== KEY_LEN || serverKey.length !== KEY_LEN) return undefined;
  return { iterations, salt: Buffer.from(m[2]!, 'base64'), storedKey, serverKey };
}

/** A secret as written in a password file or WALSTREAM_SERVE_PASSWORD: a verifier, an md5 hash or a password. */
export function parseSecret(text: string): Secret {
  if (text.startsWith('SCRAM-SHA-256$')) {
    const verifier = parseScramVerifier(text);
    if (!verifier) throw new Error('a SCRAM secret must look like SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (as pg_authid.rolpassword holds it)');
    return { kind: 'scram', verifier };
  }
  if (MD5_RE.test(text)) return { kind: 'md5', hash: text };
  if (text === '') throw new Error('an empty password is not accepted');
  return { kind: 'plain', password: text };
}

/**
 * SASLprep as PostgreSQL applies it to passwords (saslprep.c): ASCII passwords are used as they
 * are; others are normalized (non-ASCII spaces to spaces, characters mapped to nothing removed,
 * NFKC). pg_saslprep falls back to the raw bytes when a password has prohibited characters;
 * that fallback is not reproduced, so such passwords should be given as verifiers.
 */
export function saslprep(password: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: all of ASCII, its control characters included
  if (/^[\x00-\x7f]*$/.test(password)) return password;
  return (
    password
      .replace(/[\u00a0\u1680\u2000-\u200b\u202f\u205f\u3000]/g, ' ')
      // biome-ignore lint/suspicious/noMisleadingCharacterClass: the code points RFC 3454 B.1 maps to nothing, each on its own; U+034F is a combining mark on purpose
      .replace(/[\u00ad\u034f\u1806\u180b-\u180d\u200c\u200d\u2060\ufe00-\ufe0f\ufeff]/g, '')
      .normalize('NFKC')
  );
}

function hmac(key: Buffer, data: string | Buffer): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

/** The SCRAM verifier of a password (scram_build_secret), with a given or random salt. */
export function buildScramVerifier(password: string, iterations = SCRAM_DEFAULT_ITERATIONS, salt: Buffer = randomBytes(SCRAM_SALT_LEN)): ScramVerifier {
  const salted = pbkdf2Sync(Buffer.from(saslprep(password), 'utf8'), salt, iterations, KEY_LEN, 'sha256');
  return { iterations, salt, storedKey: sha256(hmac(salted, 'Client Key')), serverKey: hmac(salted, 'Server Key') };
}

export function formatScramVerifier(v: ScramVerifier): string {
  return `SCRAM-SHA-256$${v.iterations}:${v.salt.toString('base64')}$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`;
}

/** The md5 secret of a password (crypt.c encrypt_password): "md5" + md5(password || user). */
export function md5Secret(password: string, user: string): string {
  return `md5${createHash('md5')
    .update(password + user)
    .digest('hex')}`;
}

/**
 * Whether an md5 response from the client ("md5" + md5(md5hex(password || user) || salt)) fits
 * the secret (crypt.c md5_crypt_verify). Only md5 hashes and plain passwords can be checked.
 */
export function checkMd5Response(secret: Secret, user: string, salt: Buffer, response: string): boolean {
  let hash: string;
  if (secret.kind === 'md5') hash = secret.hash;
  else if (secret.kind === 'plain') hash = md5Secret(secret.password, user);
  else return false;
  const want = `md5${createHash('md5')
    .update(Buffer.concat([Buffer.from(hash.slice(3)), salt]))
    .digest('hex')}`;
  const got = Buffer.from(response);
  return got.length === want.length && timingSafeEqual(got, Buffer.from(want));
}

/**
 * tls-server-end-point channel binding data (RFC 5929): the hash of the server's certificate with
 * the hash of its signature algorithm, SHA-256 for MD5 and SHA-1 (be-secure-openssl.c
 * be_tls_get_certificate_hash).
 */
export function certificateEndPointHash(certPem: string | Buffer): Buffer {
  const cert = new X509Certificate(certPem);
  const alg = signatureHashOf(cert.raw);
  return createHash(alg).update(cert.raw).digest();
}

/** One DER element at `pos`: where its contents start and end. */
function derElement(der: Buffer, pos: number): { tag: number; start: number; end: number } {
  const tag = der[pos]!;
  let len = der[pos + 1]!;
  let start = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 4) throw new Error('unsupported DER length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[start + i]!;
    start += n;
  }
  if (start + len > der.length) throw new Error('truncated DER element');
  return { tag, start, end: start + len };
}

/** Hashes named by the OID of a certificate's signatureAlgorithm (hex of the OID's contents). */
const SIGNATURE_HASHES: Readonly<Record<string, string>> = {
  '2a864886f70d01010e': 'sha224', // sha224WithRSAEncryption
  '2a864886f70d01010c': 'sha384', // sha384WithRSAEncryption
  '2a864886f70d01010d': 'sha512', // sha512WithRSAEncryption
  '2a8648ce3d040301': 'sha224', // ecdsa-with-SHA224
  '2a8648ce3d040303': 'sha384', // ecdsa-with-SHA384
  '2a8648ce3d040304': 'sha512', // ecdsa-with-SHA512
};

/** RSASSA-PSS: the hash is in its parameters. */
const RSASSA_PSS = '2a864886f70d01010a';
/** Hash algorithm OIDs (2.16.840.1.101.3.4.2.n). */
const HASHES: Readonly<Record<string, string>> = {
  '608648016503040201': 'sha256',
  '608648016503040202': 'sha384',
  '608648016503040203': 'sha512',
  '608648016503040204': 'sha224',
};

/** The hash of a DER certificate's signatureAlgorithm (Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signature }); sha256 otherwise. */
function signatureHashOf(der: Buffer): string {
  try {
    const cert = derElement(der, 0);
    const tbs = derElement(der, cert.start);
    const algId = derElement(der, tbs.end);
    const oid = derElement(der, algId.start);
    if (oid.tag !== 0x06) return 'sha256';
    const name = der.toString('hex', oid.start, oid.end);
    if (name === RSASSA_PSS) {
      // RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1, ... }
      if (oid.end >= algId.end) return 'sha256';
      const params = derElement(der, oid.end);
      if (params.tag !== 0x30 || params.start >= params.end) return 'sha256';
      const first = derElement(der, params.start);
      if (first.tag !== 0xa0) return 'sha256'; // sha1 by default: MD5 and SHA-1 become SHA-256
      const hashAlg = derElement(der, first.start);
      const hashOid = derElement(der, hashAlg.start);
      return HASHES[der.toString('hex', hashOid.start, hashOid.end)] ?? 'sha256';
    }
    return SIGNATURE_HASHES[name] ?? 'sha256';
  } catch {
    return 'sha256';
  }
}

/** How a SASL exchange goes on: a message for the client, or success with the final message. */
export type ScramStep = { kind: 'continue'; data: string } | { kind: 'done'; data: string };

/** The salt of a mock exchange: the same for the same user (scram_mock_salt), from a per-server secret. */
function mockSalt(user: string, secret: Buffer): Buffer {
  return sha256(Buffer.concat([Buffer.from(user, 'utf8'), secret])).subarray(0, SCRAM_SALT_LEN);
}

function printable(s: string): boolean {
  return /^[\x21-\x2b\x2d-\x7e]+$/.test(s);
}

export interface ScramServerOptions {
  user: string;
  /** The user's secret; undefined for a user who does not exist or cannot do SCRAM (a mock exchange). */
  secret: Secret | undefined;
  /** The mechanism the client chose from those offered. */
  mechanism: string;
  /** Whether SCRAM-SHA-256-PLUS was offered (the connection is TLS). */
  plusOffered: boolean;
  /** tls-server-end-point data of this connection's certificate, for SCRAM-SHA-256-PLUS. */
  channelBinding?: Buffer;
  /** Per-server random bytes for mock salts. */
  mockSecret: Buffer;
  /** The server's nonce (tests); random otherwise. */
  serverNonce?: string;
}

/** The server side of one SCRAM-SHA-256 exchange (auth-scram.c scram_exchange). */
export class ScramServer {
  private state: 'init' | 'salt-sent' | 'done' = 'init';
  private readonly verifier: ScramVerifier;
  private readonly doomed: boolean;
  private gs2Header = '';
  private clientFirstBare = '';
  private serverFirst = '';
  private nonce = '';

  constructor(private readonly o: ScramServerOptions) {
    if (o.mechanism !== SCRAM_MECHANISM && !(o.mechanism === SCRAM_PLUS_MECHANISM && o.plusOffered)) {
      throw new AuthError('08P01', 'client selected an invalid SASL authentication mechanism');
    }
    let v: ScramVerifier | undefined;
    if (o.secret?.kind === 'scram') v = o.secret.verifier;
    else if (o.secret?.kind === 'plain') v = buildScramVerifier(o.secret.password, SCRAM_DEFAULT_ITERATIONS, mockSalt(`${o.user}\0plain`, o.mockSecret));
    this.doomed = v === undefined;
    this.verifier = v ?? { iterations: SCRAM_DEFAULT_ITERATIONS, salt: mockSalt(o.user, o.mockSecret), storedKey: randomBytes(KEY_LEN), serverKey: randomBytes(KEY_LEN) };
  }

  /** Feed the client's next message (the initial response, then the final one). */
  step(input: Buffer): ScramStep {
    if (input.length === 0) throw new AuthError('08P01', 'malformed SCRAM message (empty message)');
    if (input.includes(0)) throw new AuthError('08P01', 'malformed SCRAM message (length mismatch)');
    const text = input.toString('utf8');
    if (this.state === 'init') return this.clientFirst(text);
    if (this.state === 'salt-sent') return this.clientFinal(text);
    throw new AuthError('08P01', 'invalid SCRAM exchange state');
  }

  private clientFirst(text: string): ScramStep {
    const malformed = (why: string): AuthError => new AuthError('08P01', `malformed SCRAM message: ${why}`);
    // gs2-header: cbind-flag "," [authzid] ","
    let rest: string;
    let flag: string;
    if (text.startsWith('n,')) {
      flag = 'n';
      rest = text.slice(2);
    } else if (text.startsWith('y,')) {
      flag = 'y';
      rest = text.slice(2);
    } else if (text.startsWith('p=')) {
      const comma = text.indexOf(',');
      if (comma < 0) throw malformed('unexpected end of message');
      flag = text.slice(0, comma);
      rest = text.slice(comma + 1);
    } else {
      throw malformed('unexpected channel-binding flag');
    }
    if (this.o.mechanism === SCRAM_PLUS_MECHANISM) {
      if (flag !== 'p=tls-server-end-point') {
        throw new AuthError('08P01', flag.startsWith('p=') ? `unsupported SCRAM channel-binding type "${flag.slice(2).slice(0, 40)}"` : 'channel binding is required, but client does not support it');
      }
    } else if (flag.startsWith('p=')) {
      throw new AuthError('08P01', 'client requires SCRAM channel binding, but it was not negotiated');
    } else if (flag === 'y' && this.o.plusOffered) {
      // The client thinks the server cannot bind channels, but it offered PLUS: a downgrade.
      throw new AuthError('08P01', 'SCRAM channel binding negotiation error');
    }
    if (rest.startsWith('a=')) throw new AuthError('08P01', 'client uses authorization identity, but it is not supported');
    if (!rest.startsWith(',')) throw malformed('unexpected attribute in client-first-message');
    this.gs2Header = text.slice(0, text.length - rest.length + 1);
    this.clientFirstBare = rest.slice(1);
    const attrs = this.clientFirstBare.split(',');
    if (attrs[0]?.startsWith('m=')) throw new AuthError('08P01', 'client requires an unsupported SCRAM extension');
    if (!attrs[0]?.startsWith('n=')) throw malformed('expected attribute "n"');
    const r = attrs[1];
    if (!r?.startsWith('r=') || r.length <= 2) throw malformed('expected attribute "r"');
    const clientNonce = r.slice(2);
    if (!printable(clientNonce)) throw malformed('non-printable characters in SCRAM nonce');
    this.nonce = clientNonce + (this.o.serverNonce ?? randomBytes(SCRAM_NONCE_LEN).toString('base64'));
    this.serverFirst = `r=${this.nonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    this.state = 'salt-sent';
    return { kind: 'continue', data: this.serverFirst };
  }

  private clientFinal(text: string): ScramStep {
    const malformed = (why: string): AuthError => new AuthError('08P01', `malformed SCRAM message: ${why}`);
    const attrs = text.split(',');
    const c = attrs[0];
    if (!c?.startsWith('c=')) throw malformed('expected attribute "c"');
    const bindInput = this.o.mechanism === SCRAM_PLUS_MECHANISM ? Buffer.concat([Buffer.from(this.gs2Header), this.o.channelBinding ?? Buffer.alloc(0)]) : Buffer.from(this.gs2Header);
    if (c.slice(2) !== bindInput.toString('base64')) {
      throw new AuthError('08P01', this.o.mechanism === SCRAM_PLUS_MECHANISM ? 'SCRAM channel binding check failed' : 'unexpected SCRAM channel-binding attribute in client-final-message');
    }
    const r = attrs[1];
    if (!r?.startsWith('r=')) throw malformed('expected attribute "r"');
    if (r.slice(2) !== this.nonce) throw new AuthError('08P01', 'invalid SCRAM response (nonce mismatch)');
    const p = attrs[attrs.length - 1];
    if (!p?.startsWith('p=') || attrs.length < 3) throw malformed('could not find proof in client-final-message');
    const proof = Buffer.from(p.slice(2), 'base64');
    if (proof.length !== KEY_LEN || proof.toString('base64') !== p.slice(2)) throw malformed('malformed proof in client-final-message');
    const withoutProof = text.slice(0, text.length - p.length - 1);
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    const signature = hmac(this.verifier.storedKey, authMessage);
    const clientKey = Buffer.alloc(KEY_LEN);
    for (let i = 0; i < KEY_LEN; i++) clientKey[i] = proof[i]! ^ signature[i]!;
    // The proof is computed even in a mock exchange, so that timing does not tell users apart.
    const ok = timingSafeEqual(sha256(clientKey), this.verifier.storedKey);
    if (!ok || this.doomed) throw new AuthError('28P01', `password authentication failed for user "${this.o.user}"`);
    this.state = 'done';
    return { kind: 'done', data: `v=${hmac(this.verifier.serverKey, authMessage).toString('base64')}` };
  }
}

/** Who may connect: the secrets by user name, and "*" for any user. */
export class PasswordBook {
  constructor(private readonly secrets: ReadonlyMap<string, Secret>) {}

  /** The secret for `user` (its own line, else the "*" line), or undefined. */
  secretFor(user: string): Secret | undefined {
    return this.secrets.get(user) ?? this.secrets.get('*');
  }

  get size(): number {
    return this.secrets.size;
  }

  /**
   * Parse a password file: one "user:secret" a line (the first ":" separates them; "*" for any
   * user), "#" comments and blank lines ignored. `where` names the source in errors.
   */
  static parse(text: string, where: string): PasswordBook {
    const secrets = new Map<string, Secret>();
    text.split('\n').forEach((raw, i) => {
      const line = raw.replace(/\r$/, '');
      if (line.trim() === '' || line.trimStart().startsWith('#')) return;
      const colon = line.indexOf(':');
      if (colon <= 0) throw new Error(`${where} line ${i + 1}: expected "user:secret"`);
      const user = line.slice(0, colon);
      try {
        secrets.set(user, parseSecret(line.slice(colon + 1)));
      } catch (err) {
        throw new Error(`${where} line ${i + 1}: ${(err as Error).message}`);
      }
    });
    if (secrets.size === 0) throw new Error(`${where} names no user`);
    return new PasswordBook(secrets);
  }

  /** One secret for every user name (WALSTREAM_SERVE_PASSWORD). */
  static anyUser(secret: string): PasswordBook {
    return new PasswordBook(new Map([['*', parseSecret(secret)]]));
  }
}

/** Read a password file, refusing one that other users can read or write (like ~/.pgpass). */
export function readPasswordFile(path: string): PasswordBook {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    throw new Error(`cannot read password file "${path}": ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'it does not exist' : (err as Error).message}`);
  }
  if (!st.isFile()) throw new Error(`password file "${path}" is not a plain file`);
  if ((st.mode & 0o077) !== 0) throw new Error(`password file "${path}" has group or world access (mode ${(st.mode & 0o777).toString(8)}); permissions should be u=rw (0600) or less`);
  return PasswordBook.parse(readFileSync(path, 'utf8'), `password file "${path}"`);
}
