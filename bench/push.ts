// npm run bench:push — PostgreSQL's archiver draining BENCH_SEGMENTS (default 64) ready 16 MB
// segments through archive_command: walstream push, serial and --parallel, into a local archive
// and into S3 (s3rver on loopback, or WALSTREAM_TEST_S3_ENDPOINT), against `cp` + fsync and
// pgBackRest's archive-push, synchronous and asynchronous (when installed), uncompressed.
// The segments stay in pg_wal (wal_keep_size); before each case the server is stopped, every
// .done is turned back into .ready and the case's archive_command is set, with a fresh
// destination. Timed from server start until no .ready is left. Medians of BENCH_RUNS runs.
import { readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { PgCluster } from '../test/harness/pg.js';
import { startS3 } from '../test/harness/s3.js';
import { walstreamCommand } from '../test/support/pgcommand.js';
import { median, selectCases } from './common.js';
import { havePgBackRest, pgBackRestRepo, pgDir, tlsProxy, type PgBackRestRepo, type TlsProxy } from './peers.js';

const SEGMENTS = Number(process.env['BENCH_SEGMENTS'] ?? 64);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
const PARALLEL = process.env['BENCH_PARALLEL'] ?? '4';
const SEG_MB = 16;
const SEG_RE = /^[0-9A-F]{24}$/;

interface Case {
  name: string;
  /** archive_command writing into a fresh destination. */
  command(): Promise<string>;
}

async function main(): Promise<void> {
  const s3 = await startS3();
  const primary = await PgCluster.create({
    name: 'bench-push',
    walSegmentSizeMB: SEG_MB,
    conf: { archive_mode: 'on', archive_command: '/bin/false', max_wal_size: '4GB', checkpoint_timeout: '30min', wal_keep_size: '4GB' },
  });
  const dirs: string[] = [];
  const fresh = (p: string): string => {
    const d = pgDir(p);
    dirs.push(d);
    return d;
  };
  const repos: PgBackRestRepo[] = [];
  let proxy: TlsProxy | undefined;
  try {
    const env = `env ${Object.entries({ AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region })
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`;
    let seq = 0;
    const s3Url = (): string => `s3://${s3.bucket}/${s3.prefix}push${seq++}/`;
    let cases: Case[] = [
      {
        name: 'cp + fsync',
        command: async () => {
          const d = fresh('cp');
          return `cp %p ${d}/%f.tmp && sync ${d}/%f.tmp && mv ${d}/%f.tmp ${d}/%f && sync ${d}`;
        },
      },
      { name: 'walstream push', command: async () => walstreamCommand(['push', '%p', '--archive', fresh('ws')]) },
      { name: `walstream push --parallel ${PARALLEL}`, command: async () => walstreamCommand(['push', '%p', '--archive', fresh('ws'), '--parallel', PARALLEL]) },
      {
        name: `walstream push --parallel ${PARALLEL}, rm first`,
        command: async () => {
          const m = fresh('markers');
          return `rm ${m}/%f.pushed 2>/dev/null || ${walstreamCommand(['push', '%p', '--archive', fresh('ws'), '--parallel', PARALLEL, '--spool', m])}`;
        },
      },
      {
        name: `walstream push S3 --parallel ${PARALLEL}, rm first`,
        command: async () => {
          const m = fresh('markers');
          return `rm ${m}/%f.pushed 2>/dev/null || ${env} ${walstreamCommand(['push', '%p', '--archive', s3Url(), '--s3-endpoint', s3.endpoint, '--parallel', PARALLEL, '--spool', m])}`;
        },
      },
      { name: 'walstream push S3', command: async () => `${env} ${walstreamCommand(['push', '%p', '--archive', s3Url(), '--s3-endpoint', s3.endpoint])}` },
      { name: `walstream push S3 --parallel ${PARALLEL}`, command: async () => `${env} ${walstreamCommand(['push', '%p', '--archive', s3Url(), '--s3-endpoint', s3.endpoint, '--parallel', PARALLEL])}` },
    ];
    if (havePgBackRest()) {
      const repo = async (s3prefix?: string): Promise<PgBackRestRepo> => {
        const r = await pgBackRestRepo({ primary, processMax: Number(PARALLEL), s3: s3prefix !== undefined && proxy ? { server: s3, tlsPort: proxy.port, prefix: s3prefix } : undefined });
        repos.push(r);
        return r;
      };
      cases.push({ name: 'pgbackrest archive-push', command: async () => (await repo()).pushCommand() });
      cases.push({ name: `pgbackrest archive-push async (${PARALLEL})`, command: async () => (await repo()).pushCommand({ spool: fresh('pgbr-spool') }) });
      if (!s3.external) {
        try {
          proxy = await tlsProxy(Number(new URL(s3.endpoint).port));
          cases.push({ name: 'pgbackrest archive-push S3', command: async () => (await repo(`${s3.prefix}pgbr${seq++}`)).pushCommand() });
          cases.push({ name: `pgbackrest archive-push S3 async (${PARALLEL})`, command: async () => (await repo(`${s3.prefix}pgbr${seq++}`)).pushCommand({ spool: fresh('pgbr-spool') }) });
        } catch (err) {
          console.log(`pgBackRest on S3 left out: ${(err as Error).message.split('\n')[0]}`);
        }
      }
    } else {
      console.log('pgBackRest is not installed (apt-get install pgbackrest): its cases are left out');
    }

    cases = selectCases(cases, 'cp + fsync');
    process.stdout.write(`generating ${SEGMENTS} segments of WAL... `);
    await primary.generateWal(SEGMENTS * SEG_MB * 1024 * 1024);
    await primary.switchWal();
    await primary.checkpoint();
    const status = join(primary.walDir, 'archive_status');
    const ready = (): string[] => readdirSync(status).filter((f) => f.endsWith('.ready'));
    console.log(`${ready().length} files ready`);

    const times = new Map<string, number[]>();
    for (let i = 0; i < RUNS; i++) {
      const order = i % 2 === 0 ? cases : [...cases].reverse();
      for (const c of order) {
        const command = await c.command(); // pgBackRest's stanza-create needs the server up
        await primary.stop();
        for (const f of readdirSync(status)) if (f.endsWith('.done') && SEG_RE.test(f.slice(0, -5))) renameSync(join(status, f), join(status, `${f.slice(0, -5)}.ready`));
        const n = ready().length;
        primary.configure({ archive_command: command });
        const logFrom = statSync(primary.logFile).size;
        const t0 = performance.now();
        await primary.start();
        await primary.waitFor(async () => ready().length === 0, 600_000, `${c.name} to archive ${n} files`);
        const s = (performance.now() - t0) / 1000;
        const [st] = await primary.query<{ failed: string }>('select failed_count::text as failed from pg_stat_archiver');
        times.set(c.name, [...(times.get(c.name) ?? []), s]);
        console.log(`run ${i + 1} ${c.name}: ${n} files in ${s.toFixed(2)} s (archiver failures so far: ${st!.failed})`);
        // Why the archiver failed during the case, if it did: a failure costs a retry delay.
        const failures = readFileSync(primary.logFile)
          .subarray(logFrom)
          .toString()
          .split('\n')
          .filter((l) => /archive command failed|walstream: error|pgbackrest.*ERROR/i.test(l));
        for (const l of failures.slice(0, 4)) console.log(`  server log: ${l.trim()}`);
        primary.configure({ archive_command: '/bin/false' });
        for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
        for (const r of repos.splice(0)) r.cleanup();
      }
    }

    const pad = (s: string, n: number): string => s.padEnd(n);
    const cp = median(times.get('cp + fsync')!);
    console.log(`\ndraining ${SEGMENTS} ready ${SEG_MB} MB segments (median of ${RUNS} runs)`);
    console.log(`${pad('archive_command', 44)}${pad('seconds', 10)}${pad('MB/s', 8)}vs cp + fsync`);
    for (const c of cases) {
      const t = median(times.get(c.name)!);
      console.log(`${pad(c.name, 44)}${pad(t.toFixed(2), 10)}${pad(((SEGMENTS * SEG_MB) / t).toFixed(0), 8)}${(t / cp).toFixed(2)}x`);
    }
    const ratio = (a: string, b: string): string => (times.has(a) && times.has(b) ? (median(times.get(a)!) / median(times.get(b)!)).toFixed(2) : 'n/a');
    console.log(`\nwalstream push --parallel ${PARALLEL}, rm first / pgbackrest archive-push async: ${ratio(`walstream push --parallel ${PARALLEL}, rm first`, `pgbackrest archive-push async (${PARALLEL})`)}`);
    console.log(
      `walstream push S3 --parallel ${PARALLEL}, rm first / pgbackrest archive-push S3 async: ${ratio(`walstream push S3 --parallel ${PARALLEL}, rm first`, `pgbackrest archive-push S3 async (${PARALLEL})`)}`,
    );
    console.log(`walstream push --parallel ${PARALLEL} / pgbackrest archive-push async: ${ratio(`walstream push --parallel ${PARALLEL}`, `pgbackrest archive-push async (${PARALLEL})`)}`);
    console.log(`walstream push --parallel ${PARALLEL} / pgbackrest archive-push: ${ratio(`walstream push --parallel ${PARALLEL}`, 'pgbackrest archive-push')}`);
    console.log(`walstream push S3 --parallel ${PARALLEL} / pgbackrest archive-push S3 async: ${ratio(`walstream push S3 --parallel ${PARALLEL}`, `pgbackrest archive-push S3 async (${PARALLEL})`)}`);
  } finally {
    await primary.destroy();
    await proxy?.close();
    await s3.stop();
    for (const r of repos) r.cleanup();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
