// Metrics of one receiver, exposed in Prometheus' text format through prom-client: ReceiverMetrics
// owns a prom-client Registry of its own (never prom-client's global one, so an application that
// embeds walstream keeps its registry to itself). `walstream receive` updates it through explicit
// hooks (no module globals); positions are read at scrape time; /metrics and /health read it.
// LSNs are exported as byte positions: a float64 sample, exact below 2^53 bytes (8 PiB of WAL),
// which is all a Prometheus server keeps of any sample anyway.
// prom-client is loaded when a registry is first asked for (an endpoint to serve): it brings some
// eighty modules, which a receiver nobody scrapes would load on every start for nothing. Until
// then the hooks only count, in plain fields every metric reads at scrape time.
import { createRequire } from 'node:module';
import type * as PromClient from 'prom-client';
import type { Gauge, Registry } from 'prom-client';

let promClientModule: typeof PromClient | undefined;

/** prom-client, loaded at its first use. */
export function promClient(): typeof PromClient {
  promClientModule ??= createRequire(import.meta.url)('prom-client') as typeof PromClient;
  return promClientModule;
}

/** The exposition of these registries, in order, as one text (a name in two of them is an error). */
export function renderRegistries(registries: Registry[]): Promise<string> {
  return promClient().Registry.merge(registries).metrics();
}

export const ERROR_KINDS = ['connection', 'server', 'archive', 'permanent', 'other'] as const;
export type ErrorKind = (typeof ERROR_KINDS)[number];

/** What the stream loop reports (see session/stream.ts StreamActivity). */
export interface ActivityReport {
  kind: 'data' | 'keepalive' | 'durable';
  received: bigint;
  durable: bigint;
  serverEnd: bigint;
}

export interface HealthStatus {
  ok: boolean;
  reason: string;
}

export interface ReceiverMetricsOptions {
  /** /health fails when no server message arrived for this long while streaming (default 25 s). */
  staleAfterMs?: number;
  /** Clock in milliseconds (tests). */
  now?: () => number;
}

/** A point-in-time view for the progress line. */
export interface ReceiverSnapshot {
  received: bigint;
  serverEnd: bigint;
  receivedBytesTotal: bigint;
  streaming: boolean;
  lagBytes: bigint;
  segmentsCompleted: number;
  segmentsArchived: number;
}

/** A gauge read at scrape time (a number, or a bigint position converted to a sample). */
export function scrapedGauge(registry: Registry, name: string, help: string, read: () => number | bigint): Gauge {
  return new (promClient().Gauge)({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(Number(read()));
    },
  });
}

/** A counter read at scrape time from `read` (by label value, when `label` is given). */
function scrapedCounter(registry: Registry, name: string, help: string, read: () => number): void;
function scrapedCounter(registry: Registry, name: string, help: string, read: () => Record<string, number>, label: string): void;
function scrapedCounter(registry: Registry, name: string, help: string, read: () => number | Record<string, number>, label?: string): void {
  new (promClient().Counter)({
    name,
    help,
    labelNames: label === undefined ? [] : [label],
    registers: [registry],
    collect() {
      this.reset();
      const v = read();
      if (typeof v === 'number') this.inc(v);
      else for (const [value, n] of Object.entries(v)) this.inc({ [label!]: value }, n);
    },
  });
}

export class ReceiverMetrics {
  readonly staleAfterMs: number;
  private readonly now: () => number;
  private built: Registry | undefined;

  private received = 0n;
  private flushed = 0n;
  private serverEnd = 0n;
  private timeline = 0;
  /** Position the current stream's byte count is measured from. */
  private countedTo: bigint | undefined;
  private lastMessageAt: number | undefined;
  /** Since when the receiver has not known itself to hold everything the server has (undefined: caught up). */
  private behindSince: number | undefined;
  private isConnected = false;
  private isStreaming = false;
  private uploadQueueDepth: () => number = () => 0;
  /** The counters, read by the registry at scrape time and by snapshot(). */
  private totals = { receivedBytes: 0n, segmentsCompleted: 0, segmentsArchived: 0, reconnects: 0, forks: 0 };
  /** Every kind from the start, so rates and alerts work before the first event. */
  private readonly errors: Record<ErrorKind, number> = Object.fromEntries(ERROR_KINDS.map((k) => [k, 0])) as Record<ErrorKind, number>;
  /** Bytes lost past each fork, by "timeline next_timeline". */
  private readonly forkLost = new Map<string, { timeline: string; next_timeline: string; bytes: number }>();
  /** Registries rendered after this one (receive --serve: its clients). */
  private readonly extra: Registry[] = [];

