// TLS for a replication connection as libpq sets it up (fe-secure-openssl.c initialize_SSL,
// pgtls_verify_peer_name_matches_certificate_guts; fe-secure-common.c): which files are read
// (sslrootcert, sslcert, sslkey, sslcrl, else ~/.postgresql/root.crt, postgresql.crt,
// postgresql.key, root.crl), when the server certificate is verified (whenever a root
// certificate is there, in every sslmode; verify-ca and verify-full require one), the host name
// check of verify-full, and the refusal of a private key that others can read.
// Guarantees: never verifies less than libpq would; every failure is one line naming the file.
import { readFileSync, statSync, type Stats } from 'node:fs';
import { homedir } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { ConnectionOptions as TlsConnectionOptions, PeerCertificate } from 'node:tls';

export const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;
export type SslMode = (typeof SSL_MODES)[number];

/** The ssl* settings of a connection, as given (keywords or PG* variables); files are read at connect time. */
export interface SslSettings {
  mode: SslMode;
  /** sslrootcert: a file, or "system" for the platform's trusted roots; default ~/.postgresql/root.crt. */
  rootCert?: string;
  /** sslcert; default ~/.postgresql/postgresql.crt (used only if it exists). */
  cert?: string;
  /** sslkey; default ~/.postgresql/postgresql.key. */
  key?: string;
  /** sslcrl; default ~/.postgresql/root.crl (used only if it exists). */
  crl?: string;
  /** sslpassword: the passphrase of an encrypted private key. */
  keyPassword?: string;
}

/** A TLS setup problem found before or during the handshake: reported as is, never retried. */
export class TlsSetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TlsSetupError';
  }
}

/** The server certificate does not name the host (sslmode=verify-full). */
export class PeerNameError extends Error {
  readonly code = 'WALSTREAM_PEER_NAME';
  constructor(message: string) {
    super(message);
    this.name = 'PeerNameError';
  }
}

const ROOT_CERT_FILE = '.postgresql/root.crt';
const ROOT_CRL_FILE = '.postgresql/root.crl';
const USER_CERT_FILE = '.postgresql/postgresql.crt';
const USER_KEY_FILE = '.postgresql/postgresql.key';

function home(): string | undefined {
  try {
    // HOME first, then the password database: what libpq's pqGetHomeDirectory does.
    const h = homedir();
    return h === '' ? undefined : h;
  } catch {
    return undefined;
  }
}

function statOrError(path: string): Stats | NodeJS.ErrnoException {
  try {
    return statSync(path);
  } catch (err) {
    return err as NodeJS.ErrnoException;
  }
}

function readOrThrow(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new TlsSetupError(`could not read ${what} "${path}": ${(err as Error).message}`);
  }
}

/**
 * Why a private key file must not be used, or undefined if it may: libpq refuses a key that is
 * not a regular file, and one with group or world access, except that a root-owned key may be
 * group-readable (0640) so that a system-wide key can be shared through a group.
 */
export function keyFileProblem(path: string, st: Pick<Stats, 'mode' | 'uid' | 'isFile'>): string | undefined {
  if (!st.isFile()) return `private key file "${path}" is not a regular file`;
  const forbidden = st.uid === 0 ? 0o037 : 0o077;
  if ((st.mode & forbidden) !== 0) {
    return `private key file "${path}" has group or world access; file must have permissions u=rw (0600) or less ` + 'if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root';
  }
  return undefined;
}

/**
 * The Node TLS options for one SSL attempt, reading the certificate files now. `verifyHost` is
 * libpq's `host` (not `hostaddr`): the name verify-full checks and SNI carries.
 */
