// Fault 3: the primary goes away under a running receiver.
//  - stopped with -m immediate (a crash: no shutdown checkpoint, walsenders killed) and started
//    again, repeatedly, while WAL is being written: the receiver reconnects by itself, after
//    crash recovery, and holds everything it reported flushed;
//  - promoted away: the primary is stopped and its standby promoted (once, or twice in the full
//    run), the proxy the receiver connects through now leads to the new primary, and the receiver
//    follows the new timeline by itself: the archive shows both (all) timelines and their history
//    files, every file identical to the servers' own.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PgCluster } from '../harness/pg.js';
import { TcpProxy } from '../harness/proxy.js';
import { runCli } from '../support/cli.js';
import { lsnOf } from '../support/walfiles.js';
import { openArchive } from '../../src/storage/open.js';
import type { ArchiveStore } from '../../src/storage/types.js';
import { Cleanup, SEG, WalWriter, createFaultPrimary, createSlot, flushLsn, receivedLsn, receiverArgs, sleep, slotRestartLsn, startReceiver, tail, waitUntil } from './helpers.js';
import { fileRng, iterations, recordRow, type Rng } from './report.js';
import { formatLsn, pgWalReference, verifyWal, type WalRange } from './verify.js';

function streamStarts(stderr: string): number {
  return stderr.match(/starting log streaming/g)?.length ?? 0;
}

