// Multi-host connection strings (libpq's host=a,b port=1,2, postgresql://a:1,b:2/) against real
// servers: a primary, its streaming standby and a port nothing listens on. What libpq does and
// walstream must do too: the hosts tried in order on every connect; target_session_attrs deciding
// from what the server reports (in_hot_standby, default_transaction_read_only), else from SHOW
// transaction_read_only over the replication connection; prefer-standby's two passes;
// load_balance_hosts=random; the password file per host and a refused password ending the walk;
// one error naming every host; and the CLI (receive, status) going through the same conninfo.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, freePort, pgVersionsUnderTest } from '../harness/pg.js';
import { TamperProxy } from '../harness/tamper-proxy.js';
import { TcpProxy } from '../harness/proxy.js';
import { runCli, startCli, type CliProcess } from '../support/cli.js';
import { completeSegments } from '../support/walfiles.js';
import { buildClientConfig, describeTarget, type ReplicationClientConfig } from '../../src/session/conninfo.js';
import { AllHostsFailedError, ReplicationConnection } from '../../src/session/connection.js';
import { ServerError } from '../../src/session/errors.js';
import type { StatusReport } from '../../src/ops/status.js';

const SEG = 1024 * 1024;
const HOST = '127.0.0.1';

function tmp(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `walstream-${prefix}-`));
}

/** Keyword/value conninfo for these ports on 127.0.0.1, without TLS (the harness servers have none). */
function conninfo(ports: number[], extra = '', user = 'postgres'): string {
  return `host=${ports.map(() => HOST).join(',')} port=${ports.join(',')} user=${user} sslmode=disable ${extra}`.trim();
}

async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