export function buildTlsOptions(s: SslSettings, verifyHost: string | undefined): TlsConnectionOptions {
  const h = home();
  const opts: TlsConnectionOptions = {};

  // Root certificate: verification happens whenever one is there, whatever the sslmode.
  const rootPath = s.rootCert || (h ? join(h, ROOT_CERT_FILE) : '');
  let haveRoot = false;
  if (rootPath === 'system') {
    // Node's trusted roots; the connection is verified like any other.
    haveRoot = true;
  } else if (rootPath !== '' && !(statOrError(rootPath) instanceof Error)) {
    opts.ca = readOrThrow(rootPath, 'root certificate file');
    haveRoot = true;
    const crlPath = s.crl || (h ? join(h, ROOT_CRL_FILE) : '');
    // A missing CRL is silently ignored, as in libpq.
    if (crlPath !== '' && !(statOrError(crlPath) instanceof Error)) opts.crl = readOrThrow(crlPath, 'SSL certificate revocation list file');
  } else if (s.mode === 'verify-ca' || s.mode === 'verify-full') {
    const where = rootPath === '' ? 'could not get home directory to locate root certificate file' : `root certificate file "${rootPath}" does not exist`;
    throw new TlsSetupError(`${where}: either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification`);
  }
  opts.rejectUnauthorized = haveRoot;

  // Client certificate and key: used only if the certificate file is there.
  const certPath = s.cert || (h ? join(h, USER_CERT_FILE) : '');
  if (certPath !== '') {
    const st = statOrError(certPath);
    if (st instanceof Error) {
      if (st.code !== 'ENOENT' && st.code !== 'ENOTDIR') throw new TlsSetupError(`could not open certificate file "${certPath}": ${st.message}`);
    } else {
      opts.cert = readOrThrow(certPath, 'certificate file');
      const keyPath = s.key || (h ? join(h, USER_KEY_FILE) : '');
      if (keyPath === '') throw new TlsSetupError('certificate present, but could not get home directory to locate private key file');
      const kst = statOrError(keyPath);
      if (kst instanceof Error) {
        if (kst.code === 'ENOENT') throw new TlsSetupError(`certificate present, but not private key file "${keyPath}"`);
        throw new TlsSetupError(`could not stat private key file "${keyPath}": ${kst.message}`);
      }
      const problem = keyFileProblem(keyPath, kst);
      if (problem) throw new TlsSetupError(problem);
      opts.key = readOrThrow(keyPath, 'private key file');
      if (s.keyPassword) opts.passphrase = s.keyPassword;
    }
  }

  // Server Name Indication carries the host name, never an address (RFC 6066).
  if (verifyHost && isIP(verifyHost) === 0 && !verifyHost.startsWith('/')) opts.servername = verifyHost;
  opts.checkServerIdentity = s.mode === 'verify-full' ? (_name: string, cert: PeerCertificate) => verifyPeerName(verifyHost, cert) : () => undefined;
  return opts;
}

