// The options several commands share, each declared once: the archive and its S3 endpoint, the
// encryption keys, compression, the connection (-d, -h, -p, -U, -w, -W) and the metrics listener,
// with their parsers. Commands compose their option lists from these. Only light modules here:
// every command, `walstream fetch` above all, loads this at startup.
import { readFileSync } from 'node:fs';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { type ListenAddress, parseListenAddress } from '../observe/listen.js';
import type { Compression } from '../sink/segment-file.js';
import { KEY_VARIABLE } from './keys.js';

/** walstream's version, from the package.json two directories up (from src/cli/ and from dist/cli/ alike). */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  if (typeof pkg.version !== 'string') throw new Error('package.json has no version');
  return pkg.version;
}

/** A port, or a comma-separated list of them (one per host of a multi-host -h; an empty entry is the default). */
export function parsePort(v: string): string {
  for (const p of v.split(',')) {
    if (p === '' && v.includes(',')) continue;
    if (!/^\d+$/.test(p) || Number(p) < 1 || Number(p) > 65535) throw new InvalidArgumentError(`invalid port number "${v}"`);
  }
  return v;
}

/** A whole number from 1 to 64 (parallelism, prefetch depth). */
export function parsePositiveInt(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 64) throw new InvalidArgumentError(`invalid number "${v}" (1-64)`);
  return Number(v);
}

/** [HOST:]PORT to listen on; the host defaults to 127.0.0.1 (only this machine), port 0 picks a free one. */
export function parseListen(v: string): ListenAddress {
  try {
    return parseListenAddress(v);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

export interface CompressSpec {
  method: Compression;
  level?: number;
}

/** -Z: none, gzip[:LEVEL], zstd[:LEVEL] (also written METHOD:level=N), or a bare gzip level 0-9 as pg_receivewal takes it. */
export function parseCompress(v: string): CompressSpec {
  const text = v.trim().toLowerCase();
  if (/^\d+$/.test(text)) {
    const n = Number(text);
    if (n === 0) return { method: 'none' };
    if (n <= 9) return { method: 'gzip', level: n };
    throw new InvalidArgumentError(`compression level ${n} is out of range (0-9)`);
  }
  const m = /^(none|gzip|zstd)(?::(?:level=)?(\d+))?$/.exec(text);
  if (!m) throw new InvalidArgumentError(`invalid compression "${v}" (use none, gzip[:LEVEL] or zstd[:LEVEL])`);
  const method = m[1] as Compression;
  const level = m[2] !== undefined ? Number(m[2]) : undefined;
  if (method === 'none' && level !== undefined) throw new InvalidArgumentError('compression "none" does not accept a compression level');
  if (method === 'gzip' && level !== undefined && (level < 1 || level > 9)) throw new InvalidArgumentError('gzip level must be 1-9');
  if (method === 'zstd' && level !== undefined && (level < 1 || level > 22)) throw new InvalidArgumentError('zstd level must be 1-22');
  return { method, level };
}

/** The options of the archive (--archive, --s3-endpoint and the two encryption options). */
export interface ArchiveCliOptions {
  archive?: string;
  s3Endpoint?: string;
  encryptionKeyFile?: string;
  encryptionRequired?: boolean;
}

/** --archive; `use` says what the command does with it (e.g. "the archive to restore from"). */
export function archiveOption(use: string): Option {
  return new Option('--archive <url>', `${use}: a directory, file:///path, s3://bucket/prefix or azure://container/prefix`).env('WALSTREAM_ARCHIVE');
}

export function s3EndpointOption(): Option {
  return new Option('--s3-endpoint <url>', 'S3-compatible endpoint (MinIO, Ceph, ...; default: AWS)').env('AWS_ENDPOINT_URL');
}

export function encryptionKeyOption(): Option {
  return new Option(
    '--encryption-key-file <file>',
    `encrypt archived objects (AES-256-GCM) with the first key in this file and read them with any of its keys; one "id=KEY" a line, KEY 32 bytes in hex or base64; the file must be private (chmod 600). Or give one key in ${KEY_VARIABLE}`,
  );
}

export function encryptionRequiredOption(): Option {
  return new Option('--encryption-required', 'with a key: refuse archived objects that are not encrypted (once every object is), so none can be slipped in unencrypted');
}

/** --archive, --s3-endpoint, --encryption-key-file and --encryption-required, in that order. */
export function addArchiveOptions(cmd: Command, use: string): Command {
  return cmd.addOption(archiveOption(use)).addOption(s3EndpointOption()).addOption(encryptionKeyOption()).addOption(encryptionRequiredOption());
}

/** -Z, --compress; `what` names what is compressed. The default shows as it is typed: none. */
export function compressOption(what: string): Option {
  return new Option('-Z, --compress <method[:level]>', `compress ${what}: none, gzip[:1-9], zstd[:1-22] (zstd needs Node 22.15+), or a gzip level 0-9`)
    .argParser(parseCompress)
    .default({ method: 'none' } satisfies CompressSpec, 'none');
}

/** The connection options (-d, -h, -p, -U); also -w and -W for a command that may prompt for a password. */
export interface ConnectionCliOptions {
  dbname?: string;
  host?: string;
  port?: string;
  username?: string;
  /** -w: false (never prompt). */
  password?: boolean;
  /** -W: prompt for the password before connecting. */
  forcePassword?: boolean;
}

export function addConnectionOptions(cmd: Command, o: { password: boolean }): Command {
  cmd
    .option('-d, --dbname <connstr>', 'connection string (keyword=value or postgresql:// URI)')
    .option('-h, --host <hostname>', 'database server host or socket directory')
    .option('-p, --port <port>', 'database server port number', parsePort)
    .option('-U, --username <name>', 'connect as specified database user (a role with the REPLICATION attribute, or a superuser)');
  if (o.password) cmd.option('-w, --no-password', 'never prompt for password').option('-W, --force-password', 'force password prompt (should happen automatically)');
  return cmd;
}

/** --metrics-listen: Prometheus metrics and a health check over HTTP. */
export function metricsListenOption(): Option {
  return new Option('--metrics-listen <[host:]port>', 'serve Prometheus metrics at /metrics and a health check at /health (host defaults to 127.0.0.1)').argParser(parseListen);
}

/**
 * The "Examples:" section that ends a command's --help: each example a comment line saying what
 * it does, then the command line (or the postgresql.conf line) itself.
 */
export function helpExamples(examples: [what: string, line: string][]): string {
  return `\nExamples:\n${examples.map(([what, line]) => `  # ${what}\n  ${line}`).join('\n')}`;
}
