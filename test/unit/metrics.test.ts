// walstream's metrics as prom-client renders them (golden output), the /metrics endpoint, the receiver's metric
// semantics (lag, health, byte counting), the listen-address parser, the JSON log lines and the
// progress line.
import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { register } from 'prom-client';
import { ReceiverMetrics } from '../../src/observe/metrics.js';
import { parseListenAddress, startObserveServer } from '../../src/observe/http.js';
import { progressLine, formatDuration, startProgress } from '../../src/observe/progress.js';
import { stderrLogger, jsonLogLine, formatFatal } from '../../src/util/log.js';

class Capture extends Writable {
  text = '';
  isTTY: boolean;
  constructor(tty: boolean) {
    super();
    this.isTTY = tty;
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

describe('the /metrics endpoint', () => {
  it("serves walstream's metrics, then prom-client's process, GC and event-loop metrics, and leaves the global registry alone", async () => {
    const m = new ReceiverMetrics();
    m.error('archive');
    const server = await startObserveServer({ host: '127.0.0.1', port: 0 }, m);
    try {
      const res = await fetch(`${server.url}/metrics`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
      const text = await res.text();
      expect(text).toMatch(/^# HELP walstream_connected /);
      expect(text).toContain('walstream_errors_total{kind="archive"} 1\n');
      for (const name of ['process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_gc_duration_seconds', 'nodejs_heap_size_used_bytes']) {
        expect(text).toContain(`# TYPE ${name} `);
      }
      expect(text.indexOf('walstream_timeline_fork_lost_bytes')).toBeLessThan(text.indexOf('process_cpu_user_seconds_total'));
      expect((await fetch(`${server.url}/health`)).status).toBe(503);
      expect((await fetch(`${server.url}/metrics`, { method: 'POST' })).status).toBe(405);
      expect((await fetch(`${server.url}/nothing`)).status).toBe(404);
    } finally {
      await server.close();
    }
    expect(register.getMetricsAsArray()).toEqual([]);
  });
});

describe('ReceiverMetrics', () => {
  it('starts with every series at its initial value (golden)', async () => {
    const m = new ReceiverMetrics({ now: () => 1000 });
    expect(await m.render()).toBe(
      [
        '# HELP walstream_connected Whether a replication connection to the server is open (1) or not (0).',
        '# TYPE walstream_connected gauge',
        'walstream_connected 0',
        '',
        '# HELP walstream_streaming Whether WAL streaming is live (1): connected and a server message received within the health bound.',
        '# TYPE walstream_streaming gauge',
        'walstream_streaming 0',
        '',
        '# HELP walstream_received_lsn_bytes Position after the last WAL byte received, as a byte offset (LSN).',
        '# TYPE walstream_received_lsn_bytes gauge',
        'walstream_received_lsn_bytes 0',
        '',
        '# HELP walstream_flushed_lsn_bytes Position up to which received WAL is durable on disk (fsynced), as a byte offset (LSN).',
        '# TYPE walstream_flushed_lsn_bytes gauge',
        'walstream_flushed_lsn_bytes 0',
        '',
        "# HELP walstream_server_wal_end_lsn_bytes The server's WAL end as last reported in its messages and keepalives, as a byte offset (LSN).",
        '# TYPE walstream_server_wal_end_lsn_bytes gauge',
        'walstream_server_wal_end_lsn_bytes 0',
        '',
        '# HELP walstream_lag_bytes Bytes of WAL the server has reported that the receiver has not received yet.',
        '# TYPE walstream_lag_bytes gauge',
        'walstream_lag_bytes 0',
        '',
        '# HELP walstream_lag_seconds Seconds since the receiver last held everything the server had reported (0 while caught up; grows while disconnected).',
        '# TYPE walstream_lag_seconds gauge',
        'walstream_lag_seconds 0',
        '',
        '# HELP walstream_last_message_age_seconds Seconds since the last message from the server (-1 before the first).',
        '# TYPE walstream_last_message_age_seconds gauge',
        'walstream_last_message_age_seconds -1',
        '',
        '# HELP walstream_timeline Timeline being streamed (0 before the first stream).',
        '# TYPE walstream_timeline gauge',
        'walstream_timeline 0',
        '',
        '# HELP walstream_received_bytes_total WAL bytes received from the server.',
        '# TYPE walstream_received_bytes_total counter',
        'walstream_received_bytes_total 0',
        '',
        '# HELP walstream_segments_completed_total WAL segments completed: verified, fsynced and renamed to their final name.',
        '# TYPE walstream_segments_completed_total counter',
        'walstream_segments_completed_total 0',
        '',
        '# HELP walstream_segments_archived_total WAL segments confirmed by the archive (with --archive).',
        '# TYPE walstream_segments_archived_total counter',
        'walstream_segments_archived_total 0',
        '',
        '# HELP walstream_upload_queue_files Finished files waiting for or in upload to the archive (with --archive).',
        '# TYPE walstream_upload_queue_files gauge',
        'walstream_upload_queue_files 0',
        '',
        '# HELP walstream_errors_total Errors by kind: connection (lost or refused), server (an error the server reported), archive (a failed upload, retried), permanent (stopped the receiver), other.',
        '# TYPE walstream_errors_total counter',
        'walstream_errors_total{kind="connection"} 0',
        'walstream_errors_total{kind="server"} 0',
        'walstream_errors_total{kind="archive"} 0',
        'walstream_errors_total{kind="permanent"} 0',
        'walstream_errors_total{kind="other"} 0',
        '',
        '# HELP walstream_reconnects_total Reconnection attempts after a lost connection.',
        '# TYPE walstream_reconnects_total counter',
        'walstream_reconnects_total 0',
        '',
        '# HELP walstream_timeline_forks_lost_total Timelines walstream held past the point where a newer timeline forked from them (WAL of the old primary the new one never got; kept).',
        '# TYPE walstream_timeline_forks_lost_total counter',
        'walstream_timeline_forks_lost_total 0',
        '',
        '# HELP walstream_timeline_fork_lost_bytes Bytes of a timeline held past the fork to the next timeline: the WAL lost in that failover (by timeline and the timeline that followed).',
        '# TYPE walstream_timeline_fork_lost_bytes gauge',
        '',
      ].join('\n'),
    );
  });

  it('follows a stream: positions, lag, byte count, segments, errors, health', async () => {
    let now = 10_000;
    const m = new ReceiverMetrics({ now: () => now, staleAfterMs: 5000 });
    const line = async (name: string): Promise<string> => (await m.render()).split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`)) ?? `${name} (absent)`;
    expect(m.health()).toEqual({ ok: false, reason: 'not connected to the server' });
    m.connection(true);
    expect(m.health().ok).toBe(false);
    m.streamStarting(1, 0x1000000n);
    m.activity({ kind: 'data', received: 0x1000100n, durable: 0n, serverEnd: 0x3000000n });
    expect(m.health()).toEqual({ ok: true, reason: 'streaming' });
    expect(await line('walstream_received_lsn_bytes')).toBe(`walstream_received_lsn_bytes ${0x1000100}`);
    expect(await line('walstream_server_wal_end_lsn_bytes')).toBe(`walstream_server_wal_end_lsn_bytes ${0x3000000}`);
    expect(await line('walstream_lag_bytes')).toBe(`walstream_lag_bytes ${0x3000000 - 0x1000100}`);
    expect(await line('walstream_timeline')).toBe('walstream_timeline 1');
    expect(await line('walstream_streaming')).toBe('walstream_streaming 1');
    now += 2500;
    expect(await line('walstream_lag_seconds')).toBe('walstream_lag_seconds 2.5');
    expect(await line('walstream_last_message_age_seconds')).toBe('walstream_last_message_age_seconds 2.5');
    m.activity({ kind: 'durable', received: 0x2000000n, durable: 0x2000000n, serverEnd: 0x3000000n });
    m.segmentCompleted();
    m.activity({ kind: 'data', received: 0x3000000n, durable: 0x2000000n, serverEnd: 0x3000000n });
    expect(await line('walstream_lag_bytes')).toBe('walstream_lag_bytes 0');
    expect(await line('walstream_lag_seconds')).toBe('walstream_lag_seconds 0');
    expect(await line('walstream_flushed_lsn_bytes')).toBe(`walstream_flushed_lsn_bytes ${0x2000000}`);
    expect(await line('walstream_received_bytes_total')).toBe(`walstream_received_bytes_total ${0x2000000}`);
    expect(await line('walstream_segments_completed_total')).toBe('walstream_segments_completed_total 1');
    // A keepalive keeps the stream healthy; silence past the bound does not.
    now += 4000;
    m.activity({ kind: 'keepalive', received: 0x3000000n, durable: 0x3000000n, serverEnd: 0x3000000n });
    now += 4000;
    expect(m.health().ok).toBe(true);
    now += 2000;
    expect(m.health()).toEqual({ ok: false, reason: 'no message from the server for 6 s' });
    expect(await line('walstream_streaming')).toBe('walstream_streaming 0');
    // Disconnected: unhealthy at once, and lag_seconds counts from the disconnection.
    m.error('connection');
    m.streamEnded();
    m.connection(false);
    m.reconnect();
    expect(m.health().ok).toBe(false);
    now += 3000;
    expect(await line('walstream_lag_seconds')).toBe('walstream_lag_seconds 3');
    expect(await m.render()).toContain('walstream_errors_total{kind="connection"} 1\n');
    expect(await line('walstream_reconnects_total')).toBe('walstream_reconnects_total 1');
    m.fork(1, 2, 0x6000000n, 48n * 1024n * 1024n);
    expect(await line('walstream_timeline_forks_lost_total')).toBe('walstream_timeline_forks_lost_total 1');
    expect(await m.render()).toContain('walstream_timeline_fork_lost_bytes{timeline="1",next_timeline="2"} 50331648\n');
    let queue = 3;
    m.uploadQueueFrom(() => queue);
    m.segmentArchived();
    queue = 2;
    expect(await line('walstream_upload_queue_files')).toBe('walstream_upload_queue_files 2');
    expect(await line('walstream_segments_archived_total')).toBe('walstream_segments_archived_total 1');
    // A new stream (re-streaming the .partial from its start) counts its bytes again.
    m.connection(true);
    m.streamStarting(2, 0x3000000n);
    m.activity({ kind: 'data', received: 0x3000010n, durable: 0x3000000n, serverEnd: 0x3000010n });
    expect(await line('walstream_received_bytes_total')).toBe(`walstream_received_bytes_total ${0x2000010}`);
    expect(await line('walstream_timeline')).toBe('walstream_timeline 2');
    expect(m.snapshot()).toMatchObject({ received: 0x3000010n, serverEnd: 0x3000010n, lagBytes: 0n, streaming: true, segmentsCompleted: 1, segmentsArchived: 1 });
  });
});

describe('--metrics-listen addresses', () => {
  it('accepts PORT, :PORT, HOST:PORT and [IPv6]:PORT, loopback by default', () => {
    expect(parseListenAddress('9187')).toEqual({ host: '127.0.0.1', port: 9187 });
    expect(parseListenAddress(':9187')).toEqual({ host: '127.0.0.1', port: 9187 });
    expect(parseListenAddress('0.0.0.0:80')).toEqual({ host: '0.0.0.0', port: 80 });
    expect(parseListenAddress('metrics.local:0')).toEqual({ host: 'metrics.local', port: 0 });
    expect(parseListenAddress('[::1]:9187')).toEqual({ host: '::1', port: 9187 });
  });
  it('rejects the rest with a reason', () => {
    expect(() => parseListenAddress('host')).toThrow(/use PORT or HOST:PORT/);
    expect(() => parseListenAddress('1.2.3.4:70000')).toThrow(/bad port/);
    expect(() => parseListenAddress('::1:9187')).toThrow(/\[ADDR\]:PORT/);
    expect(() => parseListenAddress('[nope]:1')).toThrow(/not an IPv6 address/);
    expect(() => parseListenAddress('a b:1')).toThrow(/bad host/);
  });
});

describe('log formats', () => {
  it('json: one object per line with time, level, msg and extra fields; verbose only with -v', () => {
    const out = new Capture(false);
    const now = (): Date => new Date('2026-01-02T03:04:05.678Z');
    const log = stderrLogger(true, { format: 'json', stream: out, now });
    log.info('started', { segment: '000000010000000000000001', msg: 'ignored' });
    log.verbose('detail');
    log.warn('careful');
    log.error('failed "badly"\nsecond line');
    log.status?.('progress is never shown in JSON');
    stderrLogger(false, { format: 'json', stream: out, now }).verbose('hidden');
    expect(out.text).toBe(
      '{"time":"2026-01-02T03:04:05.678Z","level":"info","msg":"started","segment":"000000010000000000000001"}\n' +
        '{"time":"2026-01-02T03:04:05.678Z","level":"debug","msg":"detail"}\n' +
        '{"time":"2026-01-02T03:04:05.678Z","level":"warn","msg":"careful"}\n' +
        '{"time":"2026-01-02T03:04:05.678Z","level":"error","msg":"failed \\"badly\\"\\nsecond line"}\n',
    );
    expect(JSON.parse(jsonLogLine(now(), 'info', 'x', { n: 1, skip: undefined }))).toEqual({ time: '2026-01-02T03:04:05.678Z', level: 'info', msg: 'x', n: 1 });
    expect(formatFatal('text', 'boom')).toBe('walstream: error: boom\n');
    expect(JSON.parse(formatFatal('json', 'boom'))).toMatchObject({ level: 'error', msg: 'boom' });
  });

  it('text: prefixed lines; a status line only on a terminal, redrawn below each message', () => {
    const pipe = new Capture(false);
    const a = stderrLogger(true, { stream: pipe });
    a.status?.('working');
    a.info('hello');
    a.warn('w');
    expect(pipe.text).toBe('walstream: hello\nwalstream: warning: w\n');
    const tty = new Capture(true);
    const b = stderrLogger(false, { stream: tty });
    b.status?.('50%');
    b.error('oops');
    b.status?.(undefined);
    expect(tty.text).toBe('walstream: 50%' + '\r\x1b[2K' + 'walstream: error: oops\n' + 'walstream: 50%' + '\r\x1b[2K');
  });
});

describe('progress line', () => {
  const snap = { received: 0x2000000n, serverEnd: 0x6000000n, receivedBytesTotal: 0x1000000n, streaming: true, lagBytes: 0x4000000n, segmentsCompleted: 0, segmentsArchived: 0 };
  it('shows positions, backlog, rate and ETA', () => {
    expect(progressLine(snap, 16 * 1024 * 1024)).toBe('catching up: received 0/2000000 of 0/6000000, 64.0 MB behind, 16.0 MB/s, ETA 4s');
    expect(progressLine(snap, undefined)).toBe('catching up: received 0/2000000 of 0/6000000, 64.0 MB behind');
    expect(formatDuration(75)).toBe('1m15s');
    expect(formatDuration(3 * 3600 + 120)).toBe('3h02m');
  });
  it('appears while behind by a backlog and disappears once caught up', async () => {
    const lines: (string | undefined)[] = [];
    let current = snap;
    let t = 0;
    const p = startProgress({
      snapshot: () => current,
      log: { info() {}, verbose() {}, warn() {}, error() {}, status: (l) => lines.push(l) },
      intervalMs: 5,
      now: () => (t += 1000),
      columns: () => 200,
    });
    await new Promise((r) => setTimeout(r, 30));
    current = { ...snap, received: 0x6000000n, lagBytes: 0n, receivedBytesTotal: 0x5000000n };
    await new Promise((r) => setTimeout(r, 30));
    p.stop();
    expect(lines[0]).toMatch(/^catching up: received 0\/2000000 of 0\/6000000, 64\.0 MB behind/);
    expect(lines.at(-1)).toBeUndefined();
    expect(lines.filter((l) => l === undefined)).toHaveLength(1);
  });
});
