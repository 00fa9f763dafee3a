// The listening side of walstream serve (postmaster.c ServerLoop/BackendStartup, for walsenders
// only): accept TCP connections on one address, one ClientConnection each, and at shutdown stop
// accepting and end every client's stream with FATAL 57P01, as a server shutting down does.
import { randomBytes } from 'node:crypto';
import { createServer, isIP, type Server, type Socket } from 'node:net';
import type { Logger } from '../util/log.js';
import type { WalSource } from '../source/wal-source.js';
import { ClientConnection, type AuthSettings, type ClientInfo, type ServeContext, type TlsSettings } from './client.js';
import type { SlotRegistry } from './slots.js';

export interface WalServerOptions {
  source: WalSource;
  slots: SlotRegistry;
  auth: AuthSettings;
  tls?: TlsSettings;
  log: Logger;
  /** max_wal_senders (default 64). */
  maxClients?: number;
  /** The version to report while no WAL tells it (receive --serve: the server's). */
  serverVersion?: string;
}

export interface ListenAddress {
  host: string;
  port: number;
}

/** Connections accepted beyond this many (authenticated or not) are closed at once. */
const MAX_SOCKETS_FACTOR = 4;

export class WalServer {
  private server: Server | undefined;
  private readonly connections = new Set<ClientConnection>();
  private readonly sockets = new Set<Socket>();
  private stop!: () => void;
  private readonly ctx: ServeContext;
  private nextPid: number;
  address: ListenAddress | undefined;

  constructor(private readonly o: WalServerOptions) {
    const stopping = new Promise<void>((resolve) => {
      this.stop = resolve;
    });
    // Backend pids are small positive integers that differ between connections (the walreceiver
    // names its temporary slot after one); start somewhere random so two servers differ too.
    this.nextPid = 100000 + randomBytes(2).readUInt16BE(0) * 16;
    this.ctx = {
      source: o.source,
      slots: o.slots,
      auth: o.auth,
      tls: o.tls,
      log: o.log,
      mockSecret: randomBytes(32),
      maxClients: o.maxClients ?? 64,
      stopping,
      clients: new Map(),
      newPid: () => {
        this.nextPid = this.nextPid >= 0x7ffffff0 ? 100000 : this.nextPid + 1;
        return this.nextPid;
      },
      ...(o.serverVersion !== undefined ? { serverVersion: o.serverVersion } : {}),
    };
  }

  /** The clients connected and authenticated now. */
  clients(): ClientInfo[] {
    return [...this.ctx.clients.values()];
  }

  /** Listen on `addr`; rejects with one line when the address cannot be bound. */
  listen(addr: ListenAddress): Promise<ListenAddress> {
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        const why =
          err.code === 'EADDRINUSE' ? 'the address is already in use' : err.code === 'EACCES' ? 'permission denied' : err.code === 'EADDRNOTAVAIL' ? 'the address is not available on this machine' : err.message;
        reject(new Error(`cannot listen on ${hostPort(addr)}: ${why}`));
      };
      server.once('error', onError);
      server.listen(addr.port, addr.host, () => {
        server.removeListener('error', onError);
        server.on('error', (err) => this.o.log.error(`listening socket: ${err.message}`));
        const a = server.address();
        this.address = { host: addr.host, port: typeof a === 'object' && a !== null ? a.port : addr.port };
        resolve(this.address);
      });
    });
  }

  private accept(socket: Socket): void {
    if (this.sockets.size >= this.ctx.maxClients * MAX_SOCKETS_FACTOR) {
      this.o.log.warn(`too many connections; closing the one from ${socket.remoteAddress}`);
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
    const conn = new ClientConnection(socket, this.ctx);
    this.connections.add(conn);
    socket.once('close', () => this.connections.delete(conn));
  }

  /** Stop accepting, end every client's stream (FATAL 57P01) and wait until they are gone. */
  async close(): Promise<void> {
    this.stop();
    const server = this.server;
    const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
    for (const c of this.connections) c.shutdown();
    const deadline = Date.now() + 2000;
    while (this.sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const s of this.sockets) s.destroy();
    await closed;
  }
}

export function hostPort(a: ListenAddress): string {
  return isIP(a.host) === 6 ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
