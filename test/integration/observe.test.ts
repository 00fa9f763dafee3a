// Watching a running receiver: /metrics values move as WAL flows, /health follows the primary
// going away and coming back, and --log-format json makes every line on stderr a JSON object.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../harness/pg.js';
import { runCli, startCli, type CliProcess } from '../support/cli.js';

const SEG = 1024 * 1024;

type Scrape = Map<string, number>;

function parseMetrics(text: string): Scrape {
  const out: Scrape = new Map();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    out.set(m[1]!, Number(m[2]));
  }
  return out;
}

function value(s: Scrape, name: string): number {
  const v = s.get(name);
  if (v === undefined) throw new Error(`no ${name} in the scrape`);
  return v;
}

function lsnBytes(lsn: string): number {
  const [hi, lo] = lsn.split('/');
  return parseInt(hi!, 16) * 2 ** 32 + parseInt(lo!, 16);
}

async function waitUntil(what: string, cond: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function jsonLines(stderr: string): Record<string, unknown>[] {
  return stderr
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        throw new Error(`stderr line is not JSON: ${l}`);
      }
    });
}

describe('receive --metrics-listen and --log-format json', () => {
  let primary: PgCluster;
  let receiver: CliProcess | undefined;
  let base = '';
  const dirs: string[] = [];

  const scrape = async (): Promise<Scrape> => {
    const res = await fetch(`${base}/metrics`);
    expect(res.status).toBe(200);
    return parseMetrics(await res.text());
  };
  const health = async (): Promise<number> => {
    try {
      return (await fetch(`${base}/health`)).status;
    } catch {
      return -1;
    }
  };

  beforeAll(async () => {
    primary = await PgCluster.create({ name: 'observe', conf: { wal_sender_timeout: '10s' } });
    await primary.query("select pg_create_physical_replication_slot('observe', true)");
    const dir = mkdtempSync(join(tmpdir(), 'walstream-observe-'));
    dirs.push(dir);
    receiver = startCli(['--log-format', 'json', 'receive', '-D', dir, '-d', primary.connectionString(), '-S', 'observe', '-s', '1', '-v', '--metrics-listen', '127.0.0.1:0']);
    await receiver.waitForOutput(/serving metrics at/);
    const url = /serving metrics at (http:\/\/127\.0\.0\.1:\d+)\/metrics/.exec(receiver.stderr)?.[1];
    if (!url) throw new Error(`no metrics URL in: ${receiver.stderr}`);
    base = url;
  });
  afterAll(async () => {
    receiver?.kill('SIGKILL');
    await receiver?.done;
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('serves Prometheus metrics whose values follow the WAL as it flows', async () => {
    await waitUntil('a live stream', async () => (await health()) === 200);
    const res = await fetch(`${base}/metrics`);
    expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    const before = parseMetrics(await res.text());
    expect(value(before, 'walstream_connected')).toBe(1);
    expect(value(before, 'walstream_streaming')).toBe(1);
    expect(value(before, 'walstream_timeline')).toBe(1);
    expect(value(before, 'walstream_received_lsn_bytes')).toBeGreaterThan(0);
    // prom-client's process metrics ride along.
    expect(value(before, 'process_cpu_user_seconds_total')).toBeGreaterThan(0);

    const end = await primary.generateWal(3 * SEG);
    await primary.switchWal();
    let after = before;
    await waitUntil('the receiver to pass the new WAL', async () => {
      after = await scrape();
      return (
        value(after, 'walstream_received_lsn_bytes') >= lsnBytes(end) &&
        value(after, 'walstream_lag_bytes') === 0 &&
        // Segments are finished (fsync, rename) in the background, just after they are received.
        value(after, 'walstream_segments_completed_total') - value(before, 'walstream_segments_completed_total') >= 3
      );
    });
    expect(value(after, 'walstream_received_bytes_total') - value(before, 'walstream_received_bytes_total')).toBeGreaterThanOrEqual(3 * SEG);
    expect(value(after, 'walstream_segments_completed_total') - value(before, 'walstream_segments_completed_total')).toBeGreaterThanOrEqual(3);
    expect(value(after, 'walstream_server_wal_end_lsn_bytes')).toBeGreaterThanOrEqual(lsnBytes(end));
    // With a slot the flush position is reported: everything in complete segments is durable.
    expect(value(after, 'walstream_flushed_lsn_bytes')).toBeGreaterThanOrEqual(Math.floor(lsnBytes(end) / SEG) * SEG);
    expect(value(after, 'walstream_lag_seconds')).toBe(0);
    expect(value(after, 'walstream_errors_total{kind="connection"}')).toBe(0);
    expect(value(after, 'walstream_upload_queue_files')).toBe(0);

    // Idle: receive asks the server for a reply after a status interval of silence, so the last
    // message stays recent and the stream stays healthy.
    await new Promise((r) => setTimeout(r, 3000));
    const idle = await scrape();
    expect(value(idle, 'walstream_last_message_age_seconds')).toBeLessThan(2.5);
    const h = await fetch(`${base}/health`);
    expect(h.status).toBe(200);
    expect(await h.text()).toBe('ok: streaming\n');
    expect((await fetch(`${base}/other`)).status).toBe(404);
    expect((await fetch(`${base}/metrics`, { method: 'POST' })).status).toBe(405);
  });

  it('/health answers 503 while the primary is down and 200 once streaming is back', async () => {
    const before = await scrape();
    await primary.stop('fast');
    await waitUntil('/health to fail', async () => (await health()) === 503, 15_000);
    const res = await fetch(`${base}/health`);
    expect(await res.text()).toMatch(/^unavailable: /);
    const down = await scrape();
    expect(value(down, 'walstream_streaming')).toBe(0);
    await waitUntil(
      'a failed reconnection to be counted',
      async () => {
        const s = await scrape();
        return value(s, 'walstream_reconnects_total') > value(before, 'walstream_reconnects_total') && value(s, 'walstream_errors_total{kind="connection"}') > 0;
      },
      15_000,
    );

    await primary.start();
    await waitUntil('/health to recover', async () => (await health()) === 200, 45_000);
    const back = await scrape();
    expect(value(back, 'walstream_connected')).toBe(1);
    expect(value(back, 'walstream_streaming')).toBe(1);
    // The stream goes on after the restart: new WAL arrives.
    const end = await primary.generateWal(SEG / 2);
    await waitUntil('WAL after the restart', async () => value(await scrape(), 'walstream_received_lsn_bytes') >= lsnBytes(end));
  });

  it('with --log-format json every stderr line is a JSON object, until a clean stop', async () => {
    receiver!.kill('SIGTERM');
    const res = await receiver!.done;
    expect(res.code).toBe(0);
    const lines = jsonLines(res.stderr);
    for (const l of lines) {
      expect(Object.keys(l).slice(0, 3)).toEqual(['time', 'level', 'msg']);
      expect(Number.isNaN(Date.parse(String(l['time'])))).toBe(false);
      expect(['debug', 'info', 'warn', 'error']).toContain(l['level']);
    }
    const msgs = lines.map((l) => `${String(l['level'])} ${String(l['msg'])}`);
    expect(msgs.some((m) => /^debug finished segment [0-9A-F]{24}$/.test(m))).toBe(true);
    expect(msgs.some((m) => /^error .*retrying$/.test(m))).toBe(true);
    expect(msgs.some((m) => /^info serving metrics at http:/.test(m))).toBe(true);
    // The endpoint is gone with the receiver.
    expect(await health()).toBe(-1);
  });

  it('json errors from other commands and from option parsing are JSON lines too', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'walstream-observe-archive-'));
    dirs.push(empty);
    const miss = await runCli(['fetch', '000000010000000000000001', join(empty, 'x'), '--archive', empty, '-v', '--log-format', 'json']);
    expect(miss.code).toBe(1);
    const missLines = jsonLines(miss.stderr);
    expect(missLines.length).toBeGreaterThan(0);
    expect(missLines.every((l) => typeof l['msg'] === 'string' && typeof l['level'] === 'string')).toBe(true);

    const bad = await runCli(['--log-format', 'json', 'receive', '--no-such-option']);
    expect(bad.code).toBe(1);
    expect(jsonLines(bad.stderr)).toEqual([expect.objectContaining({ level: 'error', msg: "unknown option '--no-such-option'" })]);

    const env = await runCli(['receive', '-D', join(empty, 'missing'), '-d', 'host=127.0.0.1 port=1'], { env: { WALSTREAM_LOG_FORMAT: 'json' } });
    expect(env.code).toBe(1);
    expect(jsonLines(env.stderr)).toEqual([expect.objectContaining({ level: 'error', msg: expect.stringMatching(/could not access directory/) })]);

    const listen = await runCli(['receive', '-D', empty, '--metrics-listen', 'nowhere']);
    expect(listen.code).toBe(1);
    expect(listen.stderr).toMatch(/invalid listen address "nowhere"/);
  });
});
