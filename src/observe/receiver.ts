// What `walstream receive` sets up to be watched: its metrics, the HTTP endpoint when
// --metrics-listen is given, and the catch-up progress line on a terminal.
import type { Logger } from '../util/log.js';
import type { ListenAddress, ObserveServer } from './http.js';
import { ReceiverMetrics } from './metrics.js';
import { startProgress } from './progress.js';

export interface ReceiverObservation {
  metrics: ReceiverMetrics;
  server: ObserveServer | undefined;
  stop(): Promise<void>;
}

export interface ObserveReceiverOptions {
  listen?: ListenAddress;
  /** receive's --status-interval in milliseconds: sets how long /health tolerates silence. */
  statusIntervalMs: number;
  log: Logger;
  /** Show the progress line (only ever drawn on a terminal). */
  progress: boolean;
}

/**
 * How long /health tolerates no message from the server. receive asks the server for a reply
 * after a status interval of silence, so a live server answers within about one interval; with
 * --status-interval 0 only the server's own keepalives (wal_sender_timeout / 2, 30 s by default)
 * arrive.
 */
export function healthBoundMs(statusIntervalMs: number): number {
  return statusIntervalMs > 0 ? Math.max(2 * statusIntervalMs + 5000, 10_000) : 75_000;
}

export async function observeReceiver(o: ObserveReceiverOptions): Promise<ReceiverObservation> {
  const metrics = new ReceiverMetrics({ staleAfterMs: healthBoundMs(o.statusIntervalMs) });
  // The endpoint's module (node:http, prom-client) is loaded only when there is one to serve.
  const server = o.listen ? await (await import('./http.js')).startObserveServer(o.listen, metrics) : undefined;
  if (server) o.log.info(`serving metrics at ${server.url}/metrics and health at ${server.url}/health`);
  const progress = o.progress ? startProgress({ snapshot: () => metrics.snapshot(), log: o.log }) : undefined;
  return {
    metrics,
    server,
    async stop() {
      progress?.stop();
      await server?.close();
    },
  };
}