  constructor(o: ReceiverMetricsOptions = {}) {
    this.now = o.now ?? (() => Date.now());
    this.staleAfterMs = o.staleAfterMs ?? 25_000;
  }

  /** The receiver's own registry (prom-client is loaded and the metrics made at the first call). */
  get registry(): Registry {
    if (this.built) return this.built;
    const r = new (promClient().Registry)();
    scrapedGauge(r, 'walstream_connected', 'Whether a replication connection to the server is open (1) or not (0).', () => (this.isConnected ? 1 : 0));
    scrapedGauge(r, 'walstream_streaming', 'Whether WAL streaming is live (1): connected and a server message received within the health bound.', () => (this.health().ok ? 1 : 0));
    scrapedGauge(r, 'walstream_received_lsn_bytes', 'Position after the last WAL byte received, as a byte offset (LSN).', () => this.received);
    scrapedGauge(r, 'walstream_flushed_lsn_bytes', 'Position up to which received WAL is durable on disk (fsynced), as a byte offset (LSN).', () => this.flushed);
    scrapedGauge(r, 'walstream_server_wal_end_lsn_bytes', "The server's WAL end as last reported in its messages and keepalives, as a byte offset (LSN).", () => this.serverEnd);
    scrapedGauge(r, 'walstream_lag_bytes', 'Bytes of WAL the server has reported that the receiver has not received yet.', () => this.lag());
    scrapedGauge(r, 'walstream_lag_seconds', 'Seconds since the receiver last held everything the server had reported (0 while caught up; grows while disconnected).', () =>
      this.behindSince === undefined ? 0 : Math.max(0, this.now() - this.behindSince) / 1000,
    );
    scrapedGauge(r, 'walstream_last_message_age_seconds', 'Seconds since the last message from the server (-1 before the first).', () =>
      this.lastMessageAt === undefined ? -1 : Math.max(0, this.now() - this.lastMessageAt) / 1000,
    );
    scrapedGauge(r, 'walstream_timeline', 'Timeline being streamed (0 before the first stream).', () => this.timeline);
    scrapedCounter(r, 'walstream_received_bytes_total', 'WAL bytes received from the server.', () => Number(this.totals.receivedBytes));
    scrapedCounter(r, 'walstream_segments_completed_total', 'WAL segments completed: verified, fsynced and renamed to their final name.', () => this.totals.segmentsCompleted);
    scrapedCounter(r, 'walstream_segments_archived_total', 'WAL segments confirmed by the archive (with --archive).', () => this.totals.segmentsArchived);
    scrapedGauge(r, 'walstream_upload_queue_files', 'Finished files waiting for or in upload to the archive (with --archive).', () => this.uploadQueueDepth());
    scrapedCounter(
      r,
      'walstream_errors_total',
      'Errors by kind: connection (lost or refused), server (an error the server reported), archive (a failed upload, retried), permanent (stopped the receiver), other.',
      () => this.errors,
      'kind',
    );
    scrapedCounter(r, 'walstream_reconnects_total', 'Reconnection attempts after a lost connection.', () => this.totals.reconnects);
    scrapedCounter(
      r,
      'walstream_timeline_forks_lost_total',
      'Timelines walstream held past the point where a newer timeline forked from them (WAL of the old primary the new one never got; kept).',
      () => this.totals.forks,
    );
    const forkLost = this.forkLost;
    new (promClient().Gauge)({
      name: 'walstream_timeline_fork_lost_bytes',
      help: 'Bytes of a timeline held past the fork to the next timeline: the WAL lost in that failover (by timeline and the timeline that followed).',
      labelNames: ['timeline', 'next_timeline'],
      registers: [r],
      collect() {
        this.reset();
        for (const f of forkLost.values()) this.set({ timeline: f.timeline, next_timeline: f.next_timeline }, f.bytes);
      },
    });
    this.built = r;
    return r;
  }

