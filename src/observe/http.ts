// The observation endpoint of `walstream receive --metrics-listen` (and serve's): a plain node:http
// server with GET /metrics (Prometheus text format, rendered by prom-client, with prom-client's
// default process, GC and event-loop metrics after walstream's own) and GET /health (200 while
// streaming is live, else 503, with the reason as the body). Nothing else is served; it never
// changes what receive does.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import type { ListenAddress } from './listen.js';
export { parseListenAddress, type ListenAddress } from './listen.js';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { renderRegistries, type HealthStatus } from './metrics.js';

/** What the server exposes: an object with these two (ReceiverMetrics, ServeMetrics). */
export interface Observable {
  /** The registries /metrics renders, read at each scrape. */
  registries(): Registry[];
  health(): HealthStatus;
}

export interface ObserveServer {
  /** The address actually bound (the real port when 0 was asked for). */
  readonly address: ListenAddress;
  /** http://host:port */
  readonly url: string;
  close(): Promise<void>;
}

function respond(res: ServerResponse, status: number, type: string, body: string, head: boolean): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(head ? undefined : body);
}

/** prom-client's default metrics (process_*, nodejs_*), on a registry of this endpoint's own. */
function processMetrics(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return registry;
}

async function handle(target: Observable, processRegistry: Registry, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  const head = req.method === 'HEAD';
  if (req.method !== 'GET' && !head) {
    res.setHeader('Allow', 'GET, HEAD');
    respond(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', false);
    return;
  }
  try {
    if (path === '/metrics') {
      respond(res, 200, Registry.PROMETHEUS_CONTENT_TYPE, await renderRegistries([...target.registries(), processRegistry]), head);
    } else if (path === '/health') {
      const h = target.health();
      respond(res, h.ok ? 200 : 503, 'text/plain; charset=utf-8', `${h.ok ? 'ok' : 'unavailable'}: ${h.reason}\n`, head);
    } else {
      respond(res, 404, 'text/plain; charset=utf-8', 'not found: try /metrics or /health\n', head);
    }
  } catch (err) {
    respond(res, 500, 'text/plain; charset=utf-8', `error: ${(err as Error).message}\n`, head);
  }
}

/** Start serving; rejects (one line) when the address cannot be bound. */
export function startObserveServer(addr: ListenAddress, target: Observable): Promise<ObserveServer> {
  const processRegistry = processMetrics();
  const server: Server = createServer((req, res) => {
    handle(target, processRegistry, req, res).catch(() => res.destroy());
  });
  // A scraper that keeps its connection open must not hold up the receiver's exit.
  server.keepAliveTimeout = 5000;
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      const why = err.code === 'EADDRINUSE' ? 'the address is already in use' : err.code === 'EACCES' ? 'permission denied' : err.message;
      reject(new Error(`cannot listen on ${addr.host}:${addr.port} for metrics: ${why}`));
    };
    server.once('error', onError);
    server.listen(addr.port, addr.host, () => {
      server.removeListener('error', onError);
      server.on('error', () => undefined);
      const a = server.address();
      const port = typeof a === 'object' && a !== null ? a.port : addr.port;
      const hostPart = isIP(addr.host) === 6 ? `[${addr.host}]` : addr.host;
      resolve({
        address: { host: addr.host, port },
        url: `http://${hostPart}:${port}`,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}
