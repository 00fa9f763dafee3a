// A server that lies (through test/harness/tamper-proxy.ts, between walstream and a real
// PostgreSQL server): XLogData that skips or repeats bytes, a page header of another database
// system, a timeline number that goes down (in IDENTIFY_SYSTEM, and as the next timeline at the
// end of one), a history file that does not parse. Each stops the receiver (the real CLI) with
// exit status 1 and one clear line naming the problem, without retrying: retrying cannot make a
// server that sends such things trustworthy (design rule 5), and a receiver quietly looping on
// it would look alive while archiving nothing. The exception is IDENTIFY_SYSTEM reporting a
// timeline below ours: a standby behind a moved address during a failover says that too, so it
// is refused and retried (pg_receivewal does the same), writing nothing. Afterwards the directory (and the archive) holds
// only bytes identical to the servers' pg_wal: every finished segment and history file equal to
// the server's, every .partial a prefix of the server's segment followed by zeros, covering what
// was received before the lie.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../harness/pg.js';
import { TamperProxy, once, readXLogData, rowOf, rowWithField, xlogDataMessage, xlogFrom, type Tamper } from '../harness/tamper-proxy.js';
import { runCli, startCli, type CliResult } from '../support/cli.js';
import { lsnOf, segName } from '../support/walfiles.js';
import { pgWalReference, verifyWal, type WalRange } from '../faults/verify.js';
import { openArchive } from '../../src/storage/open.js';

const SEG = 1024 * 1024;
const PAGE = 8192;

function segStart(lsn: bigint): bigint {
  return (lsn / BigInt(SEG)) * BigInt(SEG);
}

