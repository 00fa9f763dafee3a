import { afterAll, describe, expect, it } from 'vitest';
import { PgCluster, pgVersionsUnderTest } from '../harness/pg.js';

for (const version of pgVersionsUnderTest()) {
  describe(`test harness with PostgreSQL ${version}`, () => {
    let primary: PgCluster | undefined;
    let standby: PgCluster | undefined;

    afterAll(async () => {
      await standby?.destroy();
      await primary?.destroy();
    });

    function need<T>(c: T | undefined, what: string): T {
      if (c === undefined) throw new Error(`${what} was not created (earlier step failed)`);
      return c;
    }

    it('creates a primary with 1 MB WAL segments', async () => {
      primary = await PgCluster.create({ version, walSegmentSizeMB: 1, name: `harness${version}` });
      const [row] = await primary.query<{ server_version_num: string }>('show server_version_num');
      expect(Math.floor(Number(row?.server_version_num) / 10000)).toBe(version);
      const [seg] = await primary.query<{ wal_segment_size: string }>('show wal_segment_size');
      expect(seg?.wal_segment_size).toBe('1MB');
    });

    it('generates WAL', async () => {
      const p = need(primary, 'primary');
      const before = await p.currentLsn();
      const end = await p.generateWal(3 * 1024 * 1024);
      const [row] = await p.query<{ diff: string }>('select pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint::text as diff', [end, before]);
      expect(Number(row?.diff)).toBeGreaterThanOrEqual(3 * 1024 * 1024);
      const switched = await p.switchWal();
      expect(switched).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    });

    it('creates a streaming standby that replays new writes', async () => {
      const p = need(primary, 'primary');
      standby = await p.createStandby({ name: `harness${version}-sb` });
      expect(await standby.isInRecovery()).toBe(true);
      expect(standby.port).not.toBe(p.port);

      await p.query('create table harness_check (id int primary key, note text)');
      await p.query("insert into harness_check values (1, 'hello standby')");
      const lsn = await p.currentLsn();
      await standby.waitForReplay(lsn);
      const rows = await standby.query<{ note: string }>('select note from harness_check where id = 1');
      expect(rows).toEqual([{ note: 'hello standby' }]);

      const [rep] = await p.query<{ application_name: string; state: string }>('select application_name, state from pg_stat_replication');
      expect(rep?.application_name).toBe(`harness${version}-sb`);
      expect(rep?.state).toBe('streaming');
    });

    it('promotes the standby to timeline 2', async () => {
      const s = need(standby, 'standby');
      await s.promote();
      expect(await s.isInRecovery()).toBe(false);
      await s.checkpoint();
      const [row] = await s.query<{ timeline_id: number }>('select timeline_id from pg_control_checkpoint()');
      expect(row?.timeline_id).toBe(2);
      await s.query("insert into harness_check values (2, 'after promote')");
    });

    it('destroys clusters idempotently', async () => {
      const s = need(standby, 'standby');
      const p = need(primary, 'primary');
      await s.destroy();
      await s.destroy();
      await p.destroy();
      expect(s.isRunning()).toBe(false);
      expect(p.isRunning()).toBe(false);
    });
  });
}

for (const version of pgVersionsUnderTest()) {
  describe(`test harness extras with PostgreSQL ${version}`, () => {
    let primary: PgCluster | undefined;
    let standby: PgCluster | undefined;

    afterAll(async () => {
      await standby?.destroy();
      await primary?.destroy();
    });

    it('creates roles usable over scram and honours pg_hba', async () => {
      primary = await PgCluster.create({ version, name: `extras${version}` });
      await primary.createRole('repl_user', { replication: true, password: 's3cr3t' });
      await primary.createRole('nohba_user', { replication: true, password: 's3cr3t' });

      const ok = await primary.connect({ user: 'repl_user', password: 's3cr3t', replication: true });
      try {
        const res = await ok.query<{ systemid: string; timeline: number }>('IDENTIFY_SYSTEM');
        expect(res.rows[0]?.systemid).toMatch(/^\d+$/);
      } finally {
        await ok.end();
      }
      await expect(primary.connect({ user: 'repl_user', password: 'wrong', replication: true })).rejects.toThrow(/password authentication failed/);
      await expect(primary.connect({ user: 'nohba_user', password: 's3cr3t', replication: true })).rejects.toThrow(/pg_hba\.conf rejects/);
    });

    it('creates a slot-based standby started later', async () => {
      const p = need(primary);
      standby = await p.createStandby({ slot: 'harness_slot', start: false });
      expect(standby.isRunning()).toBe(false);
      await standby.start();
      const lsn = await p.switchWal();
      await standby.waitForReplay(lsn);
      await p.waitFor(
        async () => {
          const [slot] = await p.query<{ active: boolean }>("select active from pg_replication_slots where slot_name = 'harness_slot'");
          return slot?.active === true;
        },
        30_000,
        'slot to become active',
      );
    });

    it('survives kill9 and restart', async () => {
      const p = need(primary);
      await p.query('create table crash_check (id int)');
      await p.query('insert into crash_check values (1)');
      await p.kill9();
      expect(p.isRunning()).toBe(false);
      await expect(p.query('select 1')).rejects.toThrow();
      await p.start();
      expect(await p.query('select id from crash_check')).toEqual([{ id: 1 }]);
      await p.restart();
      const lsn = await p.generateWal(100_000);
      await need(standby).waitForReplay(lsn);
      expect(await need(standby).query('select id from crash_check')).toEqual([{ id: 1 }]);
    });

    it('reports failing commands with the server log tail', async () => {
      const err = await PgCluster.create({ version, name: `broken${version}`, conf: { shared_buffers: 'bogus' } }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(Error);
      const msg = (err as Error).message;
      expect(msg).toMatch(/pg_ctl .* start/);
      expect(msg).toMatch(/exit code 1/);
      expect(msg).toMatch(/server log tail[\s\S]*shared_buffers/);
    });
  });

  function need(c: PgCluster | undefined): PgCluster {
    if (c === undefined) throw new Error('cluster was not created (earlier step failed)');
    return c;
  }
}
