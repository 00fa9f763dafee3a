// push and fetch --verify-records on a real PostgreSQL 15 segment (the fixture) and a local
// archive: a segment whose page headers are intact but one of whose records was changed is
// refused by push (nothing archived) and by fetch (nothing at %p, the recovery stopped), while
// the intact segment passes both; and the command line's option reaches them.
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalStore } from '../../src/storage/local.js';
import { push } from '../../src/commands/push.js';
import { fetch, EXIT_ABORT_RECOVERY } from '../../src/commands/fetch.js';
import { SegmentRecordCheck } from '../../src/archive/segment-records.js';
import { WalRecordDecoder, type WalRecordHeader } from '../../src/wal/records.js';
import { silentLogger } from '../../src/util/log.js';
import { runCli } from '../support/cli.js';
import { FIXTURE_NAME, FIXTURE_SEG_NO, FIXTURE_SEG_SIZE, FIXTURE_TLI, fixtureSegment } from './fixture.js';

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'walstream-records-calls-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** The fixture with one byte changed in the middle of a record that lies inside one page. */
function damagedSegment(): Buffer {
  const seg = fixtureSegment();
  const records: WalRecordHeader[] = [];
  const d = new WalRecordDecoder({ segSize: FIXTURE_SEG_SIZE, onRecord: (r) => records.push(r) });
  d.beginSegment(FIXTURE_SEG_NO, FIXTURE_TLI);
  d.write(seg);
  const r = records.find((x) => x.totLen > 200 && (Number(x.lsn) % 8192) + x.totLen < 8192 && Number(x.lsn) % FIXTURE_SEG_SIZE > 100_000)!;
  const at = (Number(r.lsn) % FIXTURE_SEG_SIZE) + 100;
  seg[at]! ^= 0x01;
  return seg;
}

function pgWal(data: Buffer): string {
  const wal = join(tmp(), 'pg_wal');
  mkdirSync(wal);
  writeFileSync(join(wal, FIXTURE_NAME), data);
  return join(wal, FIXTURE_NAME);
}

describe('the record check of one segment', () => {
  it('passes the real segment in pieces of any size, and names the damaged record', () => {
    for (const piece of [1, 39, 40, 8192, 100_003, FIXTURE_SEG_SIZE]) {
      const c = new SegmentRecordCheck(FIXTURE_NAME);
      const seg = fixtureSegment();
      for (let i = 0; i < seg.length; i += piece) c.write(seg.subarray(i, i + piece));
      expect(c.finish()).toBeUndefined();
    }
    const c = new SegmentRecordCheck(FIXTURE_NAME);
    c.write(damagedSegment());
    expect(c.finish()).toMatch(/^record at 0\/7[0-9A-F]+ \(\d+ bytes, resource manager \d+\): CRC-32C 0x[0-9a-f]{8} where its header says 0x[0-9a-f]{8} \(offset \d+\)$/);
    const short = new SegmentRecordCheck(FIXTURE_NAME);
    short.write(fixtureSegment().subarray(0, 5000));
    expect(short.finish()).toMatch(/has 5000 bytes, but its segment size is 1048576/);
  });
});

describe('push and fetch --verify-records', () => {
  it('push refuses the damaged segment and archives nothing; without the option it is archived as it is', async () => {
    const archive = tmp();
    const store = new LocalStore(archive);
    const path = pgWal(damagedSegment());
    await expect(push({ path, openStore: async () => store, compression: 'none', noSync: true, log: silentLogger, verifyRecords: true })).rejects.toThrow(
      /^000000010000000000000007: its WAL records do not check out: record at /,
    );
    expect(readdirSync(archive).filter((n) => n.startsWith('0000'))).toEqual([]);
    await push({ path: pgWal(fixtureSegment()), openStore: async () => store, compression: 'none', noSync: true, log: silentLogger, verifyRecords: true });
    expect((await store.get(FIXTURE_NAME)).data.equals(fixtureSegment())).toBe(true);
  });

  it('fetch refuses a damaged archived segment (exit 126 outside a standby), leaving nothing at %p; the intact one is restored', async () => {
    const archive = tmp();
    const store = new LocalStore(archive);
    // Archived without the check, so the archive holds the damaged bytes under a valid checksum.
    await push({ path: pgWal(damagedSegment()), openStore: async () => store, compression: 'none', noSync: true, log: silentLogger });
    const out = tmp();
    const dest = join(out, 'RECOVERYXLOG');
    const call = fetch({ name: FIXTURE_NAME, dest, openStore: async () => store, archiveKey: archive, log: silentLogger, verifyRecords: true, attempts: 1 });
    await expect(call).rejects.toMatchObject({ exitCode: EXIT_ABORT_RECOVERY, message: expect.stringMatching(/its WAL records do not check out: record at /) });
    expect(readdirSync(out)).toEqual([]);
    // Without the check, the bytes are what was archived.
    await fetch({ name: FIXTURE_NAME, dest, openStore: async () => store, archiveKey: archive, log: silentLogger });
    expect(readFileSync(dest).equals(damagedSegment())).toBe(true);
  });

  it('the command line: push --verify-records exits 1 with one line; fetch --verify-records restores an intact segment', async () => {
    const archive = tmp();
    const bad = await runCli(['push', pgWal(damagedSegment()), '--archive', archive, '--verify-records']);
    expect(bad.code).toBe(1);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    expect(bad.stderr).toMatch(/its WAL records do not check out/);
    const good = await runCli(['push', pgWal(fixtureSegment()), '--archive', archive, '--verify-records']);
    expect(good.code, good.stderr).toBe(0);
    const dest = join(tmp(), 'RECOVERYXLOG');
    const res = await runCli(['fetch', FIXTURE_NAME, dest, '--archive', archive, '--verify-records']);
    expect(res.code, res.stderr).toBe(0);
    expect(existsSync(dest) && readFileSync(dest).equals(fixtureSegment())).toBe(true);
  });
});
