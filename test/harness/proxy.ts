/**
 * A TCP proxy on 127.0.0.1 for network faults between a client (walstream) and a server
 * (PostgreSQL):
 *
 *   const proxy = await TcpProxy.start(primary.port);
 *   // connect the client to 127.0.0.1:proxy.port
 *   proxy.drop();          // cut: every connection reset, both ends see ECONNRESET
 *   proxy.freeze();        // stall: nothing is forwarded either way, new connections are held
 *   proxy.resume();        // ... until now: held bytes, ends and connections flow again
 *   proxy.blackhole();     // the open connections go silent for good (no reset); new ones pass
 *   proxy.setUpstream(standby.port);   // later connections go to another server
 *   await proxy.stop();
 *
 * While frozen the proxy reads nothing from either side, so bytes (and a FIN) wait in the
 * kernel's buffers exactly as they would behind a stalled link; a connection accepted while
 * frozen is not connected upstream until resume().
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { once } from 'node:events';

const HOST = '127.0.0.1';

interface Pair {
  client: Socket;
  upstream: Socket | undefined;
  closed: boolean;
  /** Nothing is forwarded any more, either way, and nothing is closed (a dead NAT entry). */
  blackholed?: boolean;
}

export interface ProxyStats {
  /** Connections accepted from clients. */
  accepted: number;
  /** Connections reset by drop(). */
  dropped: number;
  /** Bytes forwarded client → server and server → client. */
  bytesUp: number;
  bytesDown: number;
}

export class TcpProxy {
  readonly stats: ProxyStats = { accepted: 0, dropped: 0, bytesUp: 0, bytesDown: 0 };
  private readonly pairs = new Set<Pair>();
  private frozen = false;
  private stopped = false;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private upstreamPort: number,
    private upstreamHost: string,
  ) {}

  /** Listen on a free port of 127.0.0.1, forwarding to `upstreamPort`. */
  static async start(upstreamPort: number, upstreamHost = HOST, listenPort = 0): Promise<TcpProxy> {
    const server = createServer({ pauseOnConnect: true });
    server.listen(listenPort, HOST);
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const proxy = new TcpProxy(server, port, upstreamPort, upstreamHost);
    server.on('connection', (s: Socket) => proxy.accept(s));
    return proxy;
  }

  /** Open connections (client side). */
  get connections(): number {
    return this.pairs.size;
  }

  get isFrozen(): boolean {
    return this.frozen;
  }

  /** Where new connections go from now on (open ones are left alone: drop() them). */
  setUpstream(port: number, host = HOST): void {
    this.upstreamPort = port;
    this.upstreamHost = host;
  }

  /** Cut every open connection: both ends get a TCP reset (black-holed ones stay silent). */
  drop(): void {
    for (const p of [...this.pairs]) {
      if (p.blackholed) continue;
      this.stats.dropped++;
      this.close(p, true);
    }
  }

  /** Stop forwarding in both directions, for open and new connections. */
  freeze(): void {
    this.frozen = true;
    for (const p of this.pairs) {
      if (p.blackholed) continue;
      p.client.pause();
      p.upstream?.pause();
    }
  }

  /**
   * The open connections go silent forever, as behind a dead NAT entry or a pulled cable: no
   * byte is forwarded either way and no end or reset reaches either side (each end's kernel
   * still acknowledges what it is sent, so TCP keepalive does not notice either). resume() does
   * not bring them back; connections made later pass normally. Returns how many were silenced.
   */
  blackhole(): number {
    let n = 0;
    for (const p of this.pairs) {
      if (p.blackholed) continue;
      p.blackholed = true;
      n++;
      // Keep reading and discard, so neither side's writes ever block and nothing is delivered.
      for (const s of [p.client, p.upstream]) {
        if (s === undefined) continue;
        s.removeAllListeners('data');
        s.removeAllListeners('end');
        s.on('data', () => undefined);
        s.resume();
      }
    }
    return n;
  }

  /** Forward again: what waited is delivered, connections accepted meanwhile go upstream. */
  resume(): void {
    if (!this.frozen) return;
    this.frozen = false;
    for (const p of [...this.pairs]) {
      if (p.blackholed) continue;
      if (p.upstream === undefined) this.connectUpstream(p);
      else {
        p.client.resume();
        p.upstream.resume();
      }
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const p of [...this.pairs]) this.close(p, true, true);
    await closed;
  }

  private accept(client: Socket): void {
    if (this.stopped) {
      client.destroy();
      return;
    }
    this.stats.accepted++;
    const pair: Pair = { client, upstream: undefined, closed: false };
    this.pairs.add(pair);
    client.on('error', () => this.close(pair, true));
    client.on('close', () => this.close(pair, false));
    if (!this.frozen) this.connectUpstream(pair);
  }

  private connectUpstream(pair: Pair): void {
    if (pair.closed) return;
    const up = connect({ host: this.upstreamHost, port: this.upstreamPort });
    pair.upstream = up;
    up.on('error', () => this.close(pair, true));
    up.on('close', () => this.close(pair, false));
    up.once('connect', () => {
      if (pair.closed) return;
      this.forward(pair, pair.client, up, 'up');
      this.forward(pair, up, pair.client, 'down');
      // Attaching 'data' listeners starts the flow: hold it again if a freeze began meanwhile.
      if (this.frozen) {
        pair.client.pause();
        up.pause();
      } else pair.client.resume();
    });
  }

  /** Copy `from` to `to` by hand (not pipe(): pause() must hold whatever the other side does). */
  private forward(pair: Pair, from: Socket, to: Socket, dir: 'up' | 'down'): void {
    from.on('data', (chunk: Buffer) => {
      if (dir === 'up') this.stats.bytesUp += chunk.length;
      else this.stats.bytesDown += chunk.length;
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => {
          if (!this.frozen && !pair.closed && !pair.blackholed) from.resume();
        });
      }
    });
    from.on('end', () => {
      if (!pair.closed) to.end();
    });
  }

  private close(pair: Pair, reset: boolean, evenBlackholed = false): void {
    if (pair.closed) return;
    // A black-holed connection tells neither side anything, not even that the other side left:
    // what remains open stays open (and silent) until stop().
    if (pair.blackholed && !evenBlackholed) return;
    pair.closed = true;
    this.pairs.delete(pair);
    for (const s of [pair.client, pair.upstream]) {
      if (s === undefined || s.destroyed) continue;
      if (reset && !s.connecting) {
        try {
          s.resetAndDestroy();
        } catch {
          // no TCP handle left: a plain destroy below
        }
      }
      if (!s.destroyed) s.destroy();
    }
  }
}
