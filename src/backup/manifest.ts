// PostgreSQL's backup_manifest (13+; src/backend/backup/backup_manifest.c writes it,
// src/common/parse_manifest.c and src/bin/pg_verifybackup/ read it): parsed and its
// Manifest-Checksum verified (the SHA-256 of every byte up to and including the newline before its
// last line), and a verifier that checks the files of a backup's tar archives against it as their
// bytes go by: each file's size and checksum, then the files missing from the archives and those
// the manifest does not list. It skips what pg_verifybackup skips (backup_manifest, pg_wal,
// postgresql.auto.conf, recovery.signal, standby.signal: files or whole directories by those
// relative paths). Paths in the manifest are relative to the data directory; a tablespace's are
// pg_tblspc/<oid>/<path in its tar>.
import { createHash, type Hash } from 'node:crypto';
import { crc32c } from '../util/crc32c.js';
import type { TarEntry } from './tar.js';

export type ChecksumAlgorithm = 'NONE' | 'CRC32C' | 'SHA224' | 'SHA256' | 'SHA384' | 'SHA512';

const ALGORITHMS: ReadonlySet<string> = new Set(['NONE', 'CRC32C', 'SHA224', 'SHA256', 'SHA384', 'SHA512']);

/** Hex digits of each algorithm's checksum. */
const CHECKSUM_HEX_LENGTH: Record<ChecksumAlgorithm, number> = { NONE: 0, CRC32C: 8, SHA224: 56, SHA256: 64, SHA384: 96, SHA512: 128 };

export interface ManifestFile {
  /** Relative to the data directory ("base/1/1259", "pg_tblspc/16384/PG_15_202209061/..."). */
  path: string;
  size: number;
  /** As written: "2026-12-04 08:00:00 GMT". */
  lastModified: string | undefined;
  algorithm: ChecksumAlgorithm;
  /** Lower-case hex; undefined with NONE. */
  checksum: string | undefined;
}

export interface ManifestWalRange {
  timeline: number;
  startLsn: string;
  endLsn: string;
}

export interface BackupManifest {
  version: 1 | 2;
  /** Version 2 (PostgreSQL 17+): the database system identifier, as a decimal string. */
  systemIdentifier: string | undefined;
  files: ManifestFile[];
  walRanges: ManifestWalRange[];
  /** The manifest's own SHA-256 (hex), verified. */
  checksum: string;
}

export class ManifestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ManifestError';
  }
}

const LSN_RE = /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/;

