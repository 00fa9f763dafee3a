// Metrics of walstream serve (and receive --serve): the clients connected, where each one is
// (pg_stat_replication's sent/write/flush/replay positions from its status updates), how far
// behind the end of WAL it is, and how much was sent. Read at scrape time from the server.
import type { ClientInfo } from '../server/client.js';
import type { Lsn } from '../wal/lsn.js';
import type { Logger } from '../util/log.js';
import { startObserveServer, type ListenAddress, type ObserveServer } from './http.js';
import { Gauge, Registry } from 'prom-client';
import { renderRegistries, scrapedGauge, type HealthStatus } from './metrics.js';

export interface ServeView {
  clients(): ClientInfo[];
  /** End of WAL on the current timeline. */
  end(): Lsn;
  timeline(): number;
}

const CLIENT_LABELS = ['pid', 'application_name', 'client_addr', 'state'] as const;
type ClientLabel = (typeof CLIENT_LABELS)[number];

function clientLabels(c: ClientInfo): Record<ClientLabel, string> {
  return { pid: String(c.pid), application_name: c.applicationName ?? '', client_addr: c.address, state: c.state };
}

export class ServeMetrics {
  readonly registry = new Registry();

  constructor(private readonly view: ServeView) {
    const r = this.registry;
    const connected = (): ClientInfo[] => view.clients().filter((c) => c.state !== 'startup');
    // One series per connected client, rebuilt at each scrape: clients come and go.
    const perClient = (name: string, help: string, value: (c: ClientInfo) => number | bigint | undefined): void => {
      new Gauge({
        name,
        help,
        labelNames: CLIENT_LABELS,
        registers: [r],
        collect() {
          this.reset();
          for (const c of connected()) {
            const v = value(c);
            if (v !== undefined) this.set(clientLabels(c), Number(v));
          }
        },
      });
    };
    scrapedGauge(r, 'walstream_serve_clients', 'Replication clients connected and authenticated.', () => connected().length);
    scrapedGauge(
      r,
      'walstream_serve_streaming_clients',
      'Clients streaming WAL now (catching up or at the end of WAL).',
      () => view.clients().filter((c) => c.state === 'catchup' || c.state === 'streaming').length,
    );
    scrapedGauge(r, 'walstream_serve_end_lsn_bytes', 'End of the WAL walstream serves on its current timeline, as a byte offset (LSN).', () => view.end());
    scrapedGauge(r, 'walstream_serve_timeline', 'The newest timeline served.', () => view.timeline());
    perClient('walstream_serve_client_sent_lsn_bytes', 'Position up to which WAL was sent to the client (LSN as a byte offset).', (c) => c.sent);
    perClient('walstream_serve_client_write_lsn_bytes', 'Write position the client last reported.', (c) => c.write);
    perClient('walstream_serve_client_flush_lsn_bytes', 'Flush position the client last reported (what it holds durably).', (c) => c.flush);
    perClient('walstream_serve_client_replay_lsn_bytes', 'Replay (apply) position the client last reported.', (c) => c.apply);
    perClient('walstream_serve_client_lag_bytes', 'Bytes between the end of WAL served and the flush position the client reported (sent position when it reports none).', (c) => {
      const at = c.flush !== undefined && c.flush > 0n ? c.flush : c.sent;
      if (at === undefined) return undefined;
      const end = view.end();
      return end > at ? end - at : 0n;
    });
    perClient('walstream_serve_client_reply_age_seconds', 'Seconds since the client last sent a status update (-1 before its first).', (c) => (c.replyAt ? (Date.now() - c.replyAt.getTime()) / 1000 : -1));
    perClient('walstream_serve_client_sent_bytes', 'WAL bytes sent to the client on this connection.', (c) => c.bytesSent);
  }

  /** Healthy while the server runs; the reason says how many clients it serves. */
  health(): HealthStatus {
    const n = this.view.clients().filter((c) => c.state !== 'startup').length;
    return { ok: true, reason: `serving ${n} client${n === 1 ? '' : 's'}` };
  }

  /** What /metrics serves (besides the process metrics the endpoint adds). */
  registries(): Registry[] {
    return [this.registry];
  }

  render(): Promise<string> {
    return renderRegistries(this.registries());
  }
}

/** --metrics-listen for serve: /metrics and /health. */
export async function observeServer(o: {
  listen: ListenAddress;
  running: { clients(): ClientInfo[]; source: { endOfCurrent(): Lsn; timelineNow(): number } };
  log: Logger;
}): Promise<{ server: ObserveServer; stop(): Promise<void> }> {
  const metrics = new ServeMetrics({ clients: () => o.running.clients(), end: () => o.running.source.endOfCurrent(), timeline: () => o.running.source.timelineNow() });
  const server = await startObserveServer(o.listen, metrics);
  o.log.info(`serving metrics at ${server.url}/metrics and health at ${server.url}/health`);
  return { server, stop: () => server.close() };
}