for (const version of pgVersionsUnderTest()) {
  describe(`multi-host connection strings on PostgreSQL ${version}`, () => {
    let primary: PgCluster;
    let standby: PgCluster;
    /** A port nothing listens on: the host that is down. */
    let down: number;
    let down2: number;
    let sysid: string;
    const dirs: string[] = [];
    const procs: CliProcess[] = [];
    const newDir = (p: string): string => {
      const d = tmp(p);
      dirs.push(d);
      return d;
    };

    beforeAll(async () => {
      primary = await PgCluster.create({ version, name: `multihost${version}`, conf: { wal_sender_timeout: '10s' } });
      standby = await primary.createStandby({ name: `multihost${version}-standby` });
      [down, down2] = [await freePort(), await freePort()];
      sysid = (await primary.query<{ s: string }>('select system_identifier::text as s from pg_control_system()'))[0]!.s;
    });
    afterAll(async () => {
      for (const p of procs) p.kill('SIGKILL');
      await standby?.destroy();
      await primary?.destroy();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    });

    const config = (dbname: string): ReplicationClientConfig => buildClientConfig({ dbname, applicationName: 'walstream-multihost-test' });
    /** The port of the server a connection with this conninfo reaches (the connection is closed again). */
    const reaches = async (dbname: string): Promise<number> => {
      const cfg = config(dbname);
      const conn = await ReplicationConnection.connect(cfg, () => undefined);
      try {
        expect(cfg.connectedHost).toEqual(conn.target);
        return conn.target.port;
      } finally {
        await conn.close();
      }
    };
    const fails = async (dbname: string): Promise<Error> => {
      const err = await ReplicationConnection.connect(config(dbname), () => undefined).then(
        async (conn) => {
          await conn.close();
          throw new Error(`connected to port ${conn.target.port}`);
        },
        (e: unknown) => e as Error,
      );
      return err;
    };

    it('the first host down, then the primary: connects to the primary, and names it', async () => {
      const cfg = config(conninfo([down, primary.port]));
      expect(describeTarget(cfg)).toBe(`${HOST}:${down},${HOST}:${primary.port} as postgres`);
      const conn = await ReplicationConnection.connect(cfg, () => undefined);
      try {
        expect(conn.target).toEqual({ address: HOST, port: primary.port });
        expect(describeTarget(cfg)).toBe(`${HOST}:${primary.port} as postgres`);
        expect(String((await conn.identifySystem()).systemId)).toBe(sysid);
      } finally {
        await conn.close();
      }
      // The same as a URI, and with the hosts in PGHOST/PGPORT-style lists through -h.
      expect(await reaches(`postgresql://postgres@${HOST}:${down},${HOST}:${primary.port}/postgres?sslmode=disable`)).toBe(primary.port);
      const viaOptions = buildClientConfig({ host: `${HOST},${HOST}`, port: `${down},${primary.port}`, user: 'postgres', dbname: 'sslmode=disable', applicationName: 'a' });
      const conn2 = await ReplicationConnection.connect(viaOptions, () => undefined);
      expect(conn2.target.port).toBe(primary.port);
      await conn2.close();
    });

    it('target_session_attrs from what the servers report: read-write and primary pass over the standby, read-only, standby and prefer-standby take it', async () => {
      const both = [standby.port, primary.port];
      const reversed = [primary.port, standby.port];
      const attrs = (ports: number[], v: string) => reaches(conninfo(ports, `target_session_attrs=${v}`));
      expect(await attrs(both, 'any')).toBe(standby.port);
      expect(await attrs(both, 'read-write')).toBe(primary.port);
      expect(await attrs(both, 'primary')).toBe(primary.port);
      expect(await attrs(both, 'read-only')).toBe(standby.port);
      expect(await attrs(both, 'standby')).toBe(standby.port);
      expect(await attrs(both, 'prefer-standby')).toBe(standby.port);
      expect(await attrs(reversed, 'any')).toBe(primary.port);
      expect(await attrs(reversed, 'read-write')).toBe(primary.port);
      expect(await attrs(reversed, 'read-only')).toBe(standby.port);
      expect(await attrs(reversed, 'standby')).toBe(standby.port);
      expect(await attrs(reversed, 'prefer-standby')).toBe(standby.port);
      // prefer-standby without a standby: the second pass takes any server.
      expect(await attrs([down, primary.port], 'prefer-standby')).toBe(primary.port);
      // The servers said what they are at startup (14+), nothing was asked.
      const conn = await ReplicationConnection.connect(config(conninfo([standby.port])), () => undefined);
      expect(conn.parameters.get('in_hot_standby')).toBe('on');
      expect(conn.parameters.get('default_transaction_read_only')).toBe('off');
      await conn.close();
    });

    it('no server of the kind asked for: every host named with why, worth a retry', async () => {
      const noStandby = await fails(conninfo([down, primary.port], 'target_session_attrs=standby'));
      expect(noStandby).toBeInstanceOf(AllHostsFailedError);
      expect(noStandby.message).toBe(
        `connection to server at "${HOST}", port ${down} failed: connect ECONNREFUSED ${HOST}:${down}; ` + `connection to server at "${HOST}", port ${primary.port} failed: server is not in hot standby mode`,
      );
      const readOnly = await fails(conninfo([standby.port], 'target_session_attrs=read-write'));
      expect(readOnly).toBeInstanceOf(AllHostsFailedError);
      expect(readOnly.message).toBe('session is read-only');
      const notReadOnly = await fails(conninfo([primary.port, down], 'target_session_attrs=read-only'));
      expect(notReadOnly.message).toMatch(new RegExp(`port ${primary.port} failed: session is not read-only; .*port ${down} failed: connect ECONNREFUSED`));
    });

    it('a server that does not report in_hot_standby (as before 14) is asked SHOW transaction_read_only over the replication connection', async () => {
      // What a PostgreSQL 13 walsender says at startup: neither setting.
      const asked: string[] = [];
      const hide = (proxy: TamperProxy): void =>
        proxy.tamper((msg, ctx) => {
          if (msg.type === 'C' && ctx.query !== '') asked.push(ctx.query);
          if (msg.type === 'S' && /^(in_hot_standby|default_transaction_read_only)\0/.test(msg.body.toString('latin1'))) return [];
          return undefined;
        });
      const [oldStandby, oldPrimary] = await Promise.all([TamperProxy.start(standby.port), TamperProxy.start(primary.port)]);
      hide(oldStandby);
      hide(oldPrimary);
      try {
        const hidden = await ReplicationConnection.connect(config(conninfo([oldStandby.port])), () => undefined);
        expect(hidden.parameters.has('in_hot_standby')).toBe(false);
        // Why not libpq's SELECT pg_is_in_recovery(): a physical walsender refuses SQL.
        await expect(hidden.command('SELECT pg_catalog.pg_is_in_recovery()')).rejects.toMatchObject({ code: '0A000' });
        await hidden.close();

        asked.length = 0;
        expect(await reaches(conninfo([oldStandby.port, oldPrimary.port], 'target_session_attrs=read-write'))).toBe(oldPrimary.port);
        expect(asked.filter((q) => q === 'SHOW transaction_read_only')).toHaveLength(2);
        expect(asked.some((q) => /pg_is_in_recovery/.test(q))).toBe(false);
        expect(await reaches(conninfo([oldPrimary.port, oldStandby.port], 'target_session_attrs=standby'))).toBe(oldStandby.port);
        expect(await reaches(conninfo([oldStandby.port, oldPrimary.port], 'target_session_attrs=primary'))).toBe(oldPrimary.port);
        expect(await reaches(conninfo([oldPrimary.port, oldStandby.port], 'target_session_attrs=read-only'))).toBe(oldStandby.port);
        expect(await reaches(conninfo([oldPrimary.port, oldStandby.port], 'target_session_attrs=prefer-standby'))).toBe(oldStandby.port);
        expect(asked.some((q) => /pg_is_in_recovery/.test(q))).toBe(false);
      } finally {
        await Promise.all([oldStandby.stop(), oldPrimary.stop()]);
      }
    });

    it('load_balance_hosts=random spreads the connections over the hosts; disable always starts with the first', async () => {
      const seen = new Set<number>();
      for (let i = 0; i < 16; i++) seen.add(await reaches(conninfo([primary.port, standby.port], 'load_balance_hosts=random')));
      expect([...seen].sort()).toEqual([primary.port, standby.port].sort());
      for (let i = 0; i < 4; i++) expect(await reaches(conninfo([primary.port, standby.port], 'load_balance_hosts=disable'))).toBe(primary.port);
    });

    it('the password file is read for each host; a refused password ends the walk, as in libpq', async () => {
      await primary.createRole('mh_user', { replication: true, password: 'right-secret' });
      await standby.waitForReplay(await primary.currentLsn());
      const dir = newDir('pgpass');
      const passfile = join(dir, 'pgpass');
      writeFileSync(passfile, `${HOST}:${standby.port}:replication:mh_user:wrong-secret\n${HOST}:${primary.port}:replication:mh_user:right-secret\n`);
      chmodSync(passfile, 0o600);
      const as = (ports: number[]) => conninfo(ports, `passfile=${passfile}`, 'mh_user');
      expect(await reaches(as([down, primary.port]))).toBe(primary.port);
      expect(await reaches(as([primary.port, standby.port]))).toBe(primary.port);
      const refused = await fails(as([standby.port, primary.port]));
      expect(refused).toBeInstanceOf(ServerError);
      expect(refused).not.toBeInstanceOf(AllHostsFailedError);
      expect((refused as ServerError).code).toBe('28P01');
      expect(refused.message).toBe(`password authentication failed for user "mh_user" (password retrieved from file "${passfile}")`);
      expect(refused.message).not.toContain('secret');
      const afterDown = await fails(as([down, standby.port, primary.port]));
      expect(afterDown.message).toBe(
        `connection to server at "${HOST}", port ${down} failed: connect ECONNREFUSED ${HOST}:${down}; ` +
          `connection to server at "${HOST}", port ${standby.port} failed: password authentication failed for user "mh_user" (password retrieved from file "${passfile}")`,
      );
    });

    it('walstream status goes through the same conninfo (a URI here): the host target_session_attrs picks is asked', async () => {
      await primary.query("select pg_create_physical_replication_slot('mh_slot')");
      const archive = newDir('status-archive');
      const uri = (attrs: string): string => `postgresql://postgres@${HOST}:${down},${HOST}:${standby.port},${HOST}:${primary.port}/postgres?sslmode=disable&target_session_attrs=${attrs}`;
      const status = async (attrs: string): Promise<StatusReport> => {
        const res = await runCli(['status', '--archive', archive, '--json', '-S', 'mh_slot', '-d', uri(attrs)]);
        expect(res.code, res.stderr).toBe(0);
        return JSON.parse(res.stdout) as StatusReport;
      };
      if (version >= 15) {
        // The slot is the primary's: READ_REPLICATION_SLOT finds it there only.
        expect((await status('read-write')).slot).toMatchObject({ name: 'mh_slot', exists: true });
        expect((await status('standby')).slot).toMatchObject({ name: 'mh_slot', exists: false });
      }
      expect((await status('primary')).server).toMatchObject({ systemIdentifier: sysid, timeline: 1 });
      const none = await runCli(['status', '--archive', archive, '-d', conninfo([down, down2])]);
      expect(none.code).toBe(1);
      expect(none.stderr).toContain(`connection to server at "${HOST}", port ${down} failed`);
      expect(none.stderr).toContain(`connection to server at "${HOST}", port ${down2} failed`);
    });

    it('every host down: receive --no-loop exits 1 with one line naming each host and why', async () => {
      const dir = newDir('alldown');
      const res = await runCli(['receive', '-D', dir, '-n', '-d', conninfo([down, down2])]);
      expect(res.code, res.stderr).toBe(1);
      const lines = res.stderr.trim().split('\n');
      expect(lines, res.stderr).toHaveLength(1);
      expect(lines[0]).toBe(
        `walstream: error: could not connect to ${HOST}:${down},${HOST}:${down2} as postgres: ` +
          `connection to server at "${HOST}", port ${down} failed: connect ECONNREFUSED ${HOST}:${down}; ` +
          `connection to server at "${HOST}", port ${down2} failed: connect ECONNREFUSED ${HOST}:${down2}`,
      );
    });

    it('every host down when receive starts (no --no-loop): it retries the list with backoff until one answers', async () => {
      const dir = newDir('alldown-start');
      // A closed port, and the primary behind a port that opens later.
      const late = await freePort();
      const proc = startCli(['receive', '-D', dir, '-d', conninfo([down, late]), '-v', '--receive-timeout', '5'], { timeoutMs: 300_000 });
      procs.push(proc);
      await proc.waitForOutput(new RegExp(`could not connect to .*port ${late} failed: connect ECONNREFUSED[^\\n]*; retrying`));
      await proc.waitForOutput(/waiting \d+ ms before reconnecting/);
      // The second host comes up (a forwarder to the primary on that port): streaming starts.
      const back = await TcpProxy.start(primary.port, '127.0.0.1', late);
      try {
        await proc.waitForOutput(/starting log streaming at/, 60_000);
        proc.kill('SIGTERM');
        const res = await proc.done;
        expect(res.code, res.stderr).toBe(0);
      } finally {
        await back.stop();
      }
    });

    it('receive streams through a multi-host conninfo from the primary, and retries the whole list with backoff while no host will do', async () => {
      const dir = newDir('receive');
      const dbname = conninfo([down, standby.port, primary.port], 'target_session_attrs=read-write');
      const proc = startCli(['receive', '-D', dir, '-d', dbname, '-v'], { timeoutMs: 300_000 });
      procs.push(proc);
      await proc.waitForOutput(/starting log streaming at/);
      // It streams from the primary, not from the standby listed before it.
      const receivers = async (server: PgCluster): Promise<number> =>
        Number((await server.query<{ n: string }>("select count(*)::text as n from pg_stat_replication where application_name = 'walstream'"))[0]!.n);
      await until(async () => (await receivers(primary)) === 1, 'the receiver on the primary');
      expect(await receivers(standby)).toBe(0);
      // A segment arrives.
      await primary.generateWal(SEG / 4);
      await primary.switchWal();
      await until(() => completeSegments(dir).length >= 1, 'a complete segment');
      const before = completeSegments(dir).length;

      // The primary goes away: every reconnect tries the whole list, says why each host would not do, and backs off.
      await primary.stop('fast');
      const line = new RegExp(
        `connection to server at "${HOST}", port ${down} failed: connect ECONNREFUSED[^;\\n]*; ` +
          `connection to server at "${HOST}", port ${standby.port} failed: session is read-only; ` +
          `connection to server at "${HOST}", port ${primary.port} failed: connect ECONNREFUSED[^;\\n]*; retrying`,
      );
      await proc.waitForOutput(line);
      await proc.waitForOutput(new RegExp(`${line.source}[\\s\\S]*waiting \\d+ ms before reconnecting[\\s\\S]*${line.source}`), 60_000);
      // Back: streaming goes on from the primary.
      await primary.start();
      await proc.waitForOutput(/starting log streaming at[\s\S]*starting log streaming at/, 90_000);
      await primary.generateWal(SEG / 4);
      await primary.switchWal();
      await until(() => completeSegments(dir).length > before, 'a segment after the reconnect');
      proc.kill('SIGTERM');
      const res = await proc.done;
      expect(res.code, res.stderr).toBe(0);
    });
  });
}
