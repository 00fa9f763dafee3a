// walstream cleanup --retain-backups / --retain-days on the command line, over a directory archive
// holding synthetic WAL and backup records: what it prints, removes and refuses.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { baseTarName, encodeRecord, manifestName, recordName } from '../../src/backup/layout.js';
import { LocalStore } from '../../src/storage/local.js';
import { runCli } from '../support/cli.js';
import { lsnAt, putSegments, seg } from '../unit/ops-walgen.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function archive(): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'walstream-retain-'));
  dirs.push(dir);
  const store = new LocalStore(dir);
  await putSegments(store as never, 1, 1, 6);
  for (const [name, s] of [
    ['20261201T000000Z', 2],
    ['20261202T000000Z', 4],
  ] as const) {
    await store.put(baseTarName(name), Buffer.from('b'));
    await store.put(manifestName(name), Buffer.from('m'));
    await store.put(
      recordName(name),
      encodeRecord({
        format: 1,
        name,
        label: 'x',
        systemId: '1',
        serverVersion: 150000,
        walSegmentSize: 1048576,
        timeline: 1,
        startLsn: lsnAt(s),
        endLsn: lsnAt(s, 100),
        startWal: seg(1, s),
        endWal: seg(1, s),
        startTime: '2026-12-01T00:00:00Z',
        endTime: '2026-12-01T00:00:00Z',
        walMethod: 'archive',
        size: 1,
        objects: [{ name: baseTarName(name), kind: 'base', size: 1, sha256: 'a'.repeat(64), storedSize: 1, compression: 'none' }],
      }),
    );
  }
  return dir;
}

describe('cleanup --retain-backups', () => {
  it('prints the plan in a dry run, then removes the old backup and the WAL only it needed', async () => {
    const dir = await archive();
    const dry = await runCli(['cleanup', '--archive', dir, '--retain-backups', '1', '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('would remove backup 20261201T000000Z (3 objects)');
    expect(dry.stdout).toContain(`dry run: would remove 1 backup, kept 1 backup; would remove 3 WAL objects`);
    const r = await runCli(['cleanup', '--archive', dir, '--retain-backups', '1', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { backups: { removed: string[]; kept: string[] }; walBefore: string; removed: string[] };
    expect(out.backups).toEqual({ removed: ['20261201T000000Z'], interrupted: [], kept: ['20261202T000000Z'] });
    expect(out.walBefore).toBe(seg(1, 4));
    expect(out.removed).toEqual([seg(1, 1), seg(1, 2), seg(1, 3)]);
    const left = (await new LocalStore(dir).list()).map((o) => o.name);
    expect(left).toEqual([seg(1, 4), seg(1, 5), seg(1, 6)]);
  });

  it('refuses a WAL rule beside it, and a count of 0', async () => {
    const dir = await archive();
    let r = await runCli(['cleanup', '--archive', dir, '--retain-days', '7', '--older-than', '1d']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/decide which WAL goes/);
    r = await runCli(['cleanup', '--archive', dir, '--retain-backups', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/at least 1/);
  });
});
