// walstream with an archive in Azure Blob Storage (Azurite, test/harness/azure.ts) end to end,
// against a real PostgreSQL: receive (with the pieces of the segment in progress) into
// azure://container/prefix, fetch back every segment byte for byte, status, verify and cleanup
// on it; a conflicting push refused; and the emulator stopped mid-upload then started again,
// nothing lost.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../harness/pg.js';
import { startAzurite, type AzuriteServer } from '../harness/azure.js';
import { runCli, startCli } from '../support/cli.js';
import { lsnOf, segName } from '../support/walfiles.js';
import { AzureStore } from '../../src/storage/azure.js';
import { assemblePieces, listPieces } from '../../src/archive/partial.js';
import type { ArchiveStore } from '../../src/storage/types.js';

const SEG = 1024 * 1024;

describe('an archive in Azure Blob Storage (Azurite)', () => {
  let primary: PgCluster;
  let az: AzuriteServer;
  const dirs: string[] = [];
  const stores: ArchiveStore[] = [];
  const newDir = (p: string): string => {
    const d = mkdtempSync(join(tmpdir(), `walstream-${p}-`));
    dirs.push(d);
    return d;
  };
  const env = (): Record<string, string> => ({ AZURE_STORAGE_CONNECTION_STRING: az.connectionString });
  const url = (name: string): string => `azure://${az.container}/${name}`;
  const open = (name: string): ArchiveStore => {
    const st = new AzureStore({ container: az.container, prefix: name, connectionString: az.connectionString });
    stores.push(st);
    return st;
  };
  const slot = async (name: string): Promise<bigint> => {
    const [row] = await primary.query<{ lsn: string }>('select lsn::text from pg_create_physical_replication_slot($1, true)', [name]);
    return lsnOf(row!.lsn);
  };
  /** Every segment from `first` up to the one before `endpos` is archived and equals pg_wal's copy. */
  const expectArchived = async (store: ArchiveStore, firstLsn: bigint, endpos: string): Promise<string[]> => {
    const names = (await store.list()).map((o) => o.name).filter((n) => /^[0-9A-F]{24}$/.test(n));
    const want: string[] = [];
    for (let s = firstLsn / BigInt(SEG); s < lsnOf(endpos) / BigInt(SEG); s++) want.push(segName(1, s * BigInt(SEG), SEG));
    expect(names).toEqual(want);
    for (const n of names) expect((await store.get(n)).data.equals(readFileSync(join(primary.walDir, n))), n).toBe(true);
    return names;
  };

  beforeAll(async () => {
    [primary, az] = await Promise.all([PgCluster.create({ name: 'azure' }), startAzurite()]);
  });
  afterAll(async () => {
    for (const st of stores) await st.close();
    await primary?.destroy();
    await az?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("receive into azure:// with gzip and pieces; fetch gives back the server's bytes; status, verify and cleanup work on it", async () => {
    const first = await slot('to_azure');
    const spool = newDir('spool');
    const proc = startCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', 'to_azure', '--archive', url('e2e'), '-Z', 'gzip', '--partial-interval', '1', '-v'], {
      env: env(),
    });
    try {
      await proc.waitForOutput(/starting log streaming/);
      // The segment in progress arrives as pieces.
      await primary.query('create table if not exists az (id int)');
      await primary.query('insert into az select generate_series(1, 1000)');
      const lsn = lsnOf(await primary.currentLsn());
      const inProgress = segName(1, lsn, SEG);
      const store = open('e2e/');
      let assembled: Buffer = Buffer.alloc(0);
      const deadline = Date.now() + 20_000;
      while (assembled.length < Number(lsn % BigInt(SEG)) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 250));
        assembled = await assemblePieces(store, inProgress);
      }
      expect(assembled.length).toBeGreaterThanOrEqual(Number(lsn % BigInt(SEG)));
      expect(assembled.equals(readFileSync(join(primary.walDir, inProgress)).subarray(0, assembled.length))).toBe(true);

      await primary.generateWal(4 * SEG);
      const endpos = await primary.currentLsn();
      const lastSeg = segName(1, lsnOf(endpos) - BigInt(SEG), SEG);
      const done = Date.now() + 60_000;
      while (!(await store.head(lastSeg)) && Date.now() < done) await new Promise((r) => setTimeout(r, 200));
      proc.kill('SIGTERM');
      const res = await proc.done;
      expect(res.code, res.stderr).toBe(0);
      expect(res.stderr).not.toContain(az.accountKey);
      const names = await expectArchived(store, first, endpos);
      expect(names.length).toBeGreaterThanOrEqual(4);
      expect((await store.head(names[0]!))?.compression).toBe('gzip');
      expect(await listPieces(store, inProgress)).toEqual([]);

      // fetch, as restore_command: every segment back, byte for byte.
      const dest = newDir('fetch');
      for (const n of names) {
        const f = await runCli(['fetch', n, join(dest, 'RECOVERYXLOG'), '--archive', url('e2e')], { env: env() });
        expect(f.code, f.stderr).toBe(0);
        expect(readFileSync(join(dest, 'RECOVERYXLOG')).equals(readFileSync(join(primary.walDir, n))), n).toBe(true);
      }
      const miss = await runCli(['fetch', '0000000100000005000000EE', join(dest, 'RECOVERYXLOG'), '--archive', url('e2e')], { env: env() });
      expect(miss.code).toBe(1);

      const st = await runCli(['status', '--archive', url('e2e')], { env: env() });
      expect(st.code, st.stderr).toBe(0);
      expect(st.stdout).toContain(names[names.length - 1]!);
      const v = await runCli(['verify', '--archive', url('e2e')], { env: env() });
      expect(v.code, v.stdout + v.stderr).toBe(0);
      expect(v.stdout).toMatch(/^OK: /m);
      const c = await runCli(['cleanup', '--archive', url('e2e'), '--before', names[2]!, '--dry-run'], { env: env() });
      expect(c.code, c.stderr).toBe(0);
      expect(c.stdout).toContain(names[0]!);
    } finally {
      proc.kill('SIGKILL');
    }
  });

  it('push: an identical copy is accepted, a conflicting one refused with the archived copy untouched', async () => {
    await primary.generateWal(SEG);
    await primary.query('select pg_switch_wal()');
    const name = segName(1, lsnOf(await primary.currentLsn()) - BigInt(SEG), SEG);
    const bytes = readFileSync(join(primary.walDir, name));
    const scratch = newDir('push');
    writeFileSync(join(scratch, name), bytes);
    const push = (): ReturnType<typeof runCli> => runCli(['push', join(scratch, name), '--archive', url('push')], { env: env() });
    expect((await push()).code).toBe(0);
    expect((await push()).code).toBe(0);
    const other = Buffer.from(bytes);
    other[100] = other[100]! ^ 0xff;
    writeFileSync(join(scratch, name), other);
    const conflict = await push();
    expect(conflict.code).toBe(1);
    expect(conflict.stderr.trim().split('\n')).toHaveLength(1);
    expect(conflict.stderr).toContain(name);
    const store = open('push/');
    expect((await store.get(name)).data.equals(bytes)).toBe(true);
    expect((await store.list('quarantine/')).map((o) => o.name)).toEqual([expect.stringMatching(new RegExp(`^quarantine/${name}\\.`))]);
  });

  it('loses nothing when the emulator is stopped mid-upload and started again', async () => {
    const first = await slot('az_outage');
    const spool = newDir('spool');
    const proc = startCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', 'az_outage', '--archive', url('outage'), '-v'], { env: env() });
    try {
      await proc.waitForOutput(/starting log streaming/);
      await primary.generateWal(2 * SEG);
      await proc.waitForOutput(/finished segment/);
      // Stopped while uploads are (or are about to be) in flight.
      await az.pause();
      await primary.generateWal(3 * SEG);
      await proc.waitForOutput(/could not archive/, 60_000);
      await new Promise((r) => setTimeout(r, 500));
      await az.resume();
      const endpos = await primary.currentLsn();
      const store = open('outage/');
      const lastSeg = segName(1, lsnOf(endpos) - BigInt(SEG), SEG);
      const deadline = Date.now() + 90_000;
      while (!(await store.head(lastSeg).catch(() => undefined)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
      proc.kill('SIGTERM');
      const res = await proc.done;
      expect(res.code, res.stderr).toBe(0);
      await expectArchived(store, first, endpos);
      const v = await runCli(['verify', '--archive', url('outage')], { env: env() });
      expect(v.code, v.stdout + v.stderr).toBe(0);
    } finally {
      proc.kill('SIGKILL');
      await az.resume().catch(() => undefined);
    }
  });
});
