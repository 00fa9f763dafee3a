// walstream status, verify and cleanup on real archives: made by `walstream receive --archive`
// from a PostgreSQL primary (into a directory and into S3), and from a standby that is promoted
// (two timelines and a history file), then damaged in the ways an archive gets damaged: a segment
// removed, an object corrupted, a segment of another database system, a history file lost.
// cleanup runs as the standby's real archive_cleanup_command too.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chownSync, cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { PgCluster } from '../harness/pg.js';
import { harnessTmpRoot, pgOsUser } from '../harness/exec.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { runCli, startCli, type CliProcess, type CliResult } from '../support/cli.js';
import { pgOwnedDir, walstreamCommand } from '../support/pgcommand.js';
import { lsnOf, segName } from '../support/walfiles.js';
import { LocalStore, META_DIR } from '../../src/storage/local.js';
import type { StatusReport } from '../../src/ops/status.js';
import type { VerifyReport } from '../../src/ops/verify.js';

const SEG = 1024 * 1024;
const SEG_RE = /^[0-9A-F]{24}$/;
const WAL_RE = /^(?:[0-9A-F]{24}(?:\.partial(?:\.[0-9A-F]{8})?|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$/;

/** WAL files in an archive directory (compression suffixes removed), sorted. */
function walFiles(dir: string): string[] {
  return readdirSync(dir)
    .map((f) => f.replace(/\.(gz|zst)$/, ''))
    .filter((f) => WAL_RE.test(f))
    .sort();
}

function segmentsIn(dir: string): string[] {
  return walFiles(dir).filter((f) => SEG_RE.test(f));
}

/** Segment number of a segment name (1 MB segments: 4096 per xlogid). */
function segNoOf(name: string): bigint {
  return BigInt(`0x${name.slice(8, 16)}`) * 4096n + BigInt(`0x${name.slice(16, 24)}`);
}

function chownTree(dir: string): void {
  const user = pgOsUser();
  if (!user) return;
  chownSync(dir, user.uid, user.gid);
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) chownTree(p);
    else chownSync(p, user.uid, user.gid);
  }
}

