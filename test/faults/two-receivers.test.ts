// Fault 8: two receivers, one archive (the HA layout of docs/operations.md). Two `walstream
// receive --archive` processes, each with its own spool and its own slot on the primary, archive
// into the same archive (an S3 bucket prefix, or one directory as over a shared filesystem) while
// WAL is written. At random (seeded) one of them is killed with SIGKILL (and restarted), has its
// network to the primary cut for a while, or (S3) has its S3 access cut for a while: each through
// a proxy of its own, so the other receiver carries on. After every fault, everything up to the
// position the faulted receiver had reported flushed to its slot must be in its spool or in the
// archive, byte-identical to pg_wal. At the end, after a WAL switch, both run to the primary's
// flush position: the archive alone must hold every segment byte-identical to pg_wal, with
// nothing quarantined (identical objects from the two are never a conflict, and their pieces of
// the segment in progress never mix), and `walstream status` must name both writers.
import { afterAll, describe, expect, it } from 'vitest';
import type { PgCluster } from '../harness/pg.js';
import { TcpProxy } from '../harness/proxy.js';
import { runCli } from '../support/cli.js';
import type { CliProcess } from '../support/cli.js';
import type { ArchiveStore } from '../../src/storage/types.js';
import { SEG, faultSuite, flushLsn, receiveTo, sleep, slotRestartLsn, slotRun, startReceiver, tail, type ReceiverArgs, type SlotRun } from './helpers.js';
import { iterations, recordRow, type Rng } from './report.js';
import { formatLsn, verifyWal } from './verify.js';

type Fault = 'SIGKILL' | 'network cut' | 'S3 cut';

const FAULTS = iterations(20, 60);

/**
 * Bursts of generated WAL with few switches (each segment in progress for a second or two, so
 * both receivers ship pieces of the same segment), until stopped.
 */
function steadyWal(pg: PgCluster, rng: Rng): { stop(): Promise<void> } {
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      try {
        await pg.generateWal(rng.int(16 * 1024, 160 * 1024));
        if (rng() < 0.03) await pg.switchWal();
      } catch {
        await sleep(200);
      }
      await sleep(rng.int(50, 250));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
    },
  };
}

interface Receiver {
  label: string;
  run: SlotRun;
  args: ReceiverArgs;
  /** Its own way to the primary, and (S3) to the S3 server. */
  pgProxy: TcpProxy;
  s3Proxy: TcpProxy | undefined;
  proc: CliProcess | undefined;
  /** Every run's process (their output tells which pieces each shipped). */
  procs: CliProcess[];
  faults: Record<Fault, number>;
}

