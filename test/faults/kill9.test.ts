// Fault 1: walstream receive killed with SIGKILL at random moments (seeded), again and again,
// restarted each time, while pgbench and bursts of generated WAL keep the primary writing: in a
// plain directory (--synchronous: an fsync after every batch) and with --archive into a local
// directory (gzip) and into S3 (a slightly slow endpoint, so kills land mid-upload too). After
// every kill, everything up to the position walstream reported flushed to its slot must be in its
// directory or archive, byte-identical to pg_wal; at the end a run to the primary's flush position
// must complete and the whole range must verify.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PgCluster } from '../harness/pg.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { runCli } from '../support/cli.js';
import { openArchive } from '../../src/storage/open.js';
import type { ArchiveStore } from '../../src/storage/types.js';
import { Cleanup, Pgbench, SEG, WalWriter, createFaultPrimary, createSlot, flushLsn, receiverArgs, sleep, slotRestartLsn, startReceiver, tail } from './helpers.js';
import { fileRng, iterations, recordRow, type Rng } from './report.js';
import { formatLsn, pgWalReference, verifyWal } from './verify.js';

type Kind = 'plain' | 'gzip' | 'local' | 's3';

const MODES: { kind: Kind; label: string; extra: string[] }[] = [
  { kind: 'plain', label: 'receiver SIGKILL: plain directory, --synchronous', extra: ['--synchronous', '-s', '1'] },
  { kind: 'gzip', label: 'receiver SIGKILL: -Z gzip directory, --synchronous', extra: ['-Z', 'gzip', '--synchronous', '-s', '1'] },
  { kind: 'local', label: 'receiver SIGKILL: --archive local dir, -Z gzip', extra: ['-Z', 'gzip', '--partial-interval', '1', '-s', '1'] },
  { kind: 's3', label: 'receiver SIGKILL: --archive S3 (slow endpoint)', extra: ['--partial-interval', '1', '-s', '1'] },
];

const KILLS = iterations(6, 24);

describe('fault: the receiver killed with SIGKILL, repeatedly', () => {
  let primary: PgCluster;
  let s3: S3TestServer;
  let rng: Rng;
  let pgbench: Pgbench;
  const cleanup = new Cleanup();
  const stores: ArchiveStore[] = [];

  const s3Env = (): Record<string, string> => ({ AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region });

  beforeAll(async () => {
    rng = fileRng('kill9');
    [primary, s3] = await Promise.all([createFaultPrimary('fault-kill9'), startS3({ builtIn: true })]);
    pgbench = new Pgbench(primary);
    await pgbench.init();
    pgbench.start(40);
  });
  afterAll(async () => {
    await pgbench?.stop();
    await cleanup.run();
    for (const st of stores) await st.close();
    await primary?.destroy();
    await s3?.stop();
  });

  for (const mode of MODES) {
    it(
      mode.label,
      async () => {
        const slot = `kill_${mode.kind}`;
        const created = await createSlot(primary, slot);
        const first = (created / BigInt(SEG)) * BigInt(SEG);
        const dir = cleanup.dir(`kill-${mode.kind}`);
        let archive: string | undefined;
        let store: ArchiveStore | undefined;
        const env = mode.kind === 's3' ? s3Env() : undefined;
        if (mode.kind === 'local') archive = cleanup.dir('kill-archive');
        if (mode.kind === 's3') {
          archive = `s3://${s3.bucket}/${s3.prefix}kill9/`;
          Object.assign(process.env, s3Env());
          s3.setLatency(40);
        }
        if (archive) {
          store = await openArchive(archive, { s3Endpoint: s3.endpoint });
          stores.push(store);
        }
        const args = { dir, conn: primary.connectionString(), slot, archive, s3Endpoint: mode.kind === 's3' ? s3.endpoint : undefined, env };
        const reference = pgWalReference(primary.walDir);
        const cache = new Map<string, number>();
        const losses: string[] = [];
        const writer = new WalWriter(() => primary, rng).start();
        try {
          for (let i = 1; i <= KILLS; i++) {
            const proc = startReceiver(cleanup, { ...args, extra: mode.extra });
            // Most kills are timed from the spawn: some land during start-up (the spool's leftovers
            // being uploaded, the resume scan), most while streaming, writing, syncing and
            // uploading. One in three lands just after streaming resumed, while the segment in
            // progress is being received again from its start.
            const early = rng() < 1 / 3;
            const delay = early ? rng.int(0, 120) : rng.int(150, 2500);
            if (early) await proc.waitForOutput(/starting log streaming/).catch(() => undefined);
            await sleep(delay);
            const when = early ? `${delay} ms after streaming resumed` : `${delay} ms after start`;
            if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
              losses.push(`run ${i}: the receiver exited by itself (status ${proc.child.exitCode}):\n${tail(proc.stderr)}`);
              break;
            }
            proc.kill('SIGKILL');
            const res = await proc.done;
            expect(res.signal).toBe('SIGKILL');
            // The receiver is gone: its last report stands. Everything up to it must be held.
            const flushed = await slotRestartLsn(primary, slot);
            // Until the receiver reports a flush, the slot stays where it was created: nothing is owed yet.
            if (flushed <= created) continue;
            const v = await verifyWal({ segSize: SEG, reference, dirs: [dir], store, ranges: [{ tli: 1, from: first, to: flushed }], cache });
            for (const l of v.losses) losses.push(`kill ${i} (${when}, slot at ${formatLsn(flushed)}): ${l}`);
          }
        } finally {
          await writer.stop();
          if (mode.kind === 's3') s3.setLatency(0);
        }
        // The end: a run to the primary's flush position completes and everything verifies.
        const endpos = await flushLsn(primary);
        const res = await runCli(receiverArgs({ ...args, extra: [...mode.extra, '-E', formatLsn(endpos), '-n'] }), { env, timeoutMs: 180_000 });
        if (res.code !== 0) losses.push(`final run to ${formatLsn(endpos)} exited with ${res.code}:\n${tail(res.stderr)}`);
        const v = await verifyWal({
          segSize: SEG,
          reference,
          dirs: [dir],
          store,
          ranges: [{ tli: 1, from: first, to: endpos }],
          archivedTo: store ? [{ tli: 1, from: first, to: endpos }] : undefined,
        });
        losses.push(...v.losses);
        recordRow({ fault: mode.label, iterations: KILLS, bytesVerified: v.bytesVerified, losses: losses.length });
        expect(losses).toEqual([]);
        expect(endpos - first).toBeGreaterThan(BigInt(KILLS * SEG) / 4n);
      },
      120_000 + KILLS * 20_000,
    );
  }
});