/** Exit status 1 and exactly one line on stderr (no -v), matching `pattern`. */
function oneLineError(res: CliResult, pattern: RegExp): void {
  expect(res.code, res.stderr).toBe(1);
  const lines = res.stderr.trim().split('\n');
  expect(lines, res.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(pattern);
}

/** Every file of a directory with its bytes. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of readdirSync(dir).sort()) out[f] = readFileSync(join(dir, f)).toString('base64');
  return out;
}

describe('receive against a server that lies', () => {
  let primary: PgCluster;
  /** A standby of the primary, promoted: timeline 2, with timeline 1's WAL before the switch. */
  let promoted: PgCluster;
  let switchPoint: bigint;
  const dirs: string[] = [];
  const proxies: TamperProxy[] = [];
  const newDir = (p: string): string => {
    const d = mkdtempSync(join(tmpdir(), `walstream-hostile-${p}-`));
    dirs.push(d);
    return d;
  };
  const proxyTo = async (pg: PgCluster, t: Tamper): Promise<{ proxy: TamperProxy; conn: string }> => {
    const proxy = await TamperProxy.start(pg.port);
    proxies.push(proxy);
    proxy.tamper(t);
    return { proxy, conn: `host=127.0.0.1 port=${proxy.port} user=postgres sslmode=disable` };
  };
  const flush = async (pg: PgCluster): Promise<bigint> => lsnOf(await pg.currentLsn());
  const reference = () => pgWalReference(primary.walDir, promoted.walDir);
  const verify = async (ranges: WalRange[], dir: string, archive?: string): Promise<void> => {
    const store = archive !== undefined ? await openArchive(archive) : undefined;
    try {
      const v = await verifyWal({ segSize: SEG, reference: reference(), dirs: [dir], store, ranges });
      expect(v.losses).toEqual([]);
      expect(v.bytesVerified).toBeGreaterThan(0);
    } finally {
      await store?.close();
    }
  };

  beforeAll(async () => {
    primary = await PgCluster.create({ name: 'hostile', conf: { wal_keep_size: '1GB', max_wal_size: '256MB', checkpoint_timeout: '1h' } });
    promoted = await primary.createStandby({ name: 'hostile-tl2' });
    const before = await primary.generateWal(SEG + SEG / 3);
    await promoted.waitForReplay(before);
    await promoted.promote();
    await promoted.generateWal(SEG / 2);
    const history = readFileSync(join(promoted.walDir, '00000002.history'), 'utf8');
    switchPoint = lsnOf(/^1\t(\S+)/.exec(history)![1]!);
  }, 180_000);
  afterAll(async () => {
    for (const p of proxies) await p.stop();
    await promoted?.destroy();
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  /**
   * Start receiving from the primary through a proxy applying `t` once WAL from `lieAt` on
   * flows, write WAL until the receiver exits, and return its result and where it started.
   */
  const lieWhileStreaming = async (t: (lieAt: bigint) => Tamper, dir: string, extra: string[] = []) => {
    const start = segStart(await flush(primary));
    // Start exactly there (the server's position may move on before the receiver asks for it).
    writeFileSync(join(dir, `${segName(1, start, SEG)}.partial`), '');
    // One complete segment first, then the lie a quarter into the next one: far enough on that the
    // finished segment is published and its upload under way (a permanent error starts no new
    // upload) on a loaded machine too.
    const lieAt = start + BigInt(SEG) + BigInt(32 * PAGE);
    const { proxy, conn } = await proxyTo(primary, t(lieAt));
    const proc = startCli(['receive', '-D', dir, '-d', conn, ...extra], { timeoutMs: 90_000 });
    let exited = false;
    void proc.done.then(() => (exited = true));
    for (let i = 0; i < 40 && !exited; i++) {
      await primary.generateWal(256 * 1024);
      await new Promise((r) => setTimeout(r, 100));
    }
    const res = await proc.done;
    expect(proxy.tampered, 'the proxy lied').toBe(1);
    return { res, start, lieAt };
  };

  it("control: through the proxy telling no lie, the receiver follows the timeline switch and writes the servers' bytes", async () => {
    const dir = newDir('truthful');
    const from = segStart(switchPoint);
    writeFileSync(join(dir, `${segName(1, from, SEG)}.partial`), '');
    const endpos = await flush(promoted);
    const { proxy, conn } = await proxyTo(promoted, () => undefined);
    const res = await runCli(['receive', '-D', dir, '-d', conn, '-E', formatLsn(endpos), '-n', '-v']);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toMatch(/switched to timeline 2/);
    expect(proxy.tampered).toBe(0);
    expect(readFileSync(join(dir, '00000002.history'))).toEqual(readFileSync(join(promoted.walDir, '00000002.history')));
    await verify(
      [
        { tli: 1, from, to: switchPoint },
        { tli: 2, from: segStart(switchPoint), to: endpos },
      ],
      dir,
    );
  });

  it("XLogData that skips bytes (dataStart jumps ahead): exit 1, the directory holds the server's bytes up to the gap", async () => {
    const dir = newDir('skip');
    const { res, start, lieAt } = await lieWhileStreaming((at) => once(xlogFrom(at, (x) => ({ ...x, dataStart: x.dataStart + BigInt(2 * PAGE) }))), dir);
    oneLineError(res, /^walstream: error: received WAL at \S+ but expected \S+: the server skipped or repeated data; nothing after this point was published$/);
    await verify([{ tli: 1, from: start, to: lieAt }], dir);
  });

  it("XLogData that repeats bytes (dataStart goes backwards), with --archive: exit 1, spool and archive hold the server's bytes", async () => {
    const dir = newDir('repeat-spool');
    const archive = newDir('repeat-archive');
    const { res, start, lieAt } = await lieWhileStreaming((at) => once(xlogFrom(at, (x) => ({ ...x, dataStart: x.dataStart - BigInt(PAGE) }))), dir, ['--archive', archive, '--partial-interval', '1']);
    oneLineError(res, /^walstream: error: received WAL at \S+ but expected \S+: the server skipped or repeated data; nothing after this point was published$/);
    await verify([{ tli: 1, from: start, to: lieAt }], dir, archive);
    // The finished segment before the lie reached the archive.
    expect(readdirSync(archive)).toContain(segName(1, start, SEG));
  });

  it('XLogData with bytes inside a page changed (the page headers intact): exit 1 naming the record, nothing of it written', async () => {
    const dir = newDir('record');
    const { res, start, lieAt } = await lieWhileStreaming(
      (at) =>
        once(
          xlogFrom(at, (x) => {
            // 64 bytes in the middle of a page: whatever records lie there, one of them is hit.
            const data = Buffer.from(x.data);
            for (let o = 0; o + 64 <= data.length; o++) {
              const inPage = Number((x.dataStart + BigInt(o)) % BigInt(PAGE));
              if (inPage < 200 || inPage + 64 > PAGE) continue;
              for (let k = o; k < o + 64; k++) data[k]! ^= 0xa5;
              return { ...x, data };
            }
            return x;
          }),
        ),
      dir,
    );
    oneLineError(res, /^walstream: error: segment [0-9A-F]{24}, offset \d+: .*record.*; nothing after this point was published$/);
    await verify([{ tli: 1, from: start, to: lieAt }], dir);
  });

  it('a long page header of another database system: exit 1 naming the system identifiers, no segment with foreign data', async () => {
    const dir = newDir('sysid');
    const { res, start, lieAt } = await lieWhileStreaming(
      (at) =>
        once((msg) => {
          const x = readXLogData(msg);
          if (!x || x.dataStart + BigInt(x.data.length) < at) return undefined;
          // The first segment start inside this message with its whole long header in it.
          const boundary = segStart(x.dataStart + BigInt(SEG) - 1n);
          const off = Number(boundary - x.dataStart);
          if (off + 40 > x.data.length) return undefined;
          const data = Buffer.from(x.data);
          data.writeBigUInt64LE(data.readBigUInt64LE(off + 24) ^ 0x5a5a5a5an, off + 24);
          return [xlogDataMessage({ ...x, data })];
        }),
      dir,
    );
    oneLineError(res, /^walstream: error: segment [0-9A-F]{24}: system identifier \d+ differs from the server's \d+; nothing after this point was published$/);
    // Everything before the foreign header: complete segments equal to the server's.
    await verify([{ tli: 1, from: start, to: segStart(lieAt) }], dir);
  });

  it('IDENTIFY_SYSTEM with a timeline below the one the directory is on: refused and retried (exit 1 with -n), the directory untouched', async () => {
    const dir = newDir('identify-tli');
    // First a true stream on timeline 2 (the promoted server), up to a position it has.
    const endpos = await flush(promoted);
    const first = await runCli(['receive', '-D', dir, '-d', `${promoted.connectionString()}?sslmode=disable`, '-E', formatLsn(endpos), '-n']);
    expect(first.code, first.stderr).toBe(0);
    const before = snapshot(dir);
    expect(Object.keys(before).some((f) => f.startsWith('00000002'))).toBe(true);
    // A server behind on timelines may be a standby that has not followed the promotion yet
    // (an address moved during a failover): like pg_receivewal, the daemon tries again later,
    // writing nothing meanwhile; with -n it exits 1.
    const { proxy, conn } = await proxyTo(
      promoted,
      rowOf('IDENTIFY_SYSTEM', (row) => [row[0]!, '1', row[2]!, row[3] ?? null]),
    );
    const res = await runCli(['receive', '-D', dir, '-d', conn, '-n']);
    oneLineError(res, /^walstream: error: .*timeline 2.*not present in the server.*timeline 1/);
    expect(snapshot(dir)).toEqual(before);
    const looping = startCli(['receive', '-D', dir, '-d', conn], { timeoutMs: 60_000 });
    await looping.waitForOutput(/not present in the server.*; retrying/);
    await looping.waitForOutput(/not present in the server[^\n]*; retrying[\s\S]*not present in the server[^\n]*; retrying/, 30_000);
    looping.kill('SIGTERM');
    const stopped = await looping.done;
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(proxy.tampered).toBeGreaterThanOrEqual(3);
    expect(snapshot(dir)).toEqual(before);
  });

  it('an end of timeline naming a next timeline that is not higher: exit 1, timeline 1 received up to the switch', async () => {
    const dir = newDir('next-tli');
    // Streaming timeline 1 from the segment of the switch: the server ends it there.
    const from = segStart(switchPoint);
    writeFileSync(join(dir, `${segName(1, from, SEG)}.partial`), '');
    const { proxy, conn } = await proxyTo(
      promoted,
      rowWithField('next_tli', (row) => ['1', row[1]!]),
    );
    const res = await runCli(['receive', '-D', dir, '-d', conn]);
    oneLineError(res, /^walstream: error: server reported unexpected next timeline 1, following timeline 1; nothing after this point was published$/);
    expect(proxy.tampered).toBe(1);
    expect(readdirSync(dir).filter((f) => f.startsWith('00000002'))).toEqual([]);
    await verify([{ tli: 1, from, to: switchPoint }], dir);
  });

  it('a history file that parses but puts the switch elsewhere than where the server ended the timeline: exit 1, no history file', async () => {
    const dir = newDir('history-elsewhere');
    const from = segStart(switchPoint);
    writeFileSync(join(dir, `${segName(1, from, SEG)}.partial`), '');
    const elsewhere = formatLsn(switchPoint - 0x100n);
    const { proxy, conn } = await proxyTo(
      promoted,
      rowOf('TIMELINE_HISTORY', (row) => [row[0]!, row[1]!.replace(/^1\t\S+/, `1\t${elsewhere}`)]),
    );
    const res = await runCli(['receive', '-D', dir, '-d', conn]);
    oneLineError(
      res,
      new RegExp(
        `^walstream: error: the server sent a history file 00000002\\.history that ends timeline 1 at ${elsewhere}, but it ended timeline 1 at ${formatLsn(switchPoint)}; nothing after this point was published$`,
      ),
    );
    expect(proxy.tampered).toBe(1);
    expect(readdirSync(dir).filter((f) => f.endsWith('.history') || f.startsWith('00000002'))).toEqual([]);
    await verify([{ tli: 1, from, to: switchPoint }], dir);
  });

  it('a history file that does not parse, at startup: exit 1, nothing written', async () => {
    const dir = newDir('history-start');
    const { proxy, conn } = await proxyTo(
      promoted,
      rowOf('TIMELINE_HISTORY', (row) => [row[0]!, '1\tnot-an-lsn\tgarbled\n']),
    );
    const res = await runCli(['receive', '-D', dir, '-d', conn]);
    oneLineError(res, /^walstream: error: .*timeline history .*malformed/);
    expect(proxy.tampered).toBe(1);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a history file that does not parse, at the end of a timeline, with --archive: exit 1, no history file in spool or archive', async () => {
    const dir = newDir('history-switch-spool');
    const archive = newDir('history-switch-archive');
    const from = segStart(switchPoint);
    writeFileSync(join(dir, `${segName(1, from, SEG)}.partial`), '');
    const { proxy, conn } = await proxyTo(
      promoted,
      rowOf('TIMELINE_HISTORY', (row) => [row[0]!, Buffer.from([0xff, 0xfe, 0x00, 0x31, 0x0a])]),
    );
    const res = await runCli(['receive', '-D', dir, '-d', conn, '--archive', archive]);
    oneLineError(res, /^walstream: error: .*timeline history .*(malformed|no entries)/);
    expect(proxy.tampered).toBe(1);
    expect(readdirSync(dir).filter((f) => f.endsWith('.history') || f.startsWith('00000002'))).toEqual([]);
    expect(readdirSync(archive).filter((f) => f.endsWith('.history') || f.startsWith('00000002'))).toEqual([]);
    await verify([{ tli: 1, from, to: switchPoint }], dir, archive);
  });
});

function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}