/** Parse a backup_manifest and verify its Manifest-Checksum; ManifestError naming `label` when it is not a valid one. */
export function parseManifest(data: Buffer, label = 'backup_manifest'): BackupManifest {
  const bad = (why: string): ManifestError => new ManifestError(`${label} is not a valid backup manifest: ${why}`);
  // The checksum covers every byte up to and including the second-to-last newline (parse_manifest.c verify_manifest_checksum).
  const last = data.lastIndexOf(0x0a);
  if (last !== data.length - 1) throw bad('the last line is not newline-terminated');
  const penultimate = data.lastIndexOf(0x0a, last - 1);
  if (penultimate < 0) throw bad('expected at least 2 lines');
  const text = data.toString('utf8');
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw bad(`not JSON (${(err as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad('not a JSON object');
  const o = doc as Record<string, unknown>;
  const version = o['PostgreSQL-Backup-Manifest-Version'];
  if (version !== 1 && version !== 2) throw bad(`PostgreSQL-Backup-Manifest-Version ${JSON.stringify(version)} (versions 1 and 2 are read)`);
  const claimed = o['Manifest-Checksum'];
  if (typeof claimed !== 'string' || !/^[0-9a-fA-F]{64}$/.test(claimed)) throw bad('no valid Manifest-Checksum');
  const actual = createHash('sha256')
    .update(data.subarray(0, penultimate + 1))
    .digest('hex');
  if (actual !== claimed.toLowerCase()) throw new ManifestError(`${label} fails its Manifest-Checksum (damaged or altered)`);

  let systemIdentifier: string | undefined;
  if (version === 2) {
    // A uint64 is past what a JSON number keeps exactly: read its digits from the text.
    const m = /"System-Identifier"\s*:\s*([0-9]{1,20})\s*[,}]/.exec(text);
    if (!m) throw bad('version 2 without System-Identifier');
    systemIdentifier = BigInt(m[1]!).toString();
  }

  const filesIn = o['Files'];
  if (!Array.isArray(filesIn)) throw bad('no Files list');
  const files: ManifestFile[] = [];
  const seen = new Set<string>();
  for (const f of filesIn) {
    if (typeof f !== 'object' || f === null) throw bad('a Files entry is not an object');
    const e = f as Record<string, unknown>;
    let path: string;
    if (typeof e['Path'] === 'string') path = e['Path'];
    else if (typeof e['Encoded-Path'] === 'string' && /^(?:[0-9a-fA-F]{2})+$/.test(e['Encoded-Path'])) path = Buffer.from(e['Encoded-Path'], 'hex').toString('utf8');
    else throw bad('a Files entry has neither Path nor Encoded-Path');
    if (path === '' || path.startsWith('/') || path.split('/').some((p) => p === '..' || p === '.' || p === '')) throw bad(`file path ${JSON.stringify(path)} is not a plain relative path`);
    if (seen.has(path)) throw bad(`file ${JSON.stringify(path)} is listed twice`);
    seen.add(path);
    const size = e['Size'];
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw bad(`file ${JSON.stringify(path)} has no valid Size`);
    const algo = e['Checksum-Algorithm'] ?? 'NONE';
    if (typeof algo !== 'string' || !ALGORITHMS.has(algo)) throw bad(`file ${JSON.stringify(path)} has Checksum-Algorithm ${JSON.stringify(algo)}`);
    const algorithm = algo as ChecksumAlgorithm;
    let checksum: string | undefined;
    if (algorithm !== 'NONE') {
      const c = e['Checksum'];
      if (typeof c !== 'string' || c.length !== CHECKSUM_HEX_LENGTH[algorithm] || !/^[0-9a-fA-F]*$/.test(c)) throw bad(`file ${JSON.stringify(path)} has no valid ${algorithm} Checksum`);
      checksum = c.toLowerCase();
    }
    const lm = e['Last-Modified'];
    files.push({ path, size, lastModified: typeof lm === 'string' ? lm : undefined, algorithm, checksum });
  }

  const rangesIn = o['WAL-Ranges'];
  if (!Array.isArray(rangesIn)) throw bad('no WAL-Ranges list');
  const walRanges: ManifestWalRange[] = [];
  for (const r of rangesIn) {
    const e = (r ?? {}) as Record<string, unknown>;
    const tli = e['Timeline'];
    const s = e['Start-LSN'];
    const en = e['End-LSN'];
    if (typeof tli !== 'number' || !Number.isSafeInteger(tli) || tli < 1 || typeof s !== 'string' || !LSN_RE.test(s) || typeof en !== 'string' || !LSN_RE.test(en)) throw bad('a WAL-Ranges entry is invalid');
    walRanges.push({ timeline: tli, startLsn: s.toUpperCase(), endLsn: en.toUpperCase() });
  }
  return { version, systemIdentifier, files, walRanges, checksum: actual };
}

/** The files and directories pg_verifybackup skips (pg_verifybackup.c main): never reported missing, extra or wrong. */
export const VERIFY_IGNORED: readonly string[] = ['backup_manifest', 'pg_wal', 'postgresql.auto.conf', 'recovery.signal', 'standby.signal'];

/** The manifest path prefix of the files of tablespace `oid`'s tar. */
export function tablespacePrefix(oid: number): string {
  return `pg_tblspc/${oid}/`;
}

export type VerifyProblemKind = 'missing' | 'extra' | 'size' | 'checksum' | 'duplicate' | 'not-a-file';

export interface VerifyProblem {
  kind: VerifyProblemKind;
  path: string;
  /** One line: what is wrong with the file. */
  message: string;
}

/** The check of one file's bytes as they go by. */
export interface FileCheck {
  readonly path: string;
  update(chunk: Uint8Array): void;
  /** After the last byte: the problem found (also recorded by the verifier), or undefined when the file matches. */
  end(): VerifyProblem | undefined;
}

class Digest {
  private crc = 0;
  /** A CRC-32C computed elsewhere. */
  static ofCrc32c(crc: number): Digest {
    const d = new Digest('CRC32C');
    d.crc = crc;
    return d;
  }
  private readonly hash: Hash | undefined;
  constructor(readonly algorithm: ChecksumAlgorithm) {
    this.hash = algorithm === 'NONE' || algorithm === 'CRC32C' ? undefined : createHash(algorithm.toLowerCase());
  }
  update(b: Uint8Array): void {
    if (this.algorithm === 'CRC32C') this.crc = crc32c(b, this.crc);
    else this.hash?.update(b);
  }
  /** The hex forms the manifest may hold for this digest (a CRC-32C is written in the server's byte order: both are accepted). */
  forms(): string[] {
    if (this.algorithm === 'NONE') return [];
    if (this.algorithm === 'CRC32C') {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(this.crc >>> 0);
      const le = b.toString('hex');
      b.writeUInt32BE(this.crc >>> 0);
      return [le, b.toString('hex')];
    }
    return [this.hash!.digest('hex')];
  }
}

export interface VerifierOptions {
  /** Paths to skip besides VERIFY_IGNORED (pg_verifybackup --ignore). */
  ignore?: readonly string[];
  /** Check sizes and presence only (pg_verifybackup --skip-checksums). */
  skipChecksums?: boolean;
}

export interface VerifyResult {
  /** No problem at all. */
  ok: boolean;
  problems: VerifyProblem[];
  /** Files whose bytes were checked against the manifest. */
  checked: number;
  bytes: number;
}

/**
 * Checks a backup's tar entries against its manifest. One verifier serves every tar of a backup:
 * call begin() for each file entry (with the path in the manifest's terms: the entry's name, behind
 * tablespacePrefix(oid) for a tablespace tar), feed its bytes, end() it; finish() after the last
 * tar adds the files never seen.
 */
export class ManifestVerifier {
  private readonly files = new Map<string, ManifestFile>();
  private readonly seen = new Set<string>();
  private readonly ignore: readonly string[];
  readonly problems: VerifyProblem[] = [];
  private checked = 0;
  private bytes = 0;

  constructor(
    readonly manifest: BackupManifest,
    private readonly opts: VerifierOptions = {},
  ) {
    for (const f of manifest.files) this.files.set(f.path, f);
    this.ignore = [...VERIFY_IGNORED, ...(opts.ignore ?? [])].map((p) => p.replace(/\/+$/, ''));
  }

  /** Whether pg_verifybackup would skip `path` (should_ignore_relpath: the path itself or anything under it). */
  isIgnored(path: string): boolean {
    return this.ignore.some((i) => path === i || path.startsWith(`${i}/`));
  }

  /** The manifest's entry for `path`, if any. */
  lookup(path: string): ManifestFile | undefined {
    return this.files.get(path);
  }

  private record(kind: VerifyProblemKind, path: string, message: string): VerifyProblem {
    const p = { kind, path, message };
    this.problems.push(p);
    return p;
  }

  /**
   * A tar entry that is not a regular file (directory, symlink...): fine unless the manifest lists
   * a file by that path. Returns the problem, if any.
   */
  nonFile(path: string, type: string): VerifyProblem | undefined {
    if (this.isIgnored(path) || !this.files.has(path)) return undefined;
    this.seen.add(path);
    return this.record('not-a-file', path, `"${path}" is a ${type} in the backup, but the manifest lists it as a file`);
  }

  /**
   * Start checking the file at `path` (manifest terms) of `size` bytes. Undefined when the path is
   * skipped (VERIFY_IGNORED); otherwise a FileCheck whose end() reports what is wrong: a file the
   * manifest does not list, one seen twice, a size or checksum that differs.
   */
  begin(path: string, size: number): FileCheck | undefined {
    if (this.isIgnored(path)) return undefined;
    const { m, early } = this.open(path, size);
    const digest = m && !early && !this.opts.skipChecksums && m.algorithm !== 'NONE' ? new Digest(m.algorithm) : undefined;
    let got = 0;
    let ended = false;
    return {
      path,
      update: (chunk: Uint8Array): void => {
        got += chunk.length;
        digest?.update(chunk);
      },
      end: (): VerifyProblem | undefined => {
        if (ended) throw new Error(`the check of "${path}" was ended twice`);
        ended = true;
        return early ?? this.close(path, size, got, m!, digest);
      },
    };
  }

  /**
   * The same checks as begin() for a file whose bytes were seen elsewhere: `size` bytes whose
   * CRC-32C is `crc` (computed as the backup was stored). Undefined when the file matches or is
   * skipped. Throws when the manifest checks this file with another algorithm than CRC-32C (see
   * needsOtherDigest).
   */
  checkCrc32c(path: string, size: number, crc: number): VerifyProblem | undefined {
    if (this.isIgnored(path)) return undefined;
    const { m, early } = this.open(path, size);
    if (early) return early;
    if (this.opts.skipChecksums || m!.algorithm === 'NONE') return this.close(path, size, size, m!, undefined);
    if (m!.algorithm !== 'CRC32C') throw new Error(`"${path}" is checked with ${m!.algorithm} in the manifest, not CRC-32C`);
    return this.close(path, size, size, m!, Digest.ofCrc32c(crc));
  }

  /** Whether some file of the manifest is checked with an algorithm other than CRC-32C (then checkCrc32c cannot check it). */
  needsOtherDigest(): boolean {
    return !this.opts.skipChecksums && this.manifest.files.some((f) => f.algorithm !== 'NONE' && f.algorithm !== 'CRC32C');
  }

  /** What is wrong before any byte is seen: not in the manifest, seen twice, another size. */
  private open(path: string, size: number): { m: ManifestFile | undefined; early: VerifyProblem | undefined } {
    const m = this.files.get(path);
    let early: VerifyProblem | undefined;
    if (!m) early = this.record('extra', path, `"${path}" is in the backup but not in its manifest`);
    else if (this.seen.has(path)) early = this.record('duplicate', path, `"${path}" appears twice in the backup`);
    else if (m.size !== size) early = this.record('size', path, `"${path}" has size ${size} in the backup but ${m.size} in its manifest`);
    this.seen.add(path);
    return { m, early };
  }

  /** After the last byte: `got` of `size` bytes seen, with their digest (undefined: not checked). */
  private close(path: string, size: number, got: number, m: ManifestFile, digest: Digest | undefined): VerifyProblem | undefined {
    if (got !== size) return this.record('size', path, `"${path}" ended after ${got} of its ${size} bytes`);
    this.checked++;
    this.bytes += got;
    if (digest && m.checksum && !digest.forms().includes(m.checksum)) {
      return this.record('checksum', path, `"${path}" does not match its ${m.algorithm} checksum in the manifest`);
    }
    return undefined;
  }

  /** After every tar: adds each file the manifest lists that no tar held, and returns everything found. */
  finish(): VerifyResult {
    for (const f of this.files.values()) {
      if (!this.seen.has(f.path) && !this.isIgnored(f.path)) this.record('missing', f.path, `"${f.path}" is in the manifest but not in the backup`);
    }
    return { ok: this.problems.length === 0, problems: this.problems, checked: this.checked, bytes: this.bytes };
  }
}

/**
 * Check one tar's entries against the verifier, reading every file's content (a backup stored in
 * an archive, verified without writing it anywhere). `prefix`: '' for base.tar,
 * tablespacePrefix(oid) for a tablespace's tar. The entries' content is consumed here.
 */
export async function verifyTarEntries(entries: AsyncIterable<TarEntry>, verifier: ManifestVerifier, prefix = ''): Promise<void> {
  for await (const e of entries) {
    const path = prefix + e.name;
    if (e.type !== 'file') {
      verifier.nonFile(path, e.type);
      continue;
    }
    const check = verifier.begin(path, e.size);
    for await (const chunk of e.content) check?.update(chunk);
    check?.end();
  }
}
