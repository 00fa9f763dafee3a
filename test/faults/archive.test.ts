// Fault 4: the archive side of receive --archive, and a full disk.
//  - The S3 endpoint refusing connections, hanging, slow, and answering 500 / 503 for a while,
//    in seeded random order while WAL is written: the receiver keeps streaming into its spool
//    (pausing at --spool-max), never exits, and once S3 answers again the archive catches up
//    with every segment identical to pg_wal.
//  - A full disk under the receiver's directory (plain and gzip) and under its spool while S3 is
//    down: the receiver stops acknowledging (its slot stays within what it holds), waits instead
//    of dropping or corrupting anything, and carries on by itself once space returns.
import { describe, expect, it } from 'vitest';
import { readdirSync } from 'node:fs';
import { FullDisk } from './disk.js';
import { SEG, WalWriter, createSlot, faultSuite, flushLsn, receiveTo, receivedLsn, sleep, slotRestartLsn, slotRun, startReceiver, stopReceiver, tail, waitUntil } from './helpers.js';
import { iterations, recordRow } from './report.js';
import { formatLsn, pgWalReference, verifyWal } from './verify.js';

type Outage = 'refused' | 'hanging' | 'slow' | 'HTTP 500' | 'HTTP 503';
const OUTAGES: Outage[] = ['refused', 'hanging', 'slow', 'HTTP 500', 'HTTP 503'];

/** Start of the oldest WAL segment in a spool directory (0 when it has none). */
function oldestSegmentStart(dir: string): bigint {
  const names = readdirSync(dir)
    .filter((n) => /^[0-9A-F]{24}(\.partial)?$/.test(n))
    .sort();
  if (names.length === 0) return 0n;
  const n = names[0]!;
  return (BigInt(`0x${n.slice(8, 16)}`) << 32n) + BigInt(`0x${n.slice(16, 24)}`) * BigInt(SEG);
}