/** Split Node's subjectaltname text ("DNS:a, IP Address:127.0.0.1", values JSON-quoted when odd). */
export function parseSubjectAltNames(text: string | undefined): { type: string; value: string }[] {
  const out: { type: string; value: string }[] = [];
  if (!text) return out;
  const re = /\s*([A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)/y;
  let m: RegExpExecArray | null;
  while (re.lastIndex < text.length && (m = re.exec(text)) !== null) {
    let value = m[2]!;
    if (value.startsWith('"')) {
      try {
        value = JSON.parse(value) as string;
      } catch {
        // keep the quoted text: it will match nothing
      }
    }
    out.push({ type: m[1]!.trim(), value });
    if (m[0] === '') break;
  }
  return out;
}

/** libpq's wildcard rule: "*." only as the whole first label, matching exactly one label. */
function wildcardMatch(pattern: string, host: string): boolean {
  if (pattern.length < 3 || !pattern.startsWith('*.')) return false;
  if (pattern.length > host.length) return false;
  const suffix = pattern.slice(1).toLowerCase();
  if (!host.toLowerCase().endsWith(suffix)) return false;
  const firstDot = host.indexOf('.');
  return firstDot >= host.length - suffix.length;
}

function nameMatches(name: string, host: string): boolean {
  if (name.includes('\0')) throw new PeerNameError("SSL certificate's name contains embedded null");
  return name.toLowerCase() === host.toLowerCase() || wildcardMatch(name, host);
}

/** An IPv4 or IPv6 address as bytes (undefined when it is not one). */
export function ipBytes(text: string): Buffer | undefined {
  const v = isIP(text);
  if (v === 4) return Buffer.from(text.split('.').map(Number));
  if (v !== 6) return undefined;
  let s = text;
  const zone = s.indexOf('%');
  if (zone >= 0) s = s.slice(0, zone);
  // A trailing dotted IPv4 part becomes two groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const b = v4[1]!.split('.').map(Number);
    s = `${s.slice(0, -v4[1]!.length)}${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  if (groups.length !== 8) return undefined;
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => {
    out.writeUInt16BE(parseInt(g, 16), i * 2);
  });
  return out;
}

/**
 * verify-full: does the server certificate name `host`? libpq's rules: subjectAltName entries of
 * the host's kind (DNS name or IP address) decide; the Common Name is checked only when there
 * is no entry of that kind. Returns the error to fail the handshake with, or undefined.
 */
export function verifyPeerName(host: string | undefined, cert: Pick<PeerCertificate, 'subject' | 'subjectaltname'>): Error | undefined {
  if (!host) return new PeerNameError('host name must be specified for a verified SSL connection');
  const hostIp = ipBytes(host);
  const wantType = hostIp ? 'IP Address' : 'DNS';
  let checkCn = true;
  const examined: string[] = [];
  try {
    for (const san of parseSubjectAltNames(cert.subjectaltname)) {
      if (san.type === wantType) checkCn = false;
      if (san.type === 'DNS') {
        examined.push(san.value);
        if (nameMatches(san.value, host)) return undefined;
      } else if (san.type === 'IP Address') {
        examined.push(san.value);
        const certIp = ipBytes(san.value);
        if (!certIp) return new PeerNameError(`certificate contains IP address "${san.value}" that cannot be read`);
        if (hostIp && certIp.equals(hostIp)) return undefined;
      }
    }
    if (checkCn) {
      const cn = cert.subject?.CN as string | string[] | undefined;
      const first = Array.isArray(cn) ? cn[0] : cn;
      if (first !== undefined) {
        examined.push(first);
        if (nameMatches(first, host)) return undefined;
      }
    }
  } catch (err) {
    return err as Error;
  }
  if (examined.length === 0) return new PeerNameError("could not get server's host name from server certificate");
  const others = examined.length - 1;
  const and = others > 0 ? ` (and ${others} other name${others > 1 ? 's' : ''})` : '';
  return new PeerNameError(`server certificate for "${examined[0]}"${and} does not match host name "${host}"`);
}

/** Node's certificate-verification error codes (X509_V_ERR_* names). */
const VERIFY_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_CRL',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECRYPT_CRL_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CRL_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'CRL_NOT_YET_VALID',
  'CRL_HAS_EXPIRED',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'ERROR_IN_CRL_LAST_UPDATE_FIELD',
  'ERROR_IN_CRL_NEXT_UPDATE_FIELD',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_CHAIN_TOO_LONG',
  'CERT_REVOKED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'HOSTNAME_MISMATCH',
]);

/** Did this error come from TLS (handshake, certificates, keys) rather than from the server or the network? */
export function isTlsError(err: unknown): boolean {
  if (err instanceof TlsSetupError || err instanceof PeerNameError) return true;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return false;
  return VERIFY_CODES.has(code) || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || code.startsWith('ERR_OSSL_');
}

/** One line for a TLS failure, worded like libpq's. */
export function describeTlsError(err: Error): string {
  if (err instanceof TlsSetupError || err instanceof PeerNameError) return err.message;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && VERIFY_CODES.has(code)) return `SSL error: certificate verify failed: ${err.message}`;
  return `SSL error: ${err.message}`;
}