describe('fault: the primary stopped with -m immediate, or promoted away', () => {
  let rng: Rng;
  const cleanup = new Cleanup();
  const clusters: PgCluster[] = [];
  const stores: ArchiveStore[] = [];

  beforeAll(() => {
    rng = fileRng('primary');
  });
  afterAll(async () => {
    await cleanup.run();
    for (const st of stores) await st.close();
    for (const c of clusters) await c.destroy();
  });

  const RESTARTS = iterations(2, 8);
  it(
    'primary stopped with -m immediate and started again',
    async () => {
      const primary = await createFaultPrimary('fault-immediate');
      clusters.push(primary);
      const slot = 'immediate';
      const first = ((await createSlot(primary, slot)) / BigInt(SEG)) * BigInt(SEG);
      const dir = cleanup.dir('immediate');
      const args = { dir, conn: primary.connectionString(), slot, extra: ['-s', '1'] };
      const reference = pgWalReference(primary.walDir);
      const cache = new Map<string, number>();
      const losses: string[] = [];
      const writer = new WalWriter(() => primary, rng).start();
      const proc = startReceiver(cleanup, args);
      try {
        await proc.waitForOutput(/starting log streaming/);
        for (let i = 1; i <= RESTARTS; i++) {
          await sleep(rng.int(500, 2500));
          const before = streamStarts(proc.stderr);
          await primary.stop('immediate');
          await sleep(rng.int(200, 3000));
          await primary.start();
          try {
            await waitUntil(() => streamStarts(proc.stderr) > before, 90_000, 'the receiver to stream again after the restart');
            const target = await flushLsn(primary);
            await waitUntil(async () => (await receivedLsn(primary, slot)) >= target, 90_000, `the receiver to catch up to ${formatLsn(target)}`);
          } catch (err) {
            losses.push(`restart ${i}: ${(err as Error).message}\n${tail(proc.stderr)}`);
            break;
          }
          const flushed = await slotRestartLsn(primary, slot);
          const v = await verifyWal({ segSize: SEG, reference, dirs: [dir], ranges: [{ tli: 1, from: first, to: flushed }], cache });
          for (const l of v.losses) losses.push(`restart ${i}: ${l}`);
        }
      } finally {
        await writer.stop();
      }
      const endpos = await flushLsn(primary);
      await waitUntil(async () => (await receivedLsn(primary, slot)) >= endpos, 60_000, `the receiver to reach ${formatLsn(endpos)}`).catch((err: Error) => losses.push(err.message));
      proc.kill('SIGTERM');
      const res = await proc.done;
      if (res.code !== 0) losses.push(`the receiver exited with ${res.code} / ${res.signal} on SIGTERM:\n${tail(res.stderr)}`);
      // SIGTERM: what was received is fsynced and reported in a last status update.
      const reported = await slotRestartLsn(primary, slot);
      if (reported < endpos) losses.push(`after SIGTERM the slot is at ${formatLsn(reported)}, short of ${formatLsn(endpos)} received:\n${tail(res.stderr)}`);
      const v = await verifyWal({ segSize: SEG, reference, dirs: [dir], ranges: [{ tli: 1, from: first, to: endpos }] });
      losses.push(...v.losses);
      recordRow({ fault: 'primary stopped -m immediate, started again', iterations: RESTARTS, bytesVerified: v.bytesVerified, losses: losses.length });
      expect(losses).toEqual([]);
      expect(writer.errors, 'the writer saw the primary down').toBeGreaterThan(0);
    },
    240_000 + RESTARTS * 30_000,
  );

  const PROMOTIONS = iterations(1, 2);
  it(
    `primary promoted away (${PROMOTIONS} promotion${PROMOTIONS > 1 ? 's' : ''}), receiver led to the new primary`,
    async () => {
      let current = await createFaultPrimary('fault-promote');
      clusters.push(current);
      let next = await current.createStandby({ name: 'fault-promote-sb1' });
      clusters.push(next);
      const all = [current, next];
      const proxy = await TcpProxy.start(current.port);
      cleanup.defer(() => proxy.stop());
      const slot = 'promote';
      const first = ((await createSlot(current, slot)) / BigInt(SEG)) * BigInt(SEG);
      const dir = cleanup.dir('promote-spool');
      const archive = cleanup.dir('promote-archive');
      const store = await openArchive(archive);
      stores.push(store);
      const args = { dir, conn: `postgresql://postgres@127.0.0.1:${proxy.port}/postgres`, slot, archive, extra: ['-s', '1', '--partial-interval', '1'] };
      const losses: string[] = [];
      const writer = new WalWriter(() => current, rng).start();
      const proc = startReceiver(cleanup, args);
      let tli = 1;
      try {
        await proc.waitForOutput(/starting log streaming/);
        for (let p = 1; p <= PROMOTIONS; p++) {
          await sleep(rng.int(1000, 3000));
          // A planned switchover: the old primary shuts down cleanly (its walsenders hand the
          // standby and the receiver everything first), the standby takes over.
          await writer.pause();
          await current.stop('fast');
          await next.promote();
          tli++;
          // Slots are not copied to standbys: the operator creates the receiver's on the new primary.
          await createSlot(next, slot, false);
          const old = current;
          current = next;
          proxy.setUpstream(current.port);
          proxy.drop();
          writer.resume();
          if (p < PROMOTIONS) {
            next = await current.createStandby({ name: `fault-promote-sb${p + 1}` });
            clusters.push(next);
            all.push(next);
          }
          try {
            await proc.waitForOutput(new RegExp(`starting log streaming at \\S+ \\(timeline ${tli}\\)`), 90_000);
            const target = await flushLsn(current);
            await waitUntil(async () => (await receivedLsn(current, slot)) >= target, 90_000, `the receiver to catch up on timeline ${tli}`);
          } catch (err) {
            losses.push(`promotion ${p} (from ${old.name}): ${(err as Error).message}\n${tail(proc.stderr)}`);
            break;
          }
        }
      } finally {
        await writer.stop();
      }
      const endpos = await flushLsn(current);
      await waitUntil(async () => (await receivedLsn(current, slot)) >= endpos, 60_000, `the receiver to reach ${formatLsn(endpos)}`).catch((err: Error) => losses.push(err.message));
      proc.kill('SIGTERM');
      const res = await proc.done;
      if (res.code !== 0) losses.push(`the receiver exited with ${res.code} / ${res.signal} on SIGTERM:\n${tail(res.stderr)}`);
      // SIGTERM: what was received is fsynced and reported in a last status update.
      const reported = await slotRestartLsn(current, slot);
      if (reported < endpos) losses.push(`after SIGTERM the slot is at ${formatLsn(reported)}, short of ${formatLsn(endpos)} received:\n${tail(res.stderr)}`);
      // A last run to the end position archives everything finished (exit 0 waits for it).
      const fin = await runCli(receiverArgs({ ...args, extra: [...args.extra, '-E', formatLsn(endpos), '-n'] }), { timeoutMs: 180_000 });
      if (fin.code !== 0) losses.push(`final run to ${formatLsn(endpos)} exited with ${fin.code}:\n${tail(fin.stderr)}`);

      // Timeline by timeline: TL n runs from the previous switch point to its own (from the history file).
      const history = readFileSync(join(current.walDir, `${tli.toString(16).toUpperCase().padStart(8, '0')}.history`), 'utf8');
      const switches = history
        .split('\n')
        .filter((l) => /^\d+\t/.test(l))
        .map((l) => lsnOf(l.split('\t')[1]!));
      expect(switches).toHaveLength(tli - 1);
      const ranges: WalRange[] = [];
      let from = first;
      for (let t = 1; t <= tli; t++) {
        const to = t < tli ? switches[t - 1]! : endpos;
        ranges.push({ tli: t, from, to });
        from = to;
      }
      const v = await verifyWal({
        segSize: SEG,
        reference: pgWalReference(...all.map((c) => c.walDir)),
        dirs: [dir],
        store,
        ranges,
        // The old timelines' last segments stay .partial (as with pg_receivewal): complete ones are archived.
        archivedTo: ranges,
      });
      losses.push(...v.losses);
      const names = (await store.list()).map((o) => o.name);
      for (let t = 2; t <= tli; t++) {
        const h = `${t.toString(16).toUpperCase().padStart(8, '0')}.history`;
        if (!names.includes(h)) losses.push(`the archive has no ${h}`);
      }
      for (let t = 1; t <= tli; t++) {
        const prefix = t.toString(16).toUpperCase().padStart(8, '0');
        if (!names.some((n) => n.startsWith(prefix) && /^[0-9A-F]{24}$/.test(n))) losses.push(`the archive has no segment of timeline ${t}`);
      }
      recordRow({ fault: 'primary promoted away, receiver follows', iterations: PROMOTIONS, bytesVerified: v.bytesVerified, losses: losses.length });
      expect(losses).toEqual([]);
    },
    300_000 + PROMOTIONS * 60_000,
  );
});
