// Peers for the push and restore benchmarks: pgBackRest (when installed) against a local
// repository and against the same S3 endpoint walstream uses. pgBackRest speaks S3 only over TLS,
// so for a plain-HTTP test server it goes through a TLS-terminating proxy with a self-signed
// certificate (made with openssl). Everything here runs as the PostgreSQL OS user, as
// archive_command and restore_command do.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Server } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pgOsUser, runAsPg } from '../test/harness/exec.js';
import type { PgCluster } from '../test/harness/pg.js';
import type { S3TestServer } from '../test/harness/s3.js';

export const PGBACKREST = '/usr/bin/pgbackrest';

export function havePgBackRest(): boolean {
  return existsSync(PGBACKREST);
}

/** A directory the PostgreSQL OS user owns. */
export function pgDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `walstream-bench-${prefix}-`));
  chmodSync(dir, 0o755);
  const u = pgOsUser();
  if (u) chownSync(dir, u.uid, u.gid);
  return dir;
}

export interface TlsProxy {
  port: number;
  close(): Promise<void>;
}

/** TLS on 127.0.0.1 in front of a plain TCP port (self-signed certificate for 127.0.0.1). */
export async function tlsProxy(targetPort: number): Promise<TlsProxy> {
  const dir = mkdtempSync(join(tmpdir(), 'walstream-bench-tls-'));
  try {
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')],
      { stdio: 'ignore' },
    );
    const open = new Set<{ destroy(): void }>();
    const server: Server = createTlsServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }, (tls) => {
      const up = connect(targetPort, '127.0.0.1');
      open.add(tls);
      open.add(up);
      tls.pipe(up).pipe(tls);
      // Either side gone ends both: a client's half-close would otherwise leave the upstream
      // keep-alive socket (and close() waiting on it) open for good.
      const end = (): void => {
        tls.destroy();
        up.destroy();
        open.delete(tls);
        open.delete(up);
      };
      tls.on('error', end);
      up.on('error', end);
      tls.on('close', end);
      up.on('close', end);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    return {
      port,
      close: () =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          for (const s of open) s.destroy();
        }),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface PgBackRestRepo {
  /** The stanza's name. */
  stanza: string;
  /** Config file to pass with --config. */
  config: string;
  /** archive_command for the primary; async mode queues in `spool` (a fresh directory per run). */
  pushCommand(async?: { spool: string }): string;
  /** restore_command for a standby with data directory `pgPath`; async mode prefetches into `spool`. */
  getCommand(pgPath: string, async?: { spool: string }): string;
  cleanup(): void;
}

export interface PgBackRestOptions {
  primary: PgCluster;
  /** Parallel processes of the async worker. */
  processMax: number;
  /** Only the endpoint's bucket, region and keys are used (an S3TestServer or the benchmarks' S3 process). */
  s3?: { server: Pick<S3TestServer, 'bucket' | 'region' | 'accessKeyId' | 'secretAccessKey'>; tlsPort: number; prefix: string };
}

/**
 * A fresh pgBackRest repository and stanza for `primary`, uncompressed (walstream's default), so
 * that both tools move the same bytes.
 */
export async function pgBackRestRepo(o: PgBackRestOptions): Promise<PgBackRestRepo> {
  const base = pgDir('pgbackrest');
  const stanza = 'bench';
  const lines = [
    '[global]',
    `lock-path=${join(base, 'lock')}`,
    `spool-path=${join(base, 'spool')}`,
    `log-path=${join(base, 'log')}`,
    'log-level-console=warn',
    'log-level-stderr=warn',
    'log-level-file=off',
    'compress-type=none',
    `process-max=${o.processMax}`,
    'start-fast=y',
  ];
  if (o.s3) {
    lines.push(
      'repo1-type=s3',
      `repo1-path=/${o.s3.prefix}`,
      `repo1-s3-bucket=${o.s3.server.bucket}`,
      'repo1-s3-endpoint=127.0.0.1',
      `repo1-storage-port=${o.s3.tlsPort}`,
      `repo1-s3-region=${o.s3.server.region}`,
      `repo1-s3-key=${o.s3.server.accessKeyId}`,
      `repo1-s3-key-secret=${o.s3.server.secretAccessKey}`,
      'repo1-s3-uri-style=path',
      'repo1-storage-verify-tls=n',
    );
  } else {
    lines.push(`repo1-path=${join(base, 'repo')}`);
  }
  lines.push(`[${stanza}]`, `pg1-path=${o.primary.dataDir}`, `pg1-port=${o.primary.port}`, `pg1-socket-path=${o.primary.baseDir}`, 'pg1-user=postgres');
  const config = join(base, 'pgbackrest.conf');
  writeFileSync(config, `${lines.join('\n')}\n`, { mode: 0o600 });
  const u = pgOsUser();
  if (u) chownSync(config, u.uid, u.gid);
  for (const d of ['lock', 'spool', 'log']) {
    mkdirSync(join(base, d), { mode: 0o700 });
    if (u) chownSync(join(base, d), u.uid, u.gid);
  }
  await runAsPg(PGBACKREST, [`--config=${config}`, `--stanza=${stanza}`, 'stanza-create'], { timeoutMs: 120_000 });
  return {
    stanza,
    config,
    pushCommand: (async) => `${PGBACKREST} --config=${config} --stanza=${stanza} ${asyncOptions(async)} archive-push %p`,
    getCommand: (pgPath, async) => `${PGBACKREST} --config=${config} --stanza=${stanza} --pg1-path=${pgPath} ${asyncOptions(async)} archive-get %f "%p"`,
    cleanup: () => rmSync(base, { recursive: true, force: true }),
  };
}

function asyncOptions(async: { spool: string } | undefined): string {
  return async ? `--archive-async --spool-path=${async.spool}` : '--no-archive-async';
}
