// walstream backup against real servers: a PostgreSQL 15 primary with a tablespace backed up into a
// local archive that walstream receive feeds with its WAL, compared file for file with what
// pg_basebackup -Ft -X none writes; gzip and encryption; a backup killed mid-way (listed as
// interrupted, removed by the next run); the refusals (an archive without this server's WAL,
// another system's archive, bad options); and the older (14) and newer (17) servers.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, createReadStream } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, toolBinDir } from '../harness/pg.js';
import { PG_OS_USER, run, runAsPg } from '../harness/exec.js';
import { TamperProxy } from '../harness/tamper-proxy.js';
import { runCli, startCli, type CliProcess } from '../support/cli.js';
import { pgOwnedDir, walstreamProgram } from '../support/pgcommand.js';
import { LocalStore } from '../../src/storage/local.js';
import { listBackups, type BackupRecord } from '../../src/backup/layout.js';
import { readTar, readAll } from '../../src/backup/tar.js';
import { openArchive } from '../../src/storage/open.js';
import { loadKeyring } from '../../src/storage/encryption.js';
import type { ArchiveStore } from '../../src/storage/types.js';

/** Every file of a tar (name → bytes), or only the names of those `keep` says to read. */
async function tarFiles(source: AsyncIterable<Buffer>, keep: (name: string) => boolean = () => true): Promise<Map<string, Buffer | undefined>> {
  const out = new Map<string, Buffer | undefined>();
  for await (const e of readTar(source)) {
    if (e.type !== 'file') {
      for await (const _ of e.content) void _;
      continue;
    }
    if (keep(e.name)) out.set(e.name, await readAll(e.content));
    else {
      for await (const _ of e.content) void _;
      out.set(e.name, undefined);
    }
  }
  return out;
}

async function storedTar(store: ArchiveStore, name: string, keep?: (name: string) => boolean): Promise<Map<string, Buffer | undefined>> {
  const { stream } = await store.getStream!(name);
  return tarFiles(stream, keep);
}

