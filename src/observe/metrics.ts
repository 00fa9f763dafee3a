// Metrics of one receiver, in Prometheus' text exposition format (version 0.0.4): a small
// registry of counters and gauges, and ReceiverMetrics, which `walstream receive` updates through
// explicit hooks (no module globals) and which /metrics and /health read. LSNs are exported as
// byte positions (bigint, printed exactly).

export type MetricValue = number | bigint;
export type Labels = Record<string, string>;

/** Prometheus' text format of a sample value. */
export function formatValue(v: MetricValue): string {
  if (typeof v === 'bigint') return v.toString();
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function labelKey(labels: Labels): string {
  return JSON.stringify(
    Object.keys(labels)
      .sort()
      .map((k) => [k, labels[k]]),
  );
}

function formatLabels(labels: Labels): string {
  const keys = Object.keys(labels);
  if (keys.length === 0) return '';
  return `{${keys.map((k) => `${k}="${escapeLabelValue(labels[k]!)}"`).join(',')}}`;
}

abstract class Metric {
  protected readonly samples = new Map<string, { labels: Labels; value: MetricValue }>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge',
  ) {
    if (!NAME_RE.test(name)) throw new Error(`invalid metric name "${name}"`);
  }

  protected sample(labels: Labels): { labels: Labels; value: MetricValue } {
    for (const k of Object.keys(labels)) if (!LABEL_RE.test(k) || k.startsWith('__')) throw new Error(`invalid label name "${k}"`);
    const key = labelKey(labels);
    let s = this.samples.get(key);
    if (!s) {
      s = { labels: { ...labels }, value: 0 };
      this.samples.set(key, s);
    }
    return s;
  }

  /** The current value of one series (0 if it was never set). */
  get(labels: Labels = {}): MetricValue {
    return this.samples.get(labelKey(labels))?.value ?? 0;
  }

  protected collect(): { labels: Labels; value: MetricValue }[] {
    return [...this.samples.values()];
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    for (const s of this.collect()) lines.push(`${this.name}${formatLabels(s.labels)} ${formatValue(s.value)}`);
    return `${lines.join('\n')}\n`;
  }
}

export class Counter extends Metric {
  constructor(name: string, help: string) {
    super(name, help, 'counter');
  }
  inc(labels: Labels = {}, by: MetricValue = 1): void {
    const s = this.sample(labels);
    if (typeof by === 'bigint' ? by < 0n : by < 0) throw new Error(`counter ${this.name} cannot decrease`);
    s.value = typeof s.value === 'bigint' || typeof by === 'bigint' ? BigInt(s.value) + BigInt(by) : s.value + by;
  }
}

export class Gauge extends Metric {
  private collector: (() => MetricValue) | undefined;
  private seriesCollector: (() => { labels: Labels; value: MetricValue }[]) | undefined;
  constructor(name: string, help: string) {
    super(name, help, 'gauge');
  }
  set(value: MetricValue, labels: Labels = {}): void {
    this.sample(labels).value = value;
  }
  /** Read the value at scrape time instead (an unlabelled series). */
  setCollector(fn: (() => MetricValue) | undefined): void {
    this.collector = fn;
  }
  /** Read every labelled series at scrape time (series that come and go, e.g. one per client). */
  setSeriesCollector(fn: (() => { labels: Labels; value: MetricValue }[]) | undefined): void {
    this.seriesCollector = fn;
  }
  override get(labels: Labels = {}): MetricValue {
    if (this.collector && Object.keys(labels).length === 0) return this.collector();
    if (this.seriesCollector) return this.seriesCollector().find((s) => labelKey(s.labels) === labelKey(labels))?.value ?? 0;
    return super.get(labels);
  }
  protected override collect(): { labels: Labels; value: MetricValue }[] {
    if (this.collector) return [{ labels: {}, value: this.collector() }];
    if (this.seriesCollector) return this.seriesCollector();
    return super.collect();
  }
}

/** Metrics in registration order, rendered as one exposition. */
export class Registry {
  private readonly metrics: Metric[] = [];
  private add<M extends Metric>(m: M): M {
    if (this.metrics.some((x) => x.name === m.name)) throw new Error(`metric ${m.name} registered twice`);
    this.metrics.push(m);
    return m;
  }
  counter(name: string, help: string): Counter {
    return this.add(new Counter(name, help));
  }
  gauge(name: string, help: string): Gauge {
    return this.add(new Gauge(name, help));
  }
  render(): string {
    return this.metrics.map((m) => m.render()).join('');
  }
}

/** The content type of render()'s output. */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

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

export class ReceiverMetrics {
  readonly registry = new Registry();
  readonly staleAfterMs: number;
  private readonly now: () => number;
  private readonly receivedLsn: Gauge;
  private readonly flushedLsn: Gauge;
  private readonly serverWalEnd: Gauge;
  private readonly lagBytes: Gauge;
  private readonly lagSeconds: Gauge;
  private readonly lastMessageAge: Gauge;
  private readonly timelineGauge: Gauge;
  private readonly receivedBytes: Counter;
  private readonly segmentsCompleted: Counter;
  private readonly segmentsArchived: Counter;
  private readonly uploadQueue: Gauge;
  private readonly errors: Counter;
  private readonly reconnects: Counter;
  private readonly connectedGauge: Gauge;
  private readonly streamingGauge: Gauge;
  private readonly forks: Counter;
  private readonly forkLost: Gauge;

