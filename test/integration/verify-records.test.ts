// walstream verify --records on WAL a real PostgreSQL 15 wrote and archived with walstream push
// (archive_command): full-page writes, a record over several pages, a record over several
// segments, pg_switch_wal(), and a promotion (timeline 2). The records it reads must be the ones
// pg_waldump reads in the same WAL (same count, same LSNs), and a byte damaged before archiving
// (no checksum can catch it) must be named by segment, offset and LSN of its record.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PgCluster, pgVersionsUnderTest, toolBinDir } from '../harness/pg.js';
import { harnessTmpRoot } from '../harness/exec.js';
import { runCli } from '../support/cli.js';
import { pgOwnedDir, walstreamCommand } from '../support/pgcommand.js';
import { lsnOf } from '../support/walfiles.js';
import { META_DIR } from '../../src/storage/local.js';
import { WalRecordDecoder } from '../../src/wal/records.js';
import { parseHistory } from '../../src/wal/timeline.js';
import type { VerifyReport } from '../../src/ops/verify.js';

const SEG = 1024 * 1024;
const SEG_RE = /^[0-9A-F]{24}$/;

const segNoOf = (name: string): number => Number.parseInt(name.slice(8, 16), 16) * 4096 + Number.parseInt(name.slice(16, 24), 16);
const nameOf = (tli: number, segNo: number): string => [tli, Math.floor(segNo / 4096), segNo % 4096].map((n) => n.toString(16).toUpperCase().padStart(8, '0')).join('');
const lsnText = (n: number): string =>
  `${Math.floor(n / 2 ** 32)
    .toString(16)
    .toUpperCase()}/${(n % 2 ** 32).toString(16).toUpperCase()}`;

interface DumpedRecord {
  lsn: number;
  totLen: number;
}

/** pg_waldump's records: "... len (rec/tot): R/ T, ... lsn: X/Y, prev ...". It ends with an error where WAL runs out. */
function waldump(dir: string, tli: number, start: number): Promise<DumpedRecord[]> {
  return new Promise((resolve, reject) => {
    execFile(join(toolBinDir(), 'pg_waldump'), ['-p', dir, '-t', String(tli), '-s', lsnText(start)], { maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
      const out: DumpedRecord[] = [];
      for (const m of stdout.matchAll(/len \(rec\/tot\):\s*\d+\/\s*(\d+), tx:\s*\d+, lsn: ([0-9A-F]+)\/([0-9A-F]+),/g)) {
        out.push({ totLen: Number(m[1]), lsn: Number.parseInt(m[2]!, 16) * 2 ** 32 + Number.parseInt(m[3]!, 16) });
      }
      if (out.length === 0) reject(new Error(`pg_waldump read nothing: ${err?.message ?? ''} ${stderr}`));
      else resolve(out);
    });
  });
}

interface MadeArchive {
  primary: PgCluster;
  promoted: PgCluster;
  archive: string;
  /** The files recovery reads, in order: timeline 1 up to the switch segment, timeline 2 from it. */
  chain: string[];
  /** Where timeline 2 begins (00000002.history). */
  switchPoint: number;
  /** What the last pg_switch_wal() returned: the end of its XLOG_SWITCH record. */
  lastSwitch: number;
}

/**
 * A primary of `version` archiving with walstream push: full-page writes, a record over several
 * pages, one over several segments, pg_switch_wal(); a standby promoted to timeline 2, which
 * writes more and switches. Returns once the last segment is archived.
 */