describe('walstream backup', () => {
  let primary: PgCluster;
  let archive: string;
  let tsDir: string;
  const dirs: string[] = [];
  const others: PgCluster[] = [];
  const receivers: CliProcess[] = [];
  const newDir = (p: string): string => {
    const d = mkdtempSync(join(tmpdir(), `walstream-${p}-`));
    dirs.push(d);
    return d;
  };
  const conn = (c: PgCluster): string[] => ['-d', c.connectionString()];
  /** A cluster for a data directory walstream restore writes (destroyed at the end). */
  const forNew = async (name: string, version: number): Promise<PgCluster> => {
    const c = await PgCluster.forNewDataDir({ name, version });
    others.push(c);
    return c;
  };

  /** A walstream receive archiving `c`'s WAL into a new local archive, through a slot of its own (a loaded machine may see it reconnect). */
  let slots = 0;
  const feed = async (c: PgCluster): Promise<{ archive: string; proc: CliProcess }> => {
    const a = newDir('archive');
    const slot = `feed_${++slots}`;
    await c.query(`select pg_create_physical_replication_slot('${slot}', true)`);
    const proc = startCli(['receive', '-D', newDir('spool'), ...conn(c), '-S', slot, '--archive', a, '--partial-interval', '0']);
    receivers.push(proc);
    return { archive: a, proc };
  };
  const waitForIdentity = async (a: string): Promise<void> => {
    const deadline = Date.now() + 30_000;
    while (!readdirSync(a).includes('walstream.json')) {
      if (Date.now() > deadline) throw new Error(`the receiver did not claim ${a}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  beforeAll(async () => {
    primary = await PgCluster.create({ name: 'backup', conf: { max_wal_senders: 10 } });
    tsDir = pgOwnedDir('tablespace');
    dirs.push(tsDir);
    await primary.query(`create tablespace extra location '${tsDir}'`);
    await primary.query("create table in_extra tablespace extra as select g as id, repeat('t', 200) as pad from generate_series(1, 10000) g");
    await primary.query('create table in_base as select g as id, md5(g::text) as pad from generate_series(1, 40000) g');
    await primary.query('select count(*) from in_extra');
    await primary.query('select count(*) from in_base');
    await primary.checkpoint();
    ({ archive } = await feed(primary));
    await waitForIdentity(archive);
    await primary.switchWal();
  }, 180_000);

  afterAll(async () => {
    for (const r of receivers) r.kill('SIGTERM');
    await Promise.all(receivers.map((r) => r.done));
    for (const c of others) await c.destroy();
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('stores a backup that holds what pg_basebackup -Ft -X none holds, verified and recorded last', async () => {
    const res = await runCli(['backup', ...conn(primary), '--archive', archive, '-c', 'fast', '-l', 'first', '-P']);
    expect(res.stderr).not.toMatch(/error/);
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/^backup \d{8}T\d{6}Z: start [0-9A-F]+\/[0-9A-F]+, end [0-9A-F]+\/[0-9A-F]+, timeline 1, /);
    // Not a terminal: the progress is one line at the end.
    expect(res.stderr.match(/backup: .* sent by the server/g)?.length).toBe(1);

    const store = new LocalStore(archive);
    const { complete, incomplete } = await listBackups(store);
    expect(incomplete).toEqual([]);
    expect(complete).toHaveLength(1);
    const rec = complete[0]!;
    expect(rec.label).toBe('first');
    const [oid] = await primary.query<{ oid: string }>("select oid::text from pg_tablespace where spcname = 'extra'");
    expect(rec.objects.map((o) => o.name).sort()).toEqual([`backups/${rec.name}.${oid!.oid}.tar`, `backups/${rec.name}.backup_manifest`, `backups/${rec.name}.base.tar`].sort());
    const ts = rec.objects.find((o) => o.kind === 'tablespace')!;
    expect(ts.oid).toBe(Number(oid!.oid));
    expect(ts.location).toBe(tsDir);
    const [sys] = await primary.query<{ id: string }>('select system_identifier::text as id from pg_control_system()');
    expect(rec.systemId).toBe(sys!.id);
    expect(rec.walMethod).toBe('archive');
    for (const o of rec.objects) expect((await store.head(o.name))?.checksum).toBe(o.sha256);

    // pg_basebackup's output, taken the same way.
    const out = newDir('pgbb');
    await run([join(toolBinDir(), 'pg_basebackup'), '-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', out, '-Ft', '-X', 'none', '-c', 'fast', '--no-sync'], {
      timeoutMs: 120_000,
    });
    const [rel] = await primary.query<{ base: string; extra: string }>("select pg_relation_filepath('in_base') as base, pg_relation_filepath('in_extra') as extra");
    const extraInTar = rel!.extra.replace(`pg_tblspc/${oid!.oid}/`, '');
    const theirs = await tarFiles(createReadStream(join(out, 'base.tar')), (n) => n === rel!.base);
    const ours = await storedTar(store, `backups/${rec.name}.base.tar`, (n) => n === rel!.base);
    expect([...ours.keys()].sort()).toEqual([...theirs.keys()].sort());
    expect(ours.get(rel!.base)!.equals(theirs.get(rel!.base)!)).toBe(true);
    const theirTs = await tarFiles(createReadStream(join(out, `${oid!.oid}.tar`)), (n) => n === extraInTar);
    const ourTs = await storedTar(store, `backups/${rec.name}.${oid!.oid}.tar`, (n) => n === extraInTar);
    expect([...ourTs.keys()].sort()).toEqual([...theirTs.keys()].sort());
    expect(ourTs.get(extraInTar)!.equals(theirTs.get(extraInTar)!)).toBe(true);
    expect(readdirSync(out).sort()).toEqual(['backup_manifest', 'base.tar', `${oid!.oid}.tar`].sort());

    const list = await runCli(['backup', 'list', '--archive', archive, '--json']);
    expect(list.code).toBe(0);
    const listed = JSON.parse(list.stdout) as { name: string; status: string; walToConsistency: boolean; walToNow: boolean; startLsn: string }[];
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({ name: rec.name, status: 'complete', walToConsistency: true, walToNow: true, startLsn: rec.startLsn });
    const text = await runCli(['backup', 'list', '--archive', archive]);
    expect(text.stdout).toContain(`${rec.name}  start ${rec.startLsn}  end ${rec.endLsn}  timeline 1`);
  }, 180_000);

  it('refuses bytes altered on their way from the server, checked as they are stored (and with --read-back), and records nothing', async () => {
    const proxy = await TamperProxy.start(primary.port);
    try {
      const before = (await listBackups(new LocalStore(archive))).complete.length;
      for (const extra of [[], ['--read-back']]) {
        let data = 0;
        const fired = proxy.tampered;
        proxy.tamper((msg, ctx) => {
          // The 20th archive-data CopyData of BASE_BACKUP (15+: its payload starts with 'd'): bytes flipped across it.
          if (msg.type !== 'd' || !ctx.query.startsWith('BASE_BACKUP') || msg.body[0] !== 0x64 || ++data !== 20) return undefined;
          const body = Buffer.from(msg.body);
          for (let i = 1; i <= 8; i++) body[Math.floor((body.length * i) / 9)]! ^= 0x5a;
          return [{ type: 'd', body }];
        });
        const res = await runCli(['backup', '-d', `host=127.0.0.1 port=${proxy.port} user=postgres sslmode=disable`, '--archive', archive, '-c', 'fast', ...extra]);
        expect(proxy.tampered).toBe(fired + 1);
        expect(res.code).toBe(1);
        expect(res.stderr).toMatch(/does not match its manifest|is damaged/);
        expect(res.stderr).toMatch(/nothing was recorded/);
        const { complete, incomplete } = await listBackups(new LocalStore(archive));
        expect(complete).toHaveLength(before);
        expect(incomplete).toEqual([]);
      }
    } finally {
      await proxy.stop();
    }
  }, 120_000);

  it('leaves a backup killed mid-way as interrupted, and the next run removes it', async () => {
    const before = new Set((await listBackups(new LocalStore(archive))).complete.map((r) => r.name));
    // Throttled (1 MB/s), so that the kill comes while base.tar streams (the tablespace's tar comes first).
    const proc = startCli(['backup', ...conn(primary), '--archive', archive, '-c', 'fast', '-r', '1M', '-v']);
    const deadline = Date.now() + 60_000;
    for (;;) {
      const names = readdirSync(join(archive, 'backups')).filter((n) => /\.\d+\.tar$/.test(n) && !before.has(n.slice(0, n.indexOf('.'))));
      if (names.length > 0) break;
      if (Date.now() > deadline) throw new Error(`the tablespace's tar never appeared:\n${proc.stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    proc.kill('SIGKILL');
    await proc.done;
    const list = await runCli(['backup', 'list', '--archive', archive, '--json']);
    const listed = JSON.parse(list.stdout) as { name: string; status: string }[];
    const interrupted = listed.filter((b) => b.status === 'interrupted');
    expect(interrupted).toHaveLength(1);
    expect((await runCli(['backup', 'list', '--archive', archive])).stdout).toContain(`${interrupted[0]!.name}  interrupted`);
    // The next run removes it once its objects are older than the leftover age.
    await new Promise((r) => setTimeout(r, 1100));
    const next = await runCli(['backup', ...conn(primary), '--archive', archive, '-c', 'fast', '--leftover-age', '1s']);
    expect(next.code).toBe(0);
    expect(next.stderr).toContain(`removed interrupted backup ${interrupted[0]!.name}`);
    const after = await listBackups(new LocalStore(archive));
    expect(after.incomplete).toEqual([]);
    expect(after.complete.length).toBe(before.size + 1);
  }, 180_000);

  it('refuses an archive without this server WAL (--wal none) and writes nothing there', async () => {
    const empty = newDir('empty');
    const res = await runCli(['backup', ...conn(primary), '--archive', empty]);
    expect(res.code).toBe(1);
    expect(res.stderr.trim().split('\n')).toHaveLength(1);
    expect(res.stderr).toMatch(/nothing archives this server's WAL into .*: run walstream receive or set archive_command/);
    expect(readdirSync(empty)).toEqual([]);
  });

  it('waits for its WAL only --wal-timeout long, then records nothing and removes what it stored', async () => {
    const fed = await feed(primary);
    await waitForIdentity(fed.archive);
    await primary.switchWal();
    const deadline = Date.now() + 30_000;
    while (!readdirSync(fed.archive).some((n) => /^[0-9A-F]{24}$/.test(n))) {
      if (Date.now() > deadline) throw new Error('no segment archived');
      await new Promise((r) => setTimeout(r, 100));
    }
    // Nothing archives the WAL any more.
    fed.proc.kill('SIGTERM');
    await fed.proc.done;
    const res = await runCli(['backup', ...conn(primary), '--archive', fed.archive, '-c', 'fast', '--wal-timeout', '2']);
    expect(res.code).toBe(1);
    expect(res.stderr.trim().split('\n')).toHaveLength(1);
    expect(res.stderr).toMatch(/the WAL this backup needs is not all in .* after 2 s: .* missing .*Nothing was recorded/);
    const after = await listBackups(new LocalStore(fed.archive));
    expect(after).toEqual({ complete: [], incomplete: [] });
  }, 120_000);

  it('--wal stream: streams its own WAL into an archive nothing else feeds, and the backup is self-contained', async () => {
    const fresh = newDir('stream');
    const res = await runCli(['backup', ...conn(primary), '--archive', fresh, '-c', 'fast', '--wal', 'stream', '-Z', 'gzip']);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    const store = new LocalStore(fresh);
    const { complete } = await listBackups(store);
    expect(complete).toHaveLength(1);
    const rec = complete[0]!;
    expect(rec.walMethod).toBe('stream');
    const names = new Set((await store.list('')).map((o) => o.name));
    const seg = (n: string): number => Number.parseInt(n.slice(16), 16) + Number.parseInt(n.slice(8, 16), 16) * 4096;
    for (let s = seg(rec.startWal); s <= seg(rec.endWal); s++) {
      const n = `${rec.startWal.slice(0, 16)}${s.toString(16).toUpperCase().padStart(8, '0')}`;
      expect(names.has(n), n).toBe(true);
    }
    const listed = JSON.parse((await runCli(['backup', 'list', '--archive', fresh, '--json'])).stdout) as { walToConsistency: boolean }[];
    expect(listed[0]!.walToConsistency).toBe(true);
    // Nothing of the receiver's is left behind.
    expect(readdirSync(tmpdir()).filter((n) => n.startsWith('walstream-backup-wal-'))).toEqual([]);
  }, 120_000);

  it('gives one-line errors for bad options', async () => {
    for (const args of [
      ['--checkpoint', 'slow'],
      ['--max-rate', '1'],
      ['--wal', 'fetch'],
      ['-Z', 'lz4'],
      ['--wal-timeout', 'soon'],
    ]) {
      const res = await runCli(['backup', ...conn(primary), '--archive', archive, ...args]);
      expect(res.code, args.join(' ')).toBe(1);
      expect(res.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
    }
    const none = await runCli(['backup', ...conn(primary)], { env: { WALSTREAM_ARCHIVE: undefined } });
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no archive given/);
  });

  // Last on this archive: its record is encrypted too, so listing the archive needs the key from here on.
  it('compresses with gzip and encrypts with the key, and the backup reads back only with it', async () => {
    const keyFile = join(newDir('key'), 'keys');
    writeFileSync(keyFile, `k1=${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const res = await runCli(['backup', ...conn(primary), '--archive', archive, '-c', 'fast', '-Z', 'gzip', '--encryption-key-file', keyFile]);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    const plain = new LocalStore(archive);
    const keyed = await openArchive(archive, { keyring: await loadKeyring({ keyFile }) });
    const { complete } = await listBackups(keyed);
    const rec = complete.at(-1) as BackupRecord;
    expect(rec.objects.every((o) => o.compression === 'gzip')).toBe(true);
    const base = rec.objects.find((o) => o.kind === 'base')!;
    expect(base.storedSize).toBeLessThan(base.size);
    // Stored encrypted: no key, no bytes.
    await expect(plain.get(base.name.replace('base.tar', 'backup_manifest'))).rejects.toThrow(/encrypted with key "k1"/);
    try {
      const files = await storedTar(keyed, base.name);
      expect(files.has('PG_VERSION')).toBe(true);
      expect(files.has('backup_label')).toBe(true);
      expect(files.has('global/pg_control')).toBe(true);
    } finally {
      await keyed.close();
    }
  }, 120_000);

  for (const version of [14, 16, 17, 18]) {
    it(`backs up PostgreSQL ${version} (${version < 15 ? 'one COPY per tablespace' : 'one COPY of typed messages'}), refuses another system's archive${version === 14 || version === 18 ? ', and restores it to the end of the archive' : ''}`, async () => {
      const c = await PgCluster.create({ version, name: `backup${version}` });
      others.push(c);
      const t = pgOwnedDir(`tablespace${version}`);
      dirs.push(t);
      await c.query(`create tablespace extra location '${t}'`);
      await c.query('create table in_extra tablespace extra as select g as id from generate_series(1, 1000) g');
      // Another system's archive: refused before anything is written.
      const foreign = await runCli(['backup', ...conn(c), '--archive', archive]);
      expect(foreign.code).toBe(1);
      expect(foreign.stderr).toMatch(/database system/);
      const fed = await feed(c);
      await waitForIdentity(fed.archive);
      await c.switchWal();
      const res = await runCli(['backup', ...conn(c), '--archive', fed.archive, '-c', 'fast', '-l', `pg${version}`]);
      expect(res.stderr).toBe('');
      expect(res.code).toBe(0);
      const { complete } = await listBackups(new LocalStore(fed.archive));
      expect(complete).toHaveLength(1);
      const rec = complete[0]!;
      expect(Math.floor(rec.serverVersion / 10000)).toBe(version);
      expect(rec.objects.map((o) => o.kind).sort()).toEqual(['base', 'manifest', 'tablespace']);
      const files = await storedTar(new LocalStore(fed.archive), rec.objects.find((o) => o.kind === 'base')!.name);
      expect(readFileSync(join(c.dataDir, 'PG_VERSION'), 'utf8')).toBe(files.get('PG_VERSION')!.toString());

      // Restored (as the server's OS user) and started with the same version: it recovers to the
      // end of the archive, rows written after the backup included. The oldest and newest
      // versions only (15's restore has test/integration/restore.test.ts), to keep the suite short.
      if (version !== 14 && version !== 18) return;
      await c.query('insert into in_extra select generate_series(1001, 1500)');
      const last = (await c.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
      await c.switchWal();
      const deadline = Date.now() + 60_000;
      while (!readdirSync(fed.archive).includes(last)) {
        if (Date.now() > deadline) throw new Error(`${last} never reached the archive`);
        await new Promise((r) => setTimeout(r, 100));
      }
      fed.proc.kill('SIGTERM');
      await fed.proc.done;
      await run(['chown', '-R', `${PG_OS_USER}:`, fed.archive]);
      const r = await forNew(`restored${version}`, version);
      const { node, bin } = walstreamProgram();
      const restored = await runAsPg(node, [bin, 'restore', '--archive', fed.archive, '-D', r.dataDir, '-T', `${t}=${join(r.baseDir, 'ts')}`], { check: false, timeoutMs: 120_000 });
      expect(restored.exitCode, restored.stderr).toBe(0);
      r.configure({});
      await r.start();
      await r.waitFor(async () => !(await r.isInRecovery()), 120_000, 'the end of recovery');
      expect(await r.query('select count(*)::int as n, sum(id)::int as s from in_extra')).toEqual([{ n: 1500, s: 1125750 }]);
    }, 180_000);
  }
});