  private lag(): bigint {
    return this.serverEnd > this.received ? this.serverEnd - this.received : 0n;
  }

  /** A replication connection opened (true) or closed (false). */
  connection(open: boolean): void {
    this.isConnected = open;
    if (!open) {
      this.isStreaming = false;
      // Without a connection nobody tells us what the server has: assume it may be moving on.
      this.behindSince ??= this.now();
    }
  }

  /** START_REPLICATION is about to be sent for this timeline, at this position. */
  streamStarting(timeline: number, start: bigint): void {
    this.timeline = timeline;
    this.countedTo = start;
  }

  /** The stream ended (any reason). */
  streamEnded(): void {
    this.isStreaming = false;
  }

  /** A server message arrived, or the durable position moved. */
  activity(a: ActivityReport): void {
    if (a.kind !== 'durable') {
      this.isStreaming = true;
      this.lastMessageAt = this.now();
      // The stream's own maximum: a new stream (another server after a failover) starts afresh.
      this.serverEnd = a.serverEnd;
    }
    if (this.countedTo !== undefined && a.received > this.countedTo) {
      const bytes = a.received - this.countedTo;
      this.totals.receivedBytes += bytes;
      this.countedTo = a.received;
    }
    this.received = a.received;
    if (a.durable > this.flushed) this.flushed = a.durable;
    if (a.kind !== 'durable') {
      if (this.received >= this.serverEnd) this.behindSince = undefined;
      else this.behindSince ??= this.now();
    }
  }

  segmentCompleted(): void {
    this.totals.segmentsCompleted++;
  }

  segmentArchived(): void {
    this.totals.segmentsArchived++;
  }

  /** How to read the upload queue depth at scrape time. */
  uploadQueueFrom(fn: () => number): void {
    this.uploadQueueDepth = fn;
  }

  error(kind: ErrorKind): void {
    this.errors[kind]++;
  }

  reconnect(): void {
    this.totals.reconnects++;
  }

  /** A timeline was held past its fork to `next` at `at` by `lostBytes`. */
  fork(tli: number, next: number, at: bigint, lostBytes: bigint): void {
    void at;
    this.totals.forks++;
    this.forkLost.set(`${tli} ${next}`, { timeline: String(tli), next_timeline: String(next), bytes: Number(lostBytes) });
  }

  /** Live streaming: connected, streaming, and a server message within staleAfterMs. */
  health(): HealthStatus {
    if (!this.isConnected) return { ok: false, reason: 'not connected to the server' };
    if (!this.isStreaming || this.lastMessageAt === undefined) return { ok: false, reason: 'connected, not streaming' };
    const age = this.now() - this.lastMessageAt;
    if (age > this.staleAfterMs) return { ok: false, reason: `no message from the server for ${Math.round(age / 1000)} s` };
    return { ok: true, reason: 'streaming' };
  }

  snapshot(): ReceiverSnapshot {
    return {
      received: this.received,
      serverEnd: this.serverEnd,
      receivedBytesTotal: this.totals.receivedBytes,
      streaming: this.isStreaming,
      lagBytes: this.lag(),
      segmentsCompleted: this.totals.segmentsCompleted,
      segmentsArchived: this.totals.segmentsArchived,
    };
  }

  /** Expose another registry after the receiver's own (receive --serve: its clients). */
  alsoExpose(registry: Registry): void {
    this.extra.push(registry);
  }

  /** What /metrics serves (besides the process metrics the endpoint adds). */
  registries(): Registry[] {
    return [this.registry, ...this.extra];
  }

  /** The exposition of registries(). */
  render(): Promise<string> {
    return renderRegistries(this.registries());
  }
}
