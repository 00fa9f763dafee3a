// Fault: the network path to the primary goes silent for good while walstream receives (a dead
// NAT entry, a pulled cable): the proxy black-holes the open connection (nothing forwarded either
// way, no reset, never restored) while new connections pass. The receiver runs with
// --receive-timeout 3: it must give the dead connection up by itself, reconnect (its slot is
// held by the old walsender until the server's wal_sender_timeout, 5 s here, ends it) and
// stream again within a bound, holding everything it reported flushed; at the end it stops on
// SIGTERM with status 0 and the whole range verifies against pg_wal.
import { describe, expect, it } from 'vitest';
import type { ArchiveStore } from '../../src/storage/types.js';
import { SEG, WalWriter, faultSuite, flushLsn, slotRestartLsn, slotRun, sleep, startReceiver, stopReceiver, streamStarts, tail, waitForReceived, waitUntil } from './helpers.js';
import { iterations, recordRow } from './report.js';
import { formatLsn, verifyWal } from './verify.js';

/** From the black hole to streaming again: 3 s to notice, up to 5 s for the server to free the slot, the backoff. */
const RECOVERY_BOUND_MS = 45_000;

function deadConnections(stderr: string): number {
  return stderr.match(/no message from the server for \d+ s: connection considered dead/g)?.length ?? 0;
}

describe('fault: the connection to the primary black-holed for good', () => {
  const suite = faultSuite('dead-connection', { primary: { name: 'fault-dead', conf: { wal_sender_timeout: '5s' } }, proxy: true });

  const modes = [
    { kind: 'plain', label: 'dead connection: plain directory, --synchronous, --receive-timeout 3', extra: ['--synchronous', '-s', '1'], n: iterations(3, 10) },
    { kind: 'archive', label: 'dead connection: --archive local dir, --receive-timeout 3', extra: ['-s', '1', '--partial-interval', '1'], n: iterations(2, 6) },
  ];

  for (const mode of modes) {
    it(
      mode.label,
      async () => {
        const { primary, proxy, rng, cleanup } = suite;
        const { slot, first, dir, reference, cache, losses } = await slotRun(primary, cleanup, `dead_${mode.kind}`, `dead-${mode.kind}`);
        let archive: string | undefined;
        let store: ArchiveStore | undefined;
        if (mode.kind === 'archive') {
          archive = cleanup.dir('dead-archive');
          store = await suite.openStore(archive);
        }
        const conn = `postgresql://postgres@127.0.0.1:${proxy.port}/postgres?sslmode=disable`;
        const writer = new WalWriter(() => primary, rng).start();
        const proc = startReceiver(cleanup, { dir, conn, slot, archive, extra: [...mode.extra, '--receive-timeout', '3'] });
        let worst = 0;
        try {
          await proc.waitForOutput(/starting log streaming/);
          for (let i = 0; i < mode.n; i++) {
            await sleep(rng.int(500, 3000));
            const streamsBefore = streamStarts(proc.stderr);
            const deadBefore = deadConnections(proc.stderr);
            const silenced = proxy.blackhole();
            const at = Date.now();
            try {
              expect(silenced, 'connections black-holed').toBe(1);
              await waitUntil(
                () => streamStarts(proc.stderr) > streamsBefore,
                RECOVERY_BOUND_MS,
                'the receiver to stream again over a new connection',
                () => tail(proc.stderr),
              );
              const took = Date.now() - at;
              worst = Math.max(worst, took);
              expect(deadConnections(proc.stderr), 'the dead connection named in the log').toBeGreaterThan(deadBefore);
              const target = await flushLsn(primary);
              await waitForReceived(primary, slot, target, 60_000, `the receiver to catch up to ${formatLsn(target)}`);
              console.log(`[faults] dead connection ${mode.kind} ${i + 1}/${mode.n}: streaming again after ${took} ms`);
            } catch (err) {
              losses.push(`black hole ${i + 1}: ${(err as Error).message}\n${tail(proc.stderr)}`);
              break;
            }
            const flushed = await slotRestartLsn(primary, slot);
            const v = await verifyWal({ segSize: SEG, reference, dirs: [dir], store, ranges: [{ tli: 1, from: first, to: flushed }], cache });
            for (const l of v.losses) losses.push(`black hole ${i + 1}: ${l}`);
          }
        } finally {
          await writer.stop();
        }
        const { endpos, reported } = await stopReceiver(primary, proc, slot, losses);
        const v = await verifyWal({ segSize: SEG, reference, dirs: [dir], store, ranges: [{ tli: 1, from: first, to: reported > endpos ? reported : endpos }] });
        losses.push(...v.losses);
        recordRow({ fault: mode.label, iterations: mode.n, bytesVerified: v.bytesVerified, losses: losses.length });
        console.log(`[faults] dead connection ${mode.kind}: slowest recovery ${worst} ms (bound ${RECOVERY_BOUND_MS} ms)`);
        expect(losses).toEqual([]);
      },
      120_000 + mode.n * 60_000,
    );
  }
});
