// Metrics of one receiver, exposed in Prometheus' text format through prom-client: ReceiverMetrics
// owns a prom-client Registry of its own (never prom-client's global one, so an application that
// embeds walstream keeps its registry to itself). `walstream receive` updates it through explicit
// hooks (no module globals); positions are read at scrape time; /metrics and /health read it.
// LSNs are exported as byte positions: a float64 sample, exact below 2^53 bytes (8 PiB of WAL),
// which is all a Prometheus server keeps of any sample anyway.
import { Counter, Gauge, Registry } from 'prom-client';

export { Registry };

/** The content type of the exposition (prom-client's, Prometheus text format 0.0.4). */
export const PROMETHEUS_CONTENT_TYPE = Registry.PROMETHEUS_CONTENT_TYPE;

/** The exposition of these registries, in order, as one text (a name in two of them is an error). */
export function renderRegistries(registries: Registry[]): Promise<string> {
  return Registry.merge(registries).metrics();
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
  return new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(Number(read()));
    },
  });
}

export class ReceiverMetrics {
  readonly registry = new Registry();
  readonly staleAfterMs: number;
  private readonly now: () => number;
  private readonly receivedBytes: Counter;
  private readonly segmentsCompleted: Counter;
  private readonly segmentsArchived: Counter;
  private readonly errors: Counter<'kind'>;
  private readonly reconnects: Counter;
  private readonly forks: Counter;
  private readonly forkLost: Gauge<'timeline' | 'next_timeline'>;

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
  /** The counters' values for snapshot() (prom-client reads its own asynchronously). */
  private totals = { receivedBytes: 0n, segmentsCompleted: 0, segmentsArchived: 0 };
  /** Registries rendered after this one (receive --serve: its clients). */
  private readonly extra: Registry[] = [];

  constructor(o: ReceiverMetricsOptions = {}) {
    this.now = o.now ?? (() => Date.now());
    this.staleAfterMs = o.staleAfterMs ?? 25_000;
    const r = this.registry;
    const counter = (name: string, help: string): Counter => new Counter({ name, help, registers: [r] });
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
    this.receivedBytes = counter('walstream_received_bytes_total', 'WAL bytes received from the server.');
    this.segmentsCompleted = counter('walstream_segments_completed_total', 'WAL segments completed: verified, fsynced and renamed to their final name.');
    this.segmentsArchived = counter('walstream_segments_archived_total', 'WAL segments confirmed by the archive (with --archive).');
    scrapedGauge(r, 'walstream_upload_queue_files', 'Finished files waiting for or in upload to the archive (with --archive).', () => this.uploadQueueDepth());
    this.errors = new Counter({
      name: 'walstream_errors_total',
      help: 'Errors by kind: connection (lost or refused), server (an error the server reported), archive (a failed upload, retried), permanent (stopped the receiver), other.',
      labelNames: ['kind'],
      registers: [r],
    });
    this.reconnects = counter('walstream_reconnects_total', 'Reconnection attempts after a lost connection.');
    this.forks = counter('walstream_timeline_forks_lost_total', 'Timelines walstream held past the point where a newer timeline forked from them (WAL of the old primary the new one never got; kept).');
    this.forkLost = new Gauge({
      name: 'walstream_timeline_fork_lost_bytes',
      help: 'Bytes of a timeline held past the fork to the next timeline: the WAL lost in that failover (by timeline and the timeline that followed).',
      labelNames: ['timeline', 'next_timeline'],
      registers: [r],
    });
    // Every series exists from the start, so rates and alerts work before the first event.
    for (const kind of ERROR_KINDS) this.errors.inc({ kind }, 0);
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
      this.receivedBytes.inc(Number(bytes));
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
    this.segmentsCompleted.inc();
  }

  segmentArchived(): void {
    this.totals.segmentsArchived++;
    this.segmentsArchived.inc();
  }

  /** How to read the upload queue depth at scrape time. */
  uploadQueueFrom(fn: () => number): void {
    this.uploadQueueDepth = fn;
  }

  error(kind: ErrorKind): void {
    this.errors.inc({ kind });
  }

  reconnect(): void {
    this.reconnects.inc();
  }

  /** A timeline was held past its fork to `next` at `at` by `lostBytes`. */
  fork(tli: number, next: number, at: bigint, lostBytes: bigint): void {
    void at;
    this.forks.inc();
    this.forkLost.set({ timeline: String(tli), next_timeline: String(next) }, Number(lostBytes));
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
