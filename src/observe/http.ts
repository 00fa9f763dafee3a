// The observation endpoint of `walstream receive --metrics-listen`: a plain node:http server with
// GET /metrics (Prometheus text format) and GET /health (200 while streaming is live, else 503,
// with the reason as the body). Nothing else is served; it never changes what receive does.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { PROMETHEUS_CONTENT_TYPE, type HealthStatus } from './metrics.js';

export interface ListenAddress {
  host: string;
  port: number;
}

/** What the server exposes: any object with these two (ReceiverMetrics). */
export interface Observable {
  render(): string;
  health(): HealthStatus;
}

/**
 * Parse "PORT", ":PORT", "HOST:PORT" or "[IPv6]:PORT"; the host defaults to 127.0.0.1 (only
 * this machine), port 0 picks a free port. Throws with a one-line message.
 */
export function parseListenAddress(text: string): ListenAddress {
  const v = text.trim();
  let host = '127.0.0.1';
  let port: string;
  const v6 = /^\[([^\]]+)\]:(\d+)$/.exec(v);
  if (v6) {
    host = v6[1]!;
    port = v6[2]!;
    if (isIP(host) !== 6) throw new Error(`invalid listen address "${text}": "${host}" is not an IPv6 address`);
  } else if (/^\d+$/.test(v)) {
    port = v;
  } else {
    const i = v.lastIndexOf(':');
    if (i < 0) throw new Error(`invalid listen address "${text}" (use PORT or HOST:PORT)`);
    port = v.slice(i + 1);
    if (i > 0) host = v.slice(0, i);
    if (host.includes(':')) throw new Error(`invalid listen address "${text}" (write an IPv6 address as [ADDR]:PORT)`);
    if (!/^[A-Za-z0-9.-]+$/.test(host)) throw new Error(`invalid listen address "${text}": bad host "${host}"`);
  }
  if (!/^\d+$/.test(port) || Number(port) > 65535) throw new Error(`invalid listen address "${text}": bad port "${port}"`);
  return { host, port: Number(port) };
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

function handle(target: Observable, req: IncomingMessage, res: ServerResponse): void {
  const path = (req.url ?? '/').split('?')[0];
  const head = req.method === 'HEAD';
  if (req.method !== 'GET' && !head) {
    res.setHeader('Allow', 'GET, HEAD');
    respond(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', false);
    return;
  }
  try {
    if (path === '/metrics') {
      respond(res, 200, PROMETHEUS_CONTENT_TYPE, target.render(), head);
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
  const server: Server = createServer((req, res) => handle(target, req, res));
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