describe('status, verify and cleanup on real archives', () => {
  let primary: PgCluster;
  let other: PgCluster;
  let standby: PgCluster;
  let s3: S3TestServer;
  let follower: CliProcess | undefined;
  const dirs: string[] = [];
  /** One timeline, made by receive from the primary through slot "ops". */
  let base = '';
  /** Timelines 1 and 2, made by receive following the standby through its promotion. */
  let timelines = '';
  let tlSpool = '';
  let redo = 0n;

  const newDir = (p: string): string => {
    const d = mkdtempSync(join(harnessTmpRoot(), `walstream-ops-${p}-`));
    dirs.push(d);
    return d;
  };
  const copyOf = (dir: string, p: string): string => {
    const d = newDir(p);
    cpSync(dir, d, { recursive: true });
    return d;
  };
  const s3Env = (): Record<string, string> => ({ AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region });
  let s3Archive = '';
  const cli = (args: string[]): Promise<CliResult> => runCli([...args, '--s3-endpoint', s3.endpoint], { env: s3Env() });
  const verifyJson = async (archive: string, extra: string[] = []): Promise<{ res: CliResult; report: VerifyReport }> => {
    const res = await cli(['verify', '--archive', archive, '--json', ...extra]);
    return { res, report: JSON.parse(res.stdout) as VerifyReport };
  };
  const statusJson = async (archive: string, extra: string[] = []): Promise<StatusReport> => {
    const res = await cli(['status', '--archive', archive, '--json', ...extra]);
    expect(res.code, res.stderr).toBe(0);
    return JSON.parse(res.stdout) as StatusReport;
  };

  beforeAll(async () => {
    [primary, other, s3] = await Promise.all([PgCluster.create({ name: 'ops' }), PgCluster.create({ name: 'ops-other' }), startS3({ builtIn: true })]);
    s3Archive = `s3://${s3.bucket}/${s3.prefix}ops/`;
    standby = await primary.createStandby({ name: 'ops-standby' });
    // A receiver follows the standby from now on (it will see the promotion).
    timelines = newDir('timelines');
    tlSpool = newDir('tlspool');
    follower = startCli(['receive', '-D', tlSpool, '-d', standby.connectionString(), '--archive', timelines, '--partial-interval', '0', '-v']);
    await follower.waitForOutput(/starting log streaming/);

    for (const slot of ['ops', 'ops_s3']) await primary.query('select pg_create_physical_replication_slot($1, true)', [slot]);
    await primary.generateWal(2 * SEG);
    await primary.checkpoint();
    redo = lsnOf((await primary.query<{ r: string }>('select redo_lsn::text as r from pg_control_checkpoint()'))[0]!.r);
    await primary.generateWal(3 * SEG);
    const endpos = await primary.currentLsn();
    base = newDir('base');
    const receive = (slot: string, archive: string): Promise<CliResult> =>
      cli(['receive', '-D', newDir('spool'), '-d', primary.connectionString(), '-S', slot, '-E', endpos, '-n', '--partial-interval', '0', '--archive', archive]);
    const [a, b] = await Promise.all([receive('ops', base), receive('ops_s3', s3Archive)]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    await standby.waitForReplay(endpos);
    await other.generateWal(6 * SEG);
  });

  afterAll(async () => {
    follower?.kill('SIGKILL');
    await Promise.all([standby?.destroy(), primary?.destroy(), other?.destroy(), s3?.stop()]);
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('a complete archive: verify passes, status counts it and measures the lag behind the server and its slot', async () => {
    const segs = segmentsIn(base);
    expect(segs.length).toBeGreaterThanOrEqual(5);
    const { res, report } = await verifyJson(base);
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(report.ok).toBe(true);
    expect(report.checked.segments).toBe(segs.length);
    expect(report.segmentSize).toBe(SEG);
    const sysid = (await primary.query<{ s: string }>('select system_identifier::text as s from pg_control_system()'))[0]!.s;
    expect(report.systemIdentifier).toBe(sysid);
    const text = await cli(['verify', '--archive', base]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^OK: /m);

    const st = await statusJson(base, ['-d', primary.connectionString(), '-S', 'ops']);
    expect(st.timelines).toEqual([expect.objectContaining({ timeline: 1, firstSegment: segs[0], lastSegment: segs[segs.length - 1], segments: segs.length, gaps: [] })]);
    expect(st.systemIdentifier).toBe(sysid);
    expect(st.archivedUpTo).toEqual({ lsn: expect.any(String), timeline: 1 });
    // It reaches the end of its newest segment.
    expect(lsnOf(st.archivedUpTo!.lsn)).toBe((segNoOf(segs[segs.length - 1]!) + 1n) * BigInt(SEG));
    expect(st.server).toMatchObject({ systemIdentifier: sysid, timeline: 1, sameSystem: true });
    expect(st.server!.lagBytes).toBe(Number(lsnOf(st.server!.position) - lsnOf(st.archivedUpTo!.lsn)));
    expect(st.server!.lagBytes).toBeGreaterThanOrEqual(0);
    const [slot] = await primary.query<{ r: string }>("select restart_lsn::text as r from pg_replication_slots where slot_name = 'ops'");
    expect(st.slot).toMatchObject({ name: 'ops', exists: true, restartLsn: slot!.r });
    const human = await cli(['status', '--archive', base, '-d', primary.connectionString()]);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(new RegExp(`^timeline 1 +${segs[0]} \\.\\. ${segs[segs.length - 1]}  ${segs.length} segments`, 'm'));
    expect(human.stdout).toMatch(/^server +at [0-9A-F]+\/[0-9A-F]+ on timeline 1: archive .* behind/m);
    // The SQL side answered (the slot was read there too, on any version), and no receiver runs now.
    expect(st.server).toMatchObject({ sqlUnavailable: null, receiver: null });

    // With a receiver streaming: its state and the lag in time, as the server measures it.
    const spool = newDir('status-live');
    const live = startCli(['receive', '-D', spool, '-d', primary.connectionString(), '--application-name', 'ops-live', '-s', '1']);
    try {
      await primary.waitFor(
        async () => (await primary.query<{ s: string; w: string | null }>("select state as s, write_lsn::text as w from pg_stat_replication where application_name = 'ops-live'"))[0]?.w != null,
        30_000,
        'the receiver to stream and report its position',
      );
      const withReceiver = await statusJson(base, ['-d', primary.connectionString(), '--receiver-name', 'ops-live']);
      expect(withReceiver.server!.receiver).toMatchObject({ applicationName: 'ops-live', state: 'streaming' });
      expect(withReceiver.server!.lagSeconds).toEqual(expect.any(Number));
      expect(withReceiver.server!.lagSeconds).toBeGreaterThanOrEqual(0);
      const text = await cli(['status', '--archive', base, '-d', primary.connectionString(), '--receiver-name', 'ops-live']);
      expect(text.stdout).toMatch(/^receiver +ops-live streaming, received [0-9A-F]+\/[0-9A-F]+, write lag (none|[\d.]+ s), reports no flushes \(no slot\) \(as the server measures it\)$/m);
    } finally {
      live.child.kill('SIGTERM');
      await live.done;
    }
  });

  it('a removed segment: verify names it, status shows the gap', async () => {
    const dir = copyOf(base, 'removed');
    const segs = segmentsIn(dir);
    const gone = segs[2]!;
    rmSync(join(dir, gone));
    const { res, report } = await verifyJson(dir);
    expect(res.code).toBe(1);
    expect(report.problems).toEqual([expect.objectContaining({ object: gone, kind: 'missing-segment', count: 1 })]);
    const text = await cli(['verify', '--archive', dir]);
    expect(text.code).toBe(1);
    expect(text.stdout).toContain(`${gone}  missing-segment`);
    expect(text.stderr.trim().split('\n')).toEqual([expect.stringMatching(/verification failed with 1 problem$/)]);
    const st = await statusJson(dir);
    expect(st.timelines[0]!.gaps).toEqual([{ first: gone, last: gone, count: 1 }]);
    expect((await cli(['status', '--archive', dir])).stdout).toContain(`GAP: ${gone} missing (1 segment)`);
  });

  it('a corrupted object: verify names it', async () => {
    const dir = copyOf(base, 'corrupt');
    const victim = segmentsIn(dir)[1]!;
    const bytes = readFileSync(join(dir, victim));
    bytes[SEG / 2] = bytes[SEG / 2]! ^ 0xff;
    writeFileSync(join(dir, victim), bytes);
    const { res, report } = await verifyJson(dir);
    expect(res.code).toBe(1);
    expect(report.problems).toEqual([expect.objectContaining({ object: victim, kind: 'checksum' })]);
  });

  it('a segment of another database system under a right name: verify names it', async () => {
    const dir = copyOf(base, 'foreign');
    const otherCurrent = (await other.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
    const shared = segmentsIn(dir).filter((n) => n < otherCurrent && readdirSync(other.walDir).includes(n));
    expect(shared.length).toBeGreaterThanOrEqual(1);
    const name = shared[shared.length - 1]!;
    const store = new LocalStore(dir);
    await store.delete(name);
    await store.put(name, readFileSync(join(other.walDir, name)));
    const { res, report } = await verifyJson(dir);
    expect(res.code).toBe(1);
    const otherId = (await other.query<{ s: string }>('select system_identifier::text as s from pg_control_system()'))[0]!.s;
    expect(report.problems).toEqual([expect.objectContaining({ object: name, kind: 'system-identifier' })]);
    expect(report.problems[0]!.message).toContain(otherId);
  });

  it('cleanup --before: a dry run removes nothing, the real run exactly what it listed, with the checksum records', async () => {
    const dir = copyOf(base, 'before');
    const segs = segmentsIn(dir);
    const cut = segs[3]!;
    const all = walFiles(dir);
    const dry = await cli(['cleanup', '--archive', dir, '--before', cut, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout.split('\n').filter((l) => l.startsWith('would remove '))).toEqual(segs.slice(0, 3).map((s) => `would remove ${s}`));
    expect(dry.stdout).toMatch(/^dry run: 3 objects \(3\.0 MB\) would be removed from .*; nothing was removed$/m);
    expect(walFiles(dir)).toEqual(all);
    const real = await cli(['cleanup', '--archive', dir, '--before', cut, '--json']);
    expect(real.code, real.stderr).toBe(0);
    expect((JSON.parse(real.stdout) as { removed: string[] }).removed).toEqual(segs.slice(0, 3));
    expect(walFiles(dir)).toEqual(all.filter((n) => !segs.slice(0, 3).includes(n)));
    // The checksum records went with their objects; the archive's identity record and the receiver's own record stay.
    const records = readdirSync(dir).filter((n) => n.startsWith('walstream.writer.'));
    expect(records).toHaveLength(1);
    expect(readdirSync(join(dir, META_DIR)).sort()).toEqual([...segmentsIn(dir).map((s) => `${s}.sha256`), 'walstream.json.sha256', `${records[0]}.sha256`].sort());
    expect(readdirSync(dir)).toContain('walstream.json');
    // What is left still verifies.
    expect((await cli(['verify', '--archive', dir])).code).toBe(0);
    // An archive that cannot be listed: refused, one line.
    const notADir = join(newDir('notadir'), 'file');
    writeFileSync(notADir, 'x');
    const refused = await cli(['cleanup', '--archive', notADir, '--older-than', '1d']);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^walstream: error: cannot list the archive completely, so nothing was removed: /)]);
  });

  it("cleanup as the standby's archive_cleanup_command removes what precedes its restart point", async () => {
    const dir = pgOwnedDir('cleanup-cmd');
    dirs.push(dir);
    cpSync(base, dir, { recursive: true });
    chownTree(dir);
    standby.configure({ archive_cleanup_command: walstreamCommand(['cleanup', '%r', '--archive', dir]) });
    await standby.reload();
    await standby.query('checkpoint'); // a restartpoint at the primary's checkpoint, then archive_cleanup_command %r
    const [cp] = await standby.query<{ r: string; t: number }>('select redo_lsn::text as r, timeline_id as t from pg_control_checkpoint()');
    expect(lsnOf(cp!.r)).toBe(redo);
    const restartFile = segName(cp!.t, redo, SEG);
    const segs = segmentsIn(base);
    const older = segs.filter((s) => s < restartFile);
    expect(older.length).toBeGreaterThanOrEqual(1);
    expect(segmentsIn(dir)).toEqual(segs.filter((s) => s >= restartFile));
    expect(readFileSync(standby.logFile, 'utf8')).not.toMatch(/archive_cleanup_command.*(failed|exit code)/);
  });

  it('cleanup --older-than removes what was written before the cutoff, oldest part only', async () => {
    const dir = copyOf(base, 'age');
    const segs = segmentsIn(dir);
    const old = new Date(Date.now() - 10 * 86_400_000);
    for (const s of segs.slice(0, 2)) utimesSync(join(dir, s), old, old);
    utimesSync(join(dir, segs[3]!), old, old); // old, but above a recent segment: stays
    const res = await cli(['cleanup', '--archive', dir, '--older-than', '7d']);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/^removed 2 objects \(2\.0 MB\) from /m);
    expect(segmentsIn(dir)).toEqual(segs.slice(2));
    expect(Math.abs(statSync(join(dir, segs[3]!)).mtimeMs - old.getTime())).toBeLessThan(1000);
  });

  it('two timelines after a promotion: verify follows the history file; cleanup follows it too', async () => {
    await standby.promote();
    await standby.generateWal(2 * SEG);
    const endpos = await standby.currentLsn();
    await follower!.waitForOutput(/archived 00000002\.history/, 30_000);
    follower!.kill('SIGINT');
    expect((await follower!.done).code).toBe(0);
    follower = undefined;
    const fin = await cli(['receive', '-D', tlSpool, '-d', standby.connectionString(), '-E', endpos, '-n', '--partial-interval', '0', '--archive', timelines]);
    expect(fin.code, fin.stderr).toBe(0);

    const files = walFiles(timelines);
    expect(files).toContain('00000002.history');
    const { res, report } = await verifyJson(timelines);
    expect(res.code, res.stdout).toBe(0);
    const switchPoint = readFileSync(join(standby.walDir, '00000002.history'), 'utf8').split('\t')[1]!;
    expect(report.timelines).toEqual([
      expect.objectContaining({ timeline: 1, parent: null }),
      expect.objectContaining({ timeline: 2, parent: 1, begin: switchPoint, neededFirst: segName(2, lsnOf(switchPoint), SEG) }),
    ]);
    expect(report.timelines[0]!.neededLast).toBe(segName(1, lsnOf(switchPoint) - (lsnOf(switchPoint) % BigInt(SEG)) - 1n, SEG));
    const st = await statusJson(timelines);
    expect(st.timelines.map((t) => [t.timeline, t.parent, t.gaps])).toEqual([
      [1, null, []],
      [2, 1, []],
    ]);

    // cleanup before the newest segment of timeline 2: everything older on 2, and on 1 up to the switch.
    const dir = copyOf(timelines, 'tl-cleanup');
    const newest = segmentsIn(dir)
      .filter((n) => n.startsWith('00000002'))
      .pop()!;
    const expected = files.filter((n) => !n.endsWith('.history') && n.slice(8, 24) < newest.slice(8));
    expect(expected.some((n) => n.startsWith('00000001'))).toBe(true);
    const dry = await cli(['cleanup', newest, '--archive', dir, '--dry-run', '--json']);
    expect(dry.code, dry.stderr).toBe(0);
    expect((JSON.parse(dry.stdout) as { removed: string[] }).removed.sort()).toEqual(expected);
    expect(walFiles(dir)).toEqual(files);
    const real = await cli(['cleanup', newest, '--archive', dir]);
    expect(real.code, real.stderr).toBe(0);
    expect(real.stdout).toBe(''); // archive_cleanup_command form: quiet
    expect(walFiles(dir)).toEqual(files.filter((n) => !expected.includes(n)));
    expect(walFiles(dir)).toContain('00000002.history');
  });

  it('a history file missing: verify names it', async () => {
    const dir = copyOf(timelines, 'nohistory');
    await new LocalStore(dir).delete('00000002.history');
    const { res, report } = await verifyJson(dir);
    expect(res.code).toBe(1);
    expect(report.problems).toEqual([expect.objectContaining({ object: '00000002.history', kind: 'missing-history' })]);
    const text = await cli(['verify', '--archive', dir]);
    expect(text.stdout).toContain('00000002.history  missing-history');
  });

  it('on S3: verify passes, status agrees with the directory archive, a corrupted object is named, cleanup removes', async () => {
    const { res, report } = await verifyJson(s3Archive, ['--parallel', '3']);
    expect(res.code, res.stdout + res.stderr).toBe(0);
    const segs = segmentsIn(base);
    expect(report.checked.segments).toBe(segs.length);
    const st = await statusJson(s3Archive);
    expect(st.timelines).toEqual([expect.objectContaining({ timeline: 1, firstSegment: segs[0], lastSegment: segs[segs.length - 1], segments: segs.length, gaps: [] })]);

    const victim = segs[1]!;
    const c = s3.client();
    try {
      const key = `${s3.prefix}ops/${victim}`;
      const h = await c.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
      const got = await c.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
      const bytes = Buffer.from(await got.Body!.transformToByteArray());
      bytes[1000] = bytes[1000]! ^ 0x55;
      await c.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: bytes, Metadata: h.Metadata }));
    } finally {
      c.destroy();
    }
    const bad = await verifyJson(s3Archive);
    expect(bad.res.code).toBe(1);
    expect(bad.report.problems).toEqual([expect.objectContaining({ object: victim, kind: 'checksum' })]);

    const clean = await cli(['cleanup', '--archive', s3Archive, '--before', segs[2]!, '--json']);
    expect(clean.code, clean.stderr).toBe(0);
    expect((JSON.parse(clean.stdout) as { removed: string[] }).removed).toEqual(segs.slice(0, 2));
    const after = await statusJson(s3Archive);
    expect(after.timelines[0]).toMatchObject({ firstSegment: segs[2], segments: segs.length - 2 });
    expect((await verifyJson(s3Archive)).res.code).toBe(0);
  });
});