  private received = 0n;
  private flushed = 0n;
  private serverEnd = 0n;
  /** Position the current stream's byte count is measured from. */
  private countedTo: bigint | undefined;
  private lastMessageAt: number | undefined;
  /** Since when the receiver has not known itself to hold everything the server has (undefined: caught up). */
  private behindSince: number | undefined;
  private isConnected = false;
  private isStreaming = false;
  private readonly extra: (() => string)[] = [];

  constructor(o: ReceiverMetricsOptions = {}) {
    this.now = o.now ?? (() => Date.now());
    this.staleAfterMs = o.staleAfterMs ?? 25_000;
    this.behindSince = undefined;
    const r = this.registry;
    this.connectedGauge = r.gauge('walstream_connected', 'Whether a replication connection to the server is open (1) or not (0).');
    this.streamingGauge = r.gauge('walstream_streaming', 'Whether WAL streaming is live (1): connected and a server message received within the health bound.');
    this.receivedLsn = r.gauge('walstream_received_lsn_bytes', 'Position after the last WAL byte received, as a byte offset (LSN).');
    this.flushedLsn = r.gauge('walstream_flushed_lsn_bytes', 'Position up to which received WAL is durable on disk (fsynced), as a byte offset (LSN).');
    this.serverWalEnd = r.gauge('walstream_server_wal_end_lsn_bytes', "The server's WAL end as last reported in its messages and keepalives, as a byte offset (LSN).");
    this.lagBytes = r.gauge('walstream_lag_bytes', 'Bytes of WAL the server has reported that the receiver has not received yet.');
    this.lagSeconds = r.gauge('walstream_lag_seconds', 'Seconds since the receiver last held everything the server had reported (0 while caught up; grows while disconnected).');
    this.lastMessageAge = r.gauge('walstream_last_message_age_seconds', 'Seconds since the last message from the server (-1 before the first).');
    this.timelineGauge = r.gauge('walstream_timeline', 'Timeline being streamed (0 before the first stream).');
    this.receivedBytes = r.counter('walstream_received_bytes_total', 'WAL bytes received from the server.');
    this.segmentsCompleted = r.counter('walstream_segments_completed_total', 'WAL segments completed: verified, fsynced and renamed to their final name.');
    this.segmentsArchived = r.counter('walstream_segments_archived_total', 'WAL segments confirmed by the archive (with --archive).');
    this.uploadQueue = r.gauge('walstream_upload_queue_files', 'Finished files waiting for or in upload to the archive (with --archive).');
    this.errors = r.counter(
      'walstream_errors_total',
      'Errors by kind: connection (lost or refused), server (an error the server reported), archive (a failed upload, retried), permanent (stopped the receiver), other.',
    );
    this.reconnects = r.counter('walstream_reconnects_total', 'Reconnection attempts after a lost connection.');
    this.forks = r.counter('walstream_timeline_forks_lost_total', 'Timelines walstream held past the point where a newer timeline forked from them (WAL of the old primary the new one never got; kept).');
    this.forkLost = r.gauge('walstream_timeline_fork_lost_bytes', 'Bytes of a timeline held past the fork to the next timeline: the WAL lost in that failover (by timeline and the timeline that followed).');
    // Every series exists from the start, so rates and alerts work before the first event.
    for (const kind of ERROR_KINDS) this.errors.inc({ kind }, 0);
    for (const c of [this.receivedBytes, this.segmentsCompleted, this.segmentsArchived, this.reconnects, this.forks]) c.inc({}, 0);
    this.timelineGauge.set(0);
    this.connectedGauge.setCollector(() => (this.isConnected ? 1 : 0));
    this.streamingGauge.setCollector(() => (this.health().ok ? 1 : 0));
    this.receivedLsn.setCollector(() => this.received);
    this.flushedLsn.setCollector(() => this.flushed);
    this.serverWalEnd.setCollector(() => this.serverEnd);
    this.lagBytes.setCollector(() => this.lag());
    this.lagSeconds.setCollector(() => (this.behindSince === undefined ? 0 : Math.max(0, this.now() - this.behindSince) / 1000));
    this.lastMessageAge.setCollector(() => (this.lastMessageAt === undefined ? -1 : Math.max(0, this.now() - this.lastMessageAt) / 1000));
    this.uploadQueue.setCollector(() => 0);
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
    this.timelineGauge.set(timeline);
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
      this.receivedBytes.inc({}, a.received - this.countedTo);
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
    this.segmentsCompleted.inc();
  }

  segmentArchived(): void {
    this.segmentsArchived.inc();
  }

  /** How to read the upload queue depth at scrape time. */
  uploadQueueFrom(fn: () => number): void {
    this.uploadQueue.setCollector(fn);
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
    this.forkLost.set(lostBytes, { timeline: String(tli), next_timeline: String(next) });
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
      receivedBytesTotal: BigInt(this.receivedBytes.get()),
      streaming: this.isStreaming,
      lagBytes: this.lag(),
      segmentsCompleted: Number(this.segmentsCompleted.get()),
      segmentsArchived: Number(this.segmentsArchived.get()),
    };
  }

  /** Render another section after the receiver's own (receive --serve: its clients). */
  alsoRender(fn: () => string): void {
    this.extra.push(fn);
  }

  render(): string {
    return this.registry.render() + this.extra.map((fn) => fn()).join('');
  }
}
