// Fault 3: the primary goes away under a running receiver.
//  - stopped with -m immediate (a crash: no shutdown checkpoint, walsenders killed) and started
//    again, repeatedly, while WAL is being written: the receiver reconnects by itself, after
//    crash recovery, and holds everything it reported flushed;
//  - promoted away: the primary is stopped and its standby promoted (once, or twice in the full
//    run), the proxy the receiver connects through now leads to the new primary, and the receiver
//    follows the new timeline by itself: the archive shows both (all) timelines and their history
//    files, every file identical to the servers' own.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PgCluster } from '../harness/pg.js';
import { TcpProxy } from '../harness/proxy.js';
import { lsnOf } from '../support/walfiles.js';
import {
  SEG,
  WalWriter,
  createFaultPrimary,
  createSlot,
  faultSuite,
  flushLsn,
  receiveTo,
  sleep,
  slotRestartLsn,
  slotRun,
  startReceiver,
  stopReceiver,
  streamStarts,
  tail,
  waitForReceived,
  waitUntil,
} from './helpers.js';
import { iterations, recordRow } from './report.js';
import { formatLsn, pgWalReference, verifyWal, type WalRange } from './verify.js';

describe('fault: the primary stopped with -m immediate, or promoted away', () => {
  // Each test makes its own primary.
  const suite = faultSuite('primary', {});
  const { cleanup } = suite;
  /** Destroyed at cleanup, once the receivers are gone. */
  const keep = (c: PgCluster): void => cleanup.defer(() => c.destroy());

  const RESTARTS = iterations(2, 8);
  it(
    'primary stopped with -m immediate and started again',
    async () => {
      const primary = await createFaultPrimary('fault-immediate');
      keep(primary);
      const { slot, first, dir, reference, cache, losses } = await slotRun(primary, cleanup, 'immediate', 'immediate');
      const args = { dir, conn: primary.connectionString(), slot, extra: ['-s', '1'] };
      const rng = suite.rng;
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
            await waitForReceived(primary, slot, target, 90_000, `the receiver to catch up to ${formatLsn(target)}`);
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
      const { endpos } = await stopReceiver(primary, proc, slot, losses);
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
      keep(current);
      let next = await current.createStandby({ name: 'fault-promote-sb1' });
      keep(next);
      const all = [current, next];
      const proxy = await TcpProxy.start(current.port);
      cleanup.defer(() => proxy.stop());
      const { slot, first, dir, losses } = await slotRun(current, cleanup, 'promote', 'promote-spool');
      const archive = cleanup.dir('promote-archive');
      const store = await suite.openStore(archive);
      const args = { dir, conn: `postgresql://postgres@127.0.0.1:${proxy.port}/postgres`, slot, archive, extra: ['-s', '1', '--partial-interval', '1'] };
      const rng = suite.rng;
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
            keep(next);
            all.push(next);
          }
          try {
            await proc.waitForOutput(new RegExp(`starting log streaming at \\S+ \\(timeline ${tli}\\)`), 90_000);
            const target = await flushLsn(current);
            await waitForReceived(current, slot, target, 90_000, `the receiver to catch up on timeline ${tli}`);
          } catch (err) {
            losses.push(`promotion ${p} (from ${old.name}): ${(err as Error).message}\n${tail(proc.stderr)}`);
            break;
          }
        }
      } finally {
        await writer.stop();
      }
      const { endpos } = await stopReceiver(current, proc, slot, losses);
      // A last run to the end position archives everything finished (exit 0 waits for it).
      await receiveTo(args, endpos, losses);

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