describe('fault: S3 down, slow or failing; a full disk under the receiver', () => {
  const suite = faultSuite('archive', { primary: { name: 'fault-archive' }, s3: true });
  const { cleanup } = suite;

  const ROUNDS = iterations(1, 3);
  it(
    'S3 refusing, hanging, slow and failing with 500/503',
    async () => {
      const { primary, s3, rng } = suite;
      const { slot, first, dir, reference, cache, losses } = await slotRun(primary, cleanup, 's3_outage', 's3-spool');
      const url = `s3://${s3.bucket}/${s3.prefix}outage/`;
      const store = await suite.openStore(url);
      const args = { dir, conn: primary.connectionString(), slot, archive: url, s3Endpoint: s3.endpoint, env: suite.s3Env(), extra: ['-s', '1', '--partial-interval', '1', '--spool-max', '3MB'] };
      const plan: Outage[] = [];
      for (let r = 0; r < ROUNDS; r++) plan.push(...[...OUTAGES].sort(() => rng() - 0.5));
      const writer = new WalWriter(() => primary, rng).start();
      const proc = startReceiver(cleanup, args);
      try {
        await proc.waitForOutput(/starting log streaming/);
        for (const [i, outage] of plan.entries()) {
          await sleep(rng.int(300, 1500));
          const ms = rng.int(iterations(1500, 3000), iterations(3500, 12_000));
          switch (outage) {
            case 'refused':
              await s3.pause('refuse');
              await sleep(ms);
              await s3.resume();
              break;
            case 'hanging':
              await s3.pause('hang');
              await sleep(ms);
              await s3.resume();
              break;
            case 'slow':
              s3.setLatency(rng.int(300, 1500));
              await sleep(ms);
              s3.setLatency(0);
              break;
            case 'HTTP 500':
            case 'HTTP 503':
              s3.failFor(ms, outage === 'HTTP 500' ? 500 : 503);
              await sleep(ms);
              break;
          }
          // S3 answers again: every segment finished by now must reach the archive.
          const target = await flushLsn(primary);
          const mustArchive = (target / BigInt(SEG)) * BigInt(SEG);
          try {
            await waitUntil(
              async () =>
                (await receivedLsn(primary, slot)) >= target &&
                (await verifyWal({ segSize: SEG, reference, store, ranges: [], archivedTo: [{ tli: 1, from: first, to: mustArchive }], cache })).losses.length === 0,
              120_000,
              `the archive to catch up to ${formatLsn(mustArchive)} after S3 was ${outage}`,
              () => tail(proc.stderr),
            );
          } catch (err) {
            losses.push(`${outage} ${i + 1}: ${(err as Error).message}`);
            break;
          }
          const flushed = await slotRestartLsn(primary, slot);
          const v = await verifyWal({ segSize: SEG, reference, dirs: [dir], store, ranges: [{ tli: 1, from: first, to: flushed }], cache });
          for (const l of v.losses) losses.push(`${outage} ${i + 1}: ${l}`);
          console.log(`[faults] S3 ${i + 1}/${plan.length}: ${outage} for ${ms} ms, archive caught up`);
        }
      } finally {
        await s3.resume().catch(() => undefined);
        s3.setLatency(0);
        await writer.stop();
      }
      if (proc.child.exitCode !== null) losses.push(`the receiver exited during the outages:\n${tail(proc.stderr)}`);
      expect(proc.stderr).toMatch(/could not archive/);
      proc.kill('SIGTERM');
      const res = await proc.done;
      if (res.code !== 0) losses.push(`the receiver exited with ${res.code} on SIGTERM:\n${tail(res.stderr)}`);
      const endpos = await flushLsn(primary);
      await receiveTo(args, endpos, losses);
      const v = await verifyWal({ segSize: SEG, reference, dirs: [dir], store, ranges: [{ tli: 1, from: first, to: endpos }], archivedTo: [{ tli: 1, from: first, to: endpos }] });
      losses.push(...v.losses);
      recordRow({ fault: 'S3 refused/hung/slow/500/503', iterations: plan.length, bytesVerified: v.bytesVerified, losses: losses.length });
      expect(losses).toEqual([]);
    },
    240_000 + ROUNDS * 5 * 60_000,
  );

  /**
   * The receiver runs into a full disk, is checked while it waits, and must carry on once space
   * returns, `CYCLES` times in one run. WAL is written in bounded amounts (not for a while), so
   * the directory never needs more than its size once space is back. `archive`: the directory is
   * the spool of an S3 archive that is down meanwhile, and it fills with WAL by itself; space
   * returns by the uploads draining it once S3 is back.
   */
  const CYCLES = iterations(1, 3);
  const diskFull = async (label: string, opts: { compress?: boolean; archive?: boolean }): Promise<void> => {
    const { primary, s3, rng } = suite;
    const slot = `disk_${opts.compress ? 'gz' : opts.archive ? 'spool' : 'plain'}`;
    const first = ((await createSlot(primary, slot)) / BigInt(SEG)) * BigInt(SEG);
    const disk = await FullDisk.create(slot, opts.archive ? 12 : 32);
    cleanup.defer(() => disk.remove());
    const url = opts.archive ? `s3://${s3.bucket}/${s3.prefix}${slot}/` : undefined;
    const store = url ? await suite.openStore(url) : undefined;
    const extra = ['-s', '1', ...(opts.compress ? ['-Z', 'gzip'] : []), ...(opts.archive ? ['--partial-interval', '1'] : ['--synchronous'])];
    const args = { dir: disk.dir, conn: primary.connectionString(), slot, archive: url, s3Endpoint: url ? s3.endpoint : undefined, env: url ? suite.s3Env() : undefined, extra };
    const reference = pgWalReference(primary.walDir);
    const losses: string[] = [];
    // Caught up: reported flushed (--synchronous, or every --partial-interval). The write position
    // is not enough: with -Z it counts bytes handed to the compressor, which a full disk may yet refuse.
    const caughtUp = async (what: string): Promise<void> => {
      const target = await flushLsn(primary);
      await waitUntil(
        async () => (await slotRestartLsn(primary, slot)) >= target,
        120_000,
        `the receiver to reach ${formatLsn(target)} ${what}`,
        () => tail(proc.stderr, 40),
      );
    };
    const proc = startReceiver(cleanup, args);
    try {
      await proc.waitForOutput(/starting log streaming/);
      await primary.generateWal(2 * SEG);
      await caughtUp('before the disk fills');
      for (let c = 1; c <= CYCLES; c++) {
        // Full: a ballast file takes the space (with S3 down, the spool fills with WAL by itself).
        if (opts.archive) await s3.pause('refuse');
        if (!opts.archive || disk.kind === 'rlimit') await disk.fill(proc.child.pid!, opts.compress ? 1024 : 16 * 1024);
        const mark = proc.stderr.length;
        for (let written = 0; !disk.errorPattern.test(proc.stderr.slice(mark)); written += SEG / 2) {
          if (written > 64 * SEG) throw new Error(`cycle ${c}: no full-disk error after 64 MB of WAL (${disk.kind}):\n${tail(proc.stderr)}`);
          await primary.generateWal(SEG / 2);
          await sleep(100);
        }
        await primary.generateWal(rng.int(SEG / 4, SEG));
        await sleep(rng.int(500, 2000));
        // While the disk is full: alive, waiting, and the slot only where the directory holds WAL.
        if (proc.child.exitCode !== null) {
          losses.push(`cycle ${c}: the receiver exited on a full disk (status ${proc.child.exitCode}):\n${tail(proc.stderr)}`);
          break;
        }
        const held = await slotRestartLsn(primary, slot);
        // (With S3 down the archive cannot be listed: the spool is checked from its oldest segment
        // on; what was archived before is checked at the end.)
        const spooled = opts.archive ? oldestSegmentStart(disk.dir) : first;
        const during = await verifyWal({ segSize: SEG, reference, dirs: [disk.dir], ranges: [{ tli: 1, from: spooled > first ? spooled : first, to: held }] });
        for (const l of during.losses) losses.push(`cycle ${c}, while full: ${l}`);
        if (held >= (await flushLsn(primary))) losses.push(`cycle ${c}: the receiver acknowledged everything although its disk was full`);
        // Space returns.
        if (opts.archive) await s3.resume();
        if (!opts.archive || disk.kind === 'rlimit') await disk.free();
        await primary.generateWal(rng.int(SEG / 4, SEG));
        try {
          await caughtUp(`once space returned (cycle ${c})`);
        } catch (err) {
          losses.push((err as Error).message);
          break;
        }
      }
      // The primary may flush more after the last catch-up (a background record): the receiver
      // must have received it before SIGTERM is asked to hold it.
      const { endpos } = await stopReceiver(primary, proc, slot, losses);
      if (opts.archive) await receiveTo(args, endpos, losses);
      const v = await verifyWal({
        segSize: SEG,
        reference,
        dirs: [disk.dir],
        store,
        ranges: [{ tli: 1, from: first, to: endpos }],
        archivedTo: store ? [{ tli: 1, from: first, to: endpos }] : undefined,
      });
      losses.push(...v.losses);
      recordRow({ fault: `${label} (${disk.kind})`, iterations: CYCLES, bytesVerified: v.bytesVerified, losses: losses.length });
      expect(losses).toEqual([]);
    } finally {
      await disk.free().catch(() => undefined);
      await s3.resume().catch(() => undefined);
    }
  };

  it('disk full under a plain directory, space returns', () => diskFull('disk full: plain directory', {}), 120_000 + CYCLES * 240_000);
  it('disk full under a gzip directory, space returns', () => diskFull('disk full: -Z gzip directory', { compress: true }), 120_000 + CYCLES * 240_000);
  it('disk full under the spool while S3 is down, S3 returns', () => diskFull('disk full: spool, S3 down', { archive: true }), 120_000 + CYCLES * 240_000);
});
