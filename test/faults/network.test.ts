// Fault 2: the network between walstream receive and the primary, through a TCP proxy: cut (every
// connection reset), stalled (nothing forwarded either way for longer than wal_sender_timeout,
// 5 s here, and than the receiver's -s 1 status interval) and restored, and cut with the
// reconnection attempt itself stalled. After each fault the receiver must be streaming again by
// itself (its slot catching up with the primary) and hold everything it reported flushed; at the
// end it stops on SIGTERM with status 0 and the whole range verifies against pg_wal.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import type { PgCluster } from '../harness/pg.js';
import type { ArchiveStore } from '../../src/storage/types.js';
import { SEG, WalWriter, faultSuite, flushLsn, sleep, slotRestartLsn, slotRun, startReceiver, stopReceiver, streamStarts, tail, waitForReceived, waitUntil } from './helpers.js';
import { iterations, recordRow, type Rng } from './report.js';
import { formatLsn, verifyWal } from './verify.js';

type NetFault = 'cut' | 'stall' | 'cut, reconnect stalled' | 'flapping';
const FAULTS: NetFault[] = ['cut', 'stall', 'cut, reconnect stalled', 'flapping'];

/** How long a stall lasts: past wal_sender_timeout (5 s) and the -s 1 status interval. */
const STALL_MS = 7000;

/** Bounded runs every kind once; full runs `n` picks, every kind at least once. */
function schedule(rng: Rng, n: number, kinds: NetFault[]): NetFault[] {
  const out = [...kinds];
  while (out.length < n) out.push(rng.pick(kinds));
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

function replicationTimeouts(pg: PgCluster): number {
  return readFileSync(pg.logFile, 'utf8').match(/terminating walsender process due to replication timeout/g)?.length ?? 0;
}

describe('fault: the network between receiver and primary cut, stalled and restored', () => {
  const suite = faultSuite('network', { primary: { name: 'fault-net', conf: { wal_sender_timeout: '5s' } }, proxy: true });

  const modes = [
    { kind: 'plain', label: 'network cut/stall: plain directory, --synchronous', extra: ['--synchronous', '-s', '1'], n: iterations(4, 14) },
    { kind: 'archive', label: 'network cut/stall: --archive local dir', extra: ['-s', '1', '--partial-interval', '1'], n: iterations(2, 8) },
  ];

  for (const mode of modes) {
    it(
      mode.label,
      async () => {
        const { primary, proxy, rng, cleanup } = suite;
        const { slot, first, dir, reference, cache, losses } = await slotRun(primary, cleanup, `net_${mode.kind}`, `net-${mode.kind}`);
        let archive: string | undefined;
        let store: ArchiveStore | undefined;
        if (mode.kind === 'archive') {
          archive = cleanup.dir('net-archive');
          store = await suite.openStore(archive);
        }
        const conn = `postgresql://postgres@127.0.0.1:${proxy.port}/postgres`;
        const writer = new WalWriter(() => primary, rng).start();
        const proc = startReceiver(cleanup, { dir, conn, slot, archive, extra: mode.extra });
        const kinds = mode.kind === 'plain' ? FAULTS : (['cut', 'stall'] as NetFault[]);
        const plan = schedule(rng, mode.n, kinds);
        try {
          await proc.waitForOutput(/starting log streaming/);
          for (const [i, fault] of plan.entries()) {
            await sleep(rng.int(300, 2000));
            const streamsBefore = streamStarts(proc.stderr);
            const timeoutsBefore = replicationTimeouts(primary);
            switch (fault) {
              case 'cut':
                proxy.drop();
                break;
              case 'stall':
                proxy.freeze();
                await sleep(STALL_MS + rng.int(0, 2000));
                proxy.resume();
                break;
              case 'cut, reconnect stalled':
                proxy.freeze();
                proxy.drop();
                await sleep(rng.int(1000, STALL_MS));
                proxy.resume();
                break;
              case 'flapping':
                for (let k = 0; k < 4; k++) {
                  proxy.drop();
                  await sleep(rng.int(50, 600));
                }
                break;
            }
            // Restored: the receiver must stream again by itself (a new connection: every fault
            // ended the old one) and catch up with the primary.
            const restored = Date.now();
            try {
              await waitUntil(() => streamStarts(proc.stderr) > streamsBefore, 90_000, `the receiver to stream again after a ${fault}`);
              const target = await flushLsn(primary);
              await waitForReceived(primary, slot, target, 90_000, `the receiver to catch up to ${formatLsn(target)} after a ${fault}`);
            } catch (err) {
              losses.push(`${fault} ${i + 1}: ${(err as Error).message}\n${tail(proc.stderr)}`);
              break;
            }
            // A stall ended the connection on the server's side, by wal_sender_timeout.
            if (fault === 'stall') expect(replicationTimeouts(primary), 'walsender timeouts in the server log').toBeGreaterThan(timeoutsBefore);
            const flushed = await slotRestartLsn(primary, slot);
            const v = await verifyWal({ segSize: SEG, reference, dirs: [dir], store, ranges: [{ tli: 1, from: first, to: flushed }], cache });
            for (const l of v.losses) losses.push(`${fault} ${i + 1}: ${l}`);
            console.log(`[faults] network ${mode.kind} ${i + 1}/${plan.length}: ${fault}, streaming again after ${Date.now() - restored} ms`);
          }
        } finally {
          proxy.resume();
          await writer.stop();
        }
        const { endpos, reported } = await stopReceiver(primary, proc, slot, losses);
        const v = await verifyWal({ segSize: SEG, reference, dirs: [dir], store, ranges: [{ tli: 1, from: first, to: reported > endpos ? reported : endpos }] });
        losses.push(...v.losses);
        recordRow({ fault: mode.label, iterations: plan.length, bytesVerified: v.bytesVerified, losses: losses.length });
        expect(losses).toEqual([]);
        expect(proxy.stats.dropped).toBeGreaterThan(0);
      },
      180_000 + mode.n * 40_000,
    );
  }
});
