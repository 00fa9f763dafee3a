// Fault 1: walstream receive killed with SIGKILL at random moments (seeded), again and again,
// restarted each time, while pgbench and bursts of generated WAL keep the primary writing: in a
// plain directory (--synchronous: an fsync after every batch) and with --archive into a local
// directory (gzip) and into S3 (a slightly slow endpoint, so kills land mid-upload too). After
// every kill, everything up to the position walstream reported flushed to its slot must be in its
// directory or archive, byte-identical to pg_wal; at the end a run to the primary's flush position
// must complete and the whole range must verify.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ArchiveStore } from '../../src/storage/types.js';
import { Pgbench, SEG, WalWriter, faultSuite, flushLsn, receiveTo, sleep, slotRestartLsn, slotRun, startReceiver, tail } from './helpers.js';
import { iterations, recordRow } from './report.js';
import { formatLsn, verifyWal } from './verify.js';

type Kind = 'plain' | 'gzip' | 'local' | 's3';

const MODES: { kind: Kind; label: string; extra: string[] }[] = [
  { kind: 'plain', label: 'receiver SIGKILL: plain directory, --synchronous', extra: ['--synchronous', '-s', '1'] },
  { kind: 'gzip', label: 'receiver SIGKILL: -Z gzip directory, --synchronous', extra: ['-Z', 'gzip', '--synchronous', '-s', '1'] },
  { kind: 'local', label: 'receiver SIGKILL: --archive local dir, -Z gzip', extra: ['-Z', 'gzip', '--partial-interval', '1', '-s', '1'] },
  { kind: 's3', label: 'receiver SIGKILL: --archive S3 (slow endpoint)', extra: ['--partial-interval', '1', '-s', '1'] },
];

const KILLS = iterations(6, 24);

describe('fault: the receiver killed with SIGKILL, repeatedly', () => {
  const suite = faultSuite('kill9', { primary: { name: 'fault-kill9' }, s3: true });
  let pgbench: Pgbench | undefined;

  beforeAll(async () => {
    pgbench = new Pgbench(suite.primary);
    await pgbench.init();
    pgbench.start(40);
  });
  // (Before the suite's own teardown: after hooks run last registered first.)
  afterAll(async () => {
    await pgbench?.stop();
  });

  for (const mode of MODES) {
    it(
      mode.label,
      async () => {
        const { primary, s3, rng, cleanup } = suite;
        const { slot, created, first, dir, reference, cache, losses } = await slotRun(primary, cleanup, `kill_${mode.kind}`, `kill-${mode.kind}`);
        let archive: string | undefined;
        let store: ArchiveStore | undefined;
        const env = mode.kind === 's3' ? suite.s3Env() : undefined;
        if (mode.kind === 'local') archive = cleanup.dir('kill-archive');
        if (mode.kind === 's3') {
          archive = `s3://${s3.bucket}/${s3.prefix}kill9/`;
          s3.setLatency(40);
        }
        if (archive) store = await suite.openStore(archive);
        const args = { dir, conn: primary.connectionString(), slot, archive, s3Endpoint: mode.kind === 's3' ? s3.endpoint : undefined, env };
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
        await receiveTo({ ...args, extra: mode.extra }, endpos, losses);
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