describe('fault: two receivers archiving into one archive, either one failing', () => {
  const suite = faultSuite('two-receivers', { primary: { name: 'fault-two' }, s3: true });
  const proxies: TcpProxy[] = [];
  afterAll(async () => {
    for (const p of proxies) await p.stop();
  });

  const modes = [
    { kind: 'local', label: 'two receivers, one archive: local directory' },
    { kind: 's3', label: 'two receivers, one archive: S3' },
  ] as const;

  for (const mode of modes) {
    it(
      mode.label,
      async () => {
        const { primary, s3, rng, cleanup } = suite;
        const losses: string[] = [];
        let archive: string;
        let s3Port: number | undefined;
        if (mode.kind === 's3') {
          archive = `s3://${s3.bucket}/${s3.prefix}two-receivers/`;
          s3Port = Number(new URL(s3.endpoint).port);
        } else {
          archive = cleanup.dir('two-archive');
        }
        const store: ArchiveStore = await suite.openStore(archive);
        const receivers: Receiver[] = [];
        for (const label of ['ws1', 'ws2']) {
          const run = await slotRun(primary, cleanup, `two_${mode.kind}_${label}`, `two-${mode.kind}-${label}`);
          const pgProxy = await TcpProxy.start(primary.port);
          proxies.push(pgProxy);
          const s3Proxy = s3Port !== undefined ? await TcpProxy.start(s3Port) : undefined;
          if (s3Proxy) proxies.push(s3Proxy);
          const args: ReceiverArgs = {
            dir: run.dir,
            conn: `postgresql://postgres@127.0.0.1:${pgProxy.port}/postgres?application_name=${label}`,
            slot: run.slot,
            archive,
            ...(s3Proxy ? { s3Endpoint: `http://127.0.0.1:${s3Proxy.port}`, env: suite.s3Env() } : {}),
            // A short receive timeout: a receiver whose network is cut notices it soon.
            extra: ['-s', '1', '--partial-interval', '1', '--receive-timeout', '5'],
          };
          receivers.push({ label, run, args, pgProxy, s3Proxy, proc: undefined, procs: [], faults: { SIGKILL: 0, 'network cut': 0, 'S3 cut': 0 } });
        }
        const first = receivers.map((r) => r.run.first).reduce((a, b) => (a < b ? a : b));
        /** Where the archive must hold WAL from: the start, then the cleanup's cutoff. */
        let floor = first;
        const s3Args = mode.kind === 's3' ? ['--s3-endpoint', s3.endpoint] : [];
        const s3Env = mode.kind === 's3' ? suite.s3Env() : undefined;
        const start = (r: Receiver): void => {
          r.proc = startReceiver(cleanup, r.args);
          r.procs.push(r.proc);
        };
        /** Everything `r` reported flushed to its slot is in its spool or the archive, as in pg_wal. */
        const checkFlushed = async (r: Receiver, what: string): Promise<void> => {
          const flushed = await slotRestartLsn(primary, r.run.slot);
          if (flushed <= r.run.created) return;
          const from = r.run.first > floor ? r.run.first : floor;
          if (flushed <= from) return;
          const v = await verifyWal({ segSize: SEG, reference: r.run.reference, dirs: [r.run.dir], store, ranges: [{ tli: 1, from, to: flushed }], cache: r.run.cache });
          for (const l of v.losses) losses.push(`${what} (${r.label}'s slot at ${formatLsn(flushed)}): ${l}`);
        };

        const kinds: Fault[] = mode.kind === 's3' ? ['SIGKILL', 'network cut', 'S3 cut'] : ['SIGKILL', 'network cut'];
        const writer = steadyWal(primary, rng);
        for (const r of receivers) start(r);
        try {
          await Promise.all(receivers.map((r) => r.proc!.waitForOutput(/starting log streaming/)));
          for (let i = 1; i <= FAULTS; i++) {
            await sleep(rng.int(200, 1000));
            const r = rng.pick(receivers);
            // Every kind at least once on each receiver over the first faults, then at random.
            const fault = i <= kinds.length * 2 ? kinds[(i - 1) % kinds.length]! : rng.pick(kinds);
            const what = `fault ${i} (${fault} of ${r.label})`;
            const proc = r.proc!;
            if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
              losses.push(`before ${what}: ${r.label} exited by itself (status ${proc.child.exitCode}):\n${tail(proc.stderr)}`);
              break;
            }
            r.faults[fault]++;
            if (i === Math.ceil(FAULTS / 2)) {
              // Retention while both write: everything before the segment of the slower slot goes.
              const slowest = (await Promise.all(receivers.map((x) => slotRestartLsn(primary, x.run.slot)))).reduce((a, b) => (a < b ? a : b));
              const cutoff = (slowest / BigInt(SEG)) * BigInt(SEG);
              if (cutoff > first) {
                const name = `00000001${(cutoff >> 32n).toString(16).toUpperCase().padStart(8, '0')}${((cutoff & 0xffffffffn) / BigInt(SEG)).toString(16).toUpperCase().padStart(8, '0')}`;
                const res = await runCli(['cleanup', '--archive', archive, '--before', name, ...s3Args], { env: s3Env });
                if (res.code !== 0) losses.push(`cleanup --before ${name} exited with ${res.code}: ${tail(res.stderr)}`);
                else floor = cutoff;
                console.log(`[faults] ${mode.label}: cleanup --before ${name} while both write`);
              }
            }
            switch (fault) {
              case 'SIGKILL': {
                proc.kill('SIGKILL');
                const res = await proc.done;
                expect(res.signal).toBe('SIGKILL');
                // Gone: its last report to the primary stands, and must be held.
                await checkFlushed(r, what);
                start(r);
                // Streaming again before the next fault: a first connection that fails ends the
                // receiver by design (as pg_receivewal's; a service manager starts it again).
                await r.proc!.waitForOutput(/starting log streaming/);
                break;
              }
              case 'network cut': {
                const flushedBefore = await slotRestartLsn(primary, r.run.slot);
                r.pgProxy.freeze();
                r.pgProxy.drop();
                await sleep(rng.int(300, 2500));
                await checkFlushed(r, what);
                r.pgProxy.resume();
                if ((await slotRestartLsn(primary, r.run.slot)) < flushedBefore) losses.push(`${what}: the slot went back`);
                break;
              }
              case 'S3 cut': {
                r.s3Proxy!.freeze();
                r.s3Proxy!.drop();
                await sleep(rng.int(500, 3000));
                await checkFlushed(r, what);
                r.s3Proxy!.resume();
                break;
              }
            }
          }
        } finally {
          for (const r of receivers) {
            r.pgProxy.resume();
            r.s3Proxy?.resume();
          }
          await writer.stop();
        }
        // The end: a WAL switch, both stop, then both run to the primary's flush position at
        // once (writing the same objects at the same time), and the archive alone must hold it all.
        await primary.switchWal();
        const endpos = await flushLsn(primary);
        for (const r of receivers) {
          const proc = r.proc!;
          if (proc.child.exitCode !== null || proc.child.signalCode !== null) losses.push(`at the end: ${r.label} had exited by itself (status ${proc.child.exitCode}):\n${tail(proc.stderr)}`);
          proc.kill('SIGKILL');
          await proc.done;
          await checkFlushed(r, 'at the end');
        }
        await Promise.all(receivers.map((r) => receiveTo(r.args, endpos, losses)));
        const archivedTo = (endpos / BigInt(SEG)) * BigInt(SEG);
        const v = await verifyWal({
          segSize: SEG,
          reference: receivers[0]!.run.reference,
          store,
          ranges: [{ tli: 1, from: floor, to: archivedTo }],
          archivedTo: [{ tli: 1, from: floor, to: archivedTo }],
        });
        losses.push(...v.losses);
        // Status names both writers of the archive.
        const status = await runCli(['status', '--archive', archive, '--json', ...s3Args], { env: s3Env });
        if (status.code !== 0) losses.push(`status exited with ${status.code}: ${tail(status.stderr)}`);
        else {
          const writers = (JSON.parse(status.stdout) as { writers?: { slot?: string }[] }).writers ?? [];
          for (const r of receivers) if (!writers.some((w) => w.slot === r.run.slot)) losses.push(`status does not list the writer on slot ${r.run.slot}: ${JSON.stringify(writers)}`);
        }
        // How often both shipped pieces of the same segment (each going on after the other's).
        const shipped = receivers.map((r) => new Set(r.procs.flatMap((p) => [...p.stderr.matchAll(/archived ([0-9A-F]{24})\.partial\./g)].map((m) => m[1]!))));
        const both = [...shipped[0]!].filter((seg) => shipped[1]!.has(seg)).length;
        const done = receivers
          .map(
            (r) =>
              `${r.label}: ${Object.entries(r.faults)
                .map(([k, n]) => `${n} ${k}`)
                .join(', ')}`,
          )
          .join('; ');
        console.log(`[faults] ${mode.label}: ${done}; ${both} segments with pieces from both; ${v.bytesVerified} bytes verified up to ${formatLsn(archivedTo)}`);
        recordRow({ fault: mode.label, iterations: FAULTS, bytesVerified: v.bytesVerified, losses: losses.length });
        expect(losses).toEqual([]);
        expect(archivedTo - floor).toBeGreaterThan(BigInt(FAULTS * SEG) / 8n);
      },
      120_000 + FAULTS * 15_000,
    );
  }
});