async function makeArchive(version: number, dirs: string[]): Promise<MadeArchive> {
  const archive = pgOwnedDir(`records-archive-${version}`);
  dirs.push(archive);
  const primary = await PgCluster.create({ version, name: `records-${version}`, conf: { archive_mode: 'on', archive_command: walstreamCommand(['push', '%p', '--archive', archive]), full_page_writes: 'on' } });
  let promoted: PgCluster | undefined;
  try {
    await primary.query('create table t (id int primary key, v text)');
    await primary.query("insert into t select g, repeat('v', 200) from generate_series(1, 3000) g");
    await primary.query('checkpoint');
    // The first change to each page after the checkpoint carries a full-page image.
    await primary.query("update t set v = v || 'w' where id % 5 = 0");
    await primary.query("select pg_logical_emit_message(false, 'walstream', repeat('p', 30000))"); // over several pages
    await primary.query("select pg_logical_emit_message(false, 'walstream', repeat('s', 2500000))"); // over several segments
    await primary.query('select pg_switch_wal()');
    await primary.query("insert into t select g, 'after the switch' from generate_series(3001, 4000) g");
    promoted = await primary.createStandby({ name: `records-${version}-tl2` });
    await promoted.waitForReplay(await primary.currentLsn());
    // Everything the primary completed is archived before it stops.
    const [{ w }] = (await primary.query<{ w: string }>('select pg_walfile_name(pg_current_wal_insert_lsn()) as w')) as [{ w: string }];
    const before = nameOf(1, segNoOf(w) - 1);
    await primary.waitFor(async () => existsSync(join(archive, before)), 60_000, `${before} archived`);
    await primary.stop('fast');
    await promoted.promote();
    await promoted.query("insert into t select g, 'on timeline 2' from generate_series(4001, 6000) g");
    await promoted.query("select pg_logical_emit_message(false, 'walstream', repeat('q', 1200000))");
    const [{ sw }] = (await promoted.query<{ sw: string }>('select pg_switch_wal()::text as sw')) as [{ sw: string }];
    // the segment the switch completed (pg_switch_wal() returns the end of its XLOG_SWITCH record)
    const last = nameOf(2, Math.floor((Number(lsnOf(sw)) - 1) / SEG));
    const tl2 = promoted;
    await tl2.waitFor(async () => existsSync(join(archive, last)) && existsSync(join(archive, '00000002.history')), 60_000, `${last} archived`);
    const history = parseHistory(readFileSync(join(archive, '00000002.history'), 'utf8'));
    const switchPoint = Number(history[0]!.end);
    const switchSeg = Math.floor(switchPoint / SEG);
    const segs = readdirSync(archive).filter((f) => SEG_RE.test(f));
    const numbers = [...new Set(segs.map(segNoOf))].sort((a, b) => a - b);
    const chain = numbers.map((n) => (n >= switchSeg ? nameOf(2, n) : nameOf(1, n)));
    for (const f of chain) expect(segs).toContain(f);
    return { primary, promoted, archive, chain, switchPoint, lastSwitch: Number(lsnOf(sw)) };
  } catch (err) {
    await promoted?.destroy();
    await primary.destroy();
    throw err;
  }
}

