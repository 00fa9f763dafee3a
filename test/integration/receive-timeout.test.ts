// --receive-timeout (PostgreSQL's wal_receiver_timeout): a connection that goes silent for good
// (black-holed by a proxy: no byte either way, no reset) ends with a clear error, and with
// --no-loop walstream exits 1; a connection attempt that stalls is bounded by connect_timeout,
// else by the receive timeout. The long run (reconnecting by itself, data verified) is in
// test/faults/dead-connection.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../harness/pg.js';
import { TcpProxy } from '../harness/proxy.js';
import { runCli, startCli } from '../support/cli.js';
import { assertSegmentsMatch, completeSegments } from '../support/walfiles.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { TamperProxy } from '../harness/tamper-proxy.js';
import { parseLsn } from '../../src/wal/lsn.js';

describe('receive --receive-timeout', () => {
  let primary: PgCluster;
  let proxy: TcpProxy;
  let s3: S3TestServer | undefined;
  const dirs: string[] = [];
  const newDir = (): string => {
    const d = mkdtempSync(join(tmpdir(), 'walstream-rtimeout-'));
    dirs.push(d);
    return d;
  };

  beforeAll(async () => {
    primary = await PgCluster.create({ name: 'rtimeout' });
    proxy = await TcpProxy.start(primary.port);
  });
  afterAll(async () => {
    await s3?.stop();
    await proxy?.stop();
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const through = (extra = ''): string => `host=127.0.0.1 port=${proxy.port} user=postgres sslmode=disable${extra}`;

  it('with --no-loop, a black-holed connection ends in exit 1 with one line naming the timeout', async () => {
    const dir = newDir();
    const proc = startCli(['receive', '-D', dir, '-d', through(), '-n', '--receive-timeout', '2', '-s', '1', '-v'], { timeoutMs: 60_000 });
    await proc.waitForOutput(/starting log streaming/);
    await primary.generateWal(1024 * 1024 + 1000);
    await primary.switchWal();
    // Let the receiver finish a segment, then silence the connection for good.
    await new Promise((r) => setTimeout(r, 1500));
    const silencedAt = Date.now();
    expect(proxy.blackhole()).toBe(1);
    const res = await proc.done;
    const took = Date.now() - silencedAt;
    expect(res.code, res.stderr).toBe(1);
    const last = res.stderr.trim().split('\n').pop()!;
    expect(last).toMatch(/^walstream: error: no message from the server for [23] s: connection considered dead/);
    // Two seconds of silence counted from the last message (which came a little before the
    // black hole, -s 1 asks for one every second), plus the process's exit.
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(10_000);
    // What was received stays, byte for byte the server's.
    expect(assertSegmentsMatch(dir, primary.walDir, completeSegments(dir))).toBeGreaterThan(0);
  });

  it('the same through WALSTREAM_RECEIVE_TIMEOUT, without -v: only the error line', async () => {
    const dir = newDir();
    const proc = startCli(['receive', '-D', dir, '-d', through(), '-n', '-s', '1', '--application-name', 'rt_env'], { env: { WALSTREAM_RECEIVE_TIMEOUT: '2' }, timeoutMs: 60_000 });
    // Streaming: the server has the receiver in pg_stat_replication.
    await primary.waitFor(async () => (await primary.query("select 1 from pg_stat_replication where application_name = 'rt_env' and state = 'streaming'")).length > 0, 30_000, 'walstream streaming');
    expect(proxy.blackhole()).toBe(1);
    const res = await proc.done;
    expect(res.code, res.stderr).toBe(1);
    expect(res.stderr.trim().split('\n'), res.stderr).toEqual([expect.stringMatching(/^walstream: error: no message from the server for [23] s: connection considered dead/)]);
  });

  it('an idle but live server is not taken for dead: the receiver asks for a reply at half the timeout', async () => {
    const dir = newDir();
    // -s 0 sends no status updates on a timer, and wal_sender_timeout 60 s makes the server send
    // its own keepalive only after 30 s: only the receiver's ping keeps a 2 s timeout from expiring.
    const proc = startCli(['receive', '-D', dir, '-d', through(), '-n', '-s', '0', '--receive-timeout', '2', '-v'], { timeoutMs: 60_000 });
    await proc.waitForOutput(/starting log streaming/);
    await new Promise((r) => setTimeout(r, 7000));
    expect(proc.stderr).not.toMatch(/no message from the server/);
    proc.kill('SIGTERM');
    const res = await proc.done;
    expect(res.code, res.stderr).toBe(0);
  });

  it('time with reading paused on purpose (the upload spool full) is not silence: no dead connection, no reconnect', async () => {
    s3 = await startS3({ builtIn: true });
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    const dir = newDir();
    const url = `s3://${s3.bucket}/${s3.prefix}paused/`;
    const proc = startCli(['receive', '-D', dir, '-d', through(), '--archive', url, '--s3-endpoint', s3.endpoint, '--spool-max', '1MB', '--partial-interval', '0', '--receive-timeout', '2', '-s', '1', '-v'], {
      env,
      timeoutMs: 120_000,
    });
    try {
      await proc.waitForOutput(/starting log streaming/);
      // The archive refuses connections: finished segments pile up in the spool past --spool-max,
      // and the receiver stops reading for far longer than its receive timeout.
      await s3.pause('refuse');
      for (let i = 0; i < 4; i++) {
        await primary.generateWal(1024 * 1024);
        await primary.switchWal();
      }
      await proc.waitForOutput(/pausing the stream/, 30_000);
      await new Promise((r) => setTimeout(r, 8000));
      await s3.resume();
      await proc.waitForOutput(/resuming the stream/, 60_000);
      // Reading again: the clock started anew, the server is live, so still no timeout.
      await new Promise((r) => setTimeout(r, 4000));
      expect(proc.stderr).not.toMatch(/no message from the server/);
      expect(proc.stderr.match(/starting log streaming/g), proc.stderr).toHaveLength(1);
    } finally {
      await s3.resume();
      proc.kill('SIGTERM');
    }
    const res = await proc.done;
    expect(res.code, res.stderr).toBe(0);
  });

  it('a first connection that stalls (the proxy holds new connections) times out by connect_timeout', async () => {
    const dir = newDir();
    proxy.freeze();
    try {
      const started = Date.now();
      const res = await runCli(['receive', '-D', dir, '-d', through(' connect_timeout=2'), '-n', '--receive-timeout', '30'], { timeoutMs: 60_000 });
      expect(res.code, res.stderr).toBe(1);
      expect(res.stderr).toMatch(/could not connect to .*timeout expired/);
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      proxy.resume();
    }
  });

  it('... and without connect_timeout, by the receive timeout', async () => {
    const dir = newDir();
    proxy.freeze();
    try {
      const started = Date.now();
      const res = await runCli(['receive', '-D', dir, '-d', through(), '-n', '--receive-timeout', '2'], { timeoutMs: 60_000, env: { PGCONNECT_TIMEOUT: undefined } });
      expect(res.code, res.stderr).toBe(1);
      expect(res.stderr).toMatch(/could not connect to .*timeout expired/);
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      proxy.resume();
    }
  });

  it('a server that stops answering in the middle of the handshake: the command times out (first connection: exit 1; later: retried)', async () => {
    // The answers to one command are swallowed; the connection otherwise stays open and silent.
    const silentAfter = async (command: string): Promise<{ tp: TamperProxy; conn: string }> => {
      const tp = await TamperProxy.start(primary.port);
      tp.tamper((_msg, ctx) => (ctx.query.startsWith(command) ? [] : undefined));
      return { tp, conn: `host=127.0.0.1 port=${tp.port} user=postgres sslmode=disable` };
    };
    const a = await silentAfter('SHOW server_version_num');
    try {
      const res = await runCli(['receive', '-D', newDir(), '-d', a.conn, '-n', '--receive-timeout', '2'], { timeoutMs: 60_000 });
      expect(res.code, res.stderr).toBe(1);
      expect(res.stderr.trim()).toMatch(/^walstream: error: could not connect to .*: no answer from the server to SHOW for 2 s: connection considered dead$/);
    } finally {
      await a.tp.stop();
    }
    const b = await silentAfter('IDENTIFY_SYSTEM');
    try {
      const proc = startCli(['receive', '-D', newDir(), '-d', b.conn, '--receive-timeout', '2', '-v'], { timeoutMs: 60_000 });
      // Every connection gets stuck the same way: each attempt times out and is retried.
      await proc.waitForOutput(/(no answer from the server to IDENTIFY_SYSTEM for 2 s: connection considered dead; retrying[\s\S]*){2}/, 30_000);
      b.tp.tamper(undefined);
      await proc.waitForOutput(/starting log streaming/, 60_000);
      proc.kill('SIGTERM');
      const res = await proc.done;
      expect(res.code, res.stderr).toBe(0);
    } finally {
      await b.tp.stop();
    }
  });

  it('a reconnection never moves the slot back: what the connection before made durable is reported from its start', async () => {
    const dir = newDir();
    const archive = newDir();
    const slot = 'rt_no_step_back';
    await primary.query(`select pg_create_physical_replication_slot('${slot}', true)`);
    const restartLsn = async (): Promise<bigint> => parseLsn((await primary.query<{ l: string }>(`select restart_lsn::text as l from pg_replication_slots where slot_name = '${slot}'`))[0]!.l);
    // Without --synchronous the receiver makes WAL durable in the middle of a segment only for the
    // partial copy it ships to the archive (--partial-interval), and reports that to the slot.
    const proc = startCli(['receive', '-D', dir, '--archive', archive, '-S', slot, '-d', through(), '-s', '1', '--partial-interval', '3', '-v'], { timeoutMs: 60_000 });
    try {
      await proc.waitForOutput(/starting log streaming/);
      await primary.switchWal();
      await primary.generateWal(200 * 1024);
      const written = parseLsn(await primary.currentLsn());
      await primary.waitFor(async () => (await restartLsn()) >= written, 30_000, 'the slot at the WAL written');
      const reported = await restartLsn();
      // In the middle of a segment (1 MB): the reconnection streams it again from its start.
      expect(reported % 0x100000n).not.toBe(0n);
      proxy.drop();
      const streams = (): number => proc.stderr.match(/starting log streaming/g)?.length ?? 0;
      await primary.waitFor(async () => streams() >= 2, 30_000, 'a second connection');
      // Before it has made that segment durable again (its first partial copy, 3 s in; a status
      // goes every second), the new connection's reports must not take the slot below what the
      // old one reported.
      let lowest = reported;
      for (const until = Date.now() + 4000; Date.now() < until; await new Promise((r) => setTimeout(r, 25))) {
        const now = await restartLsn();
        if (now < lowest) lowest = now;
      }
      expect(lowest, proc.stderr).toBe(reported);
    } finally {
      proc.kill('SIGTERM');
      await proc.done;
      await primary.query(`select pg_drop_replication_slot('${slot}')`);
    }
  });

  it('a reconnection that stalls times out and is retried until the path is back', async () => {
    const dir = newDir();
    const proc = startCli(['receive', '-D', dir, '-d', through(), '--receive-timeout', '2', '-s', '1', '-v'], { timeoutMs: 90_000 });
    try {
      await proc.waitForOutput(/starting log streaming/);
      // The open connection goes silent, and new ones are held without an answer for a while.
      proxy.freeze();
      proxy.blackhole();
      await proc.waitForOutput(/no message from the server for \d+ s: connection considered dead.*retrying/, 20_000);
      await proc.waitForOutput(/timeout expired; retrying/, 30_000);
      proxy.resume();
      const streams = (): number => proc.stderr.match(/starting log streaming/g)?.length ?? 0;
      const deadline = Date.now() + 40_000;
      while (streams() < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(streams(), proc.stderr).toBe(2);
    } finally {
      proxy.resume();
      proc.kill('SIGTERM');
    }
    const res = await proc.done;
    expect(res.code, res.stderr).toBe(0);
  });
});