describe('verify --records on WAL of PostgreSQL 15, against pg_waldump', () => {
  let primary: PgCluster;
  let promoted: PgCluster;
  let archive = '';
  const dirs: string[] = [];
  let chain: string[] = [];
  let switchPoint = 0;
  let lastSwitch = 0;

  beforeAll(async () => {
    ({ primary, promoted, archive, chain, switchPoint, lastSwitch } = await makeArchive(15, dirs));
  }, 240_000);

  afterAll(async () => {
    await promoted?.destroy();
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('reads the same records as pg_waldump, and the CLI says the archive replays', async () => {
    // pg_waldump follows one timeline by file name: the chain, all named as timeline 2.
    const dumpDir = mkdtempSync(join(harnessTmpRoot(), 'walstream-records-dump-'));
    dirs.push(dumpDir);
    for (const f of chain) copyFileSync(join(archive, f), join(dumpDir, nameOf(2, segNoOf(f))));
    const first = segNoOf(chain[0]!) * SEG;
    const dumped = await waldump(dumpDir, 2, first);

    const seen: number[] = [];
    const decoder = new WalRecordDecoder({ segSize: SEG, history: { tli: 2, entries: parseHistory(readFileSync(join(archive, '00000002.history'), 'utf8')) }, onRecord: (r) => seen.push(Number(r.lsn)) });
    for (const f of chain) {
      decoder.beginSegment(BigInt(segNoOf(f)), Number.parseInt(f.slice(0, 8), 16));
      decoder.write(readFileSync(join(archive, f)));
    }
    const s = decoder.summary();
    expect(s.problems).toEqual([]);
    expect(s.records).toBe(dumped.length);
    expect(seen).toEqual(dumped.map((d) => d.lsn));
    expect(s.switches).toBeGreaterThanOrEqual(2);
    // what was made: a record over several segments, one over several pages, both timelines
    expect(Math.max(...dumped.map((d) => d.totLen))).toBeGreaterThan(2 * SEG);
    expect(dumped.some((d) => d.totLen > 3 * 8192 && d.totLen < SEG)).toBe(true);
    expect(seen.some((l) => l < switchPoint) && seen.some((l) => l > switchPoint)).toBe(true);

    const res = await runCli(['verify', '--archive', archive, '--records', '--json']);
    expect(res.code, res.stderr).toBe(0);
    const report = JSON.parse(res.stdout) as VerifyReport;
    expect(report.records).toMatchObject({
      timeline: 2,
      records: dumped.length,
      firstRecord: lsnText(dumped[0]!.lsn),
      lastRecord: lsnText(dumped[dumped.length - 1]!.lsn),
      segments: chain.length,
      endKind: 'record-boundary',
    });
    // the last record is the server's last XLOG_SWITCH (24 bytes), ending where pg_switch_wal() said
    expect(report.records!.lastRecord).toBe(lsnText(lastSwitch - 24));
    const text = await runCli(['verify', '--archive', archive, '--records']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^records: ${dumped.length} records in ${chain.length} segments`, 'm'));
  });

  it('names the segment, offset and LSN of a record damaged before it was archived', async () => {
    const damaged = mkdtempSync(join(harnessTmpRoot(), 'walstream-records-damaged-'));
    dirs.push(damaged);
    cpSync(archive, damaged, { recursive: true });
    // A record of timeline 1 with data bytes on one page, in the middle of the WAL.
    const dumpDir = mkdtempSync(join(harnessTmpRoot(), 'walstream-records-dump-'));
    dirs.push(dumpDir);
    for (const f of chain) copyFileSync(join(archive, f), join(dumpDir, nameOf(2, segNoOf(f))));
    const dumped = await waldump(dumpDir, 2, segNoOf(chain[0]!) * SEG);
    const target = dumped.slice(Math.floor(dumped.length / 3)).find((d) => d.totLen >= 80 && (d.lsn % 8192) + d.totLen < 8192 && d.lsn < switchPoint)!;
    const file = chain.find((f) => segNoOf(f) === Math.floor(target.lsn / SEG))!;
    const path = join(damaged, file);
    const bytes = readFileSync(path);
    bytes[(target.lsn % SEG) + 50] ^= 0x04;
    writeFileSync(path, bytes);
    // as if the server wrote it so: no checksum recorded with it to catch it
    unlinkSync(join(damaged, META_DIR, `${file}.sha256`));
    const plain = await runCli(['verify', '--archive', damaged]);
    expect(plain.code).toBe(0); // page headers alone do not see it
    const res = await runCli(['verify', '--archive', damaged, '--records', '--json']);
    expect(res.code).toBe(1);
    const report = JSON.parse(res.stdout) as VerifyReport;
    expect(report.problems).toEqual([expect.objectContaining({ object: file, kind: 'record', offset: target.lsn % SEG, lsn: lsnText(target.lsn), message: expect.stringMatching(/CRC-32C/) })]);
    const text = await runCli(['verify', '--archive', damaged, '--records']);
    expect(text.code).toBe(1);
    expect(text.stdout).toContain(`${file}  record: offset ${target.lsn % SEG} (${lsnText(target.lsn)}): record at ${lsnText(target.lsn)}`);
  });
});

// The other majors (WALSTREAM_TEST_PG_VERSIONS; their packages have no pg_waldump): the decoder
// reads the whole archive without a problem and ends at the server's last XLOG_SWITCH.
for (const version of pgVersionsUnderTest().filter((v) => v !== 15)) {
  describe(`verify --records on WAL of PostgreSQL ${version}`, () => {
    let made: MadeArchive | undefined;
    const dirs: string[] = [];
    beforeAll(async () => {
      made = await makeArchive(version, dirs);
    }, 300_000);
    afterAll(async () => {
      await made?.promoted.destroy();
      await made?.primary.destroy();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    });

    it('replays record by record to where the server ended', async () => {
      const m = made!;
      const res = await runCli(['verify', '--archive', m.archive, '--records', '--json']);
      const report = JSON.parse(res.stdout) as VerifyReport;
      expect(report.problems).toEqual([]);
      expect(res.code).toBe(0);
      expect(report.records).toMatchObject({ timeline: 2, segments: m.chain.length, endKind: 'record-boundary', lastRecord: lsnText(m.lastSwitch - 24) });
      expect(report.records!.switches).toBeGreaterThanOrEqual(2);
      expect(report.records!.records).toBeGreaterThan(5000);
    });
  });
}
