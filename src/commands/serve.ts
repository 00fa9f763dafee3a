// walstream serve: the server side of physical replication over the WAL walstream keeps. Standbys
// (primary_conninfo), pg_receivewal and other walstreams connect as to a primary and stream from
// the archive (local or S3) and a receiver's directory, following the current timeline as it
// grows. Composes the source layer (what WAL there is, verified) and the server layer (the wire);
// also used by `walstream receive --serve`, which adds the receiver's durable tail.
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { useHashThreads } from '../util/bulk.js';
import { createSecureContext } from 'node:tls';
import { LocalStore } from '../storage/local.js';
import type { ArchiveStore } from '../storage/types.js';
import { formatLsn } from '../wal/lsn.js';
import type { Logger } from '../util/log.js';
import { StoreReader } from '../source/store-reader.js';
import { WalSource, type WalSourceOptions } from '../source/wal-source.js';
import type { LiveTail } from '../source/live-tail.js';
import type { SourceIdentity } from '../source/types.js';
import { certificateEndPointHash, PasswordBook, readPasswordFile } from '../server/auth.js';
import type { AuthSettings, ClientInfo, TlsSettings } from '../server/client.js';
import { SlotRegistry } from '../server/slots.js';
import { hostPort, WalServer, type ListenAddress } from '../server/server.js';
import { UsageError } from './receive.js';

export const SERVE_PASSWORD_VARIABLE = 'WALSTREAM_SERVE_PASSWORD';

export interface ServeAuthOptions {
  trust: boolean;
  passwordFile?: string;
  /** WALSTREAM_SERVE_PASSWORD: one secret for every user name. */
  password?: string;
}

export interface ServeTlsOptions {
  certFile: string;
  keyFile: string;
  /** Refuse clients without TLS. */
  required: boolean;
}

/** What a server needs besides where the WAL is: shared by serve and receive --serve. */
export interface ServerSettings {
  listen: ListenAddress;
  auth: ServeAuthOptions;
  tls?: ServeTlsOptions;
  /** Keep persistent replication slots in this file. */
  slotFile?: string;
  /** Slots to create (persistent) when missing. */
  slots?: string[];
  maxClients?: number;
}

export interface ServeOptions extends ServerSettings {
  /** A directory a receiver writes (pg_receivewal's layout): its .partial is served too. */
  directory?: string;
  /** The archive, opened (the cli opens it with the key options). */
  archive?: ArchiveStore;
  /** How often stores are looked at for new WAL while a client waits (ms, default 1000). */
  pollIntervalMs?: number;
  log: Logger;
  stop: Promise<void>;
  /** Called once listening (tests, the metrics endpoint). */
  onListening?: (running: RunningServer) => void;
}

export interface RunningServer {
  address: ListenAddress;
  clients(): ClientInfo[];
  source: WalSource;
  slots: SlotRegistry;
}

function authSettings(a: ServeAuthOptions): AuthSettings {
  if (a.trust) {
    if (a.passwordFile !== undefined) throw new UsageError('--trust and --password-file exclude each other');
    return { trust: true, book: undefined };
  }
  if (a.passwordFile !== undefined) {
    try {
      return { trust: false, book: readPasswordFile(a.passwordFile) };
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  }
  if (a.password !== undefined && a.password !== '') {
    try {
      return { trust: false, book: PasswordBook.anyUser(a.password) };
    } catch (err) {
      throw new UsageError(`${SERVE_PASSWORD_VARIABLE}: ${(err as Error).message}`);
    }
  }
  throw new UsageError(`no password to check clients against: give --password-file FILE or ${SERVE_PASSWORD_VARIABLE}, or --trust to let anyone who can connect stream`);
}

function tlsSettings(t: ServeTlsOptions | undefined): TlsSettings | undefined {
  if (!t) return undefined;
  let cert: Buffer;
  let key: Buffer;
  try {
    cert = readFileSync(t.certFile);
    key = readFileSync(t.keyFile);
  } catch (err) {
    throw new UsageError(`cannot read the TLS certificate or key: ${(err as Error).message}`);
  }
  try {
    return { context: createSecureContext({ cert, key }), endPointHash: certificateEndPointHash(cert), required: t.required };
  } catch (err) {
    throw new UsageError(`cannot use the TLS certificate "${t.certFile}" and key "${t.keyFile}": ${(err as Error).message}`);
  }
}

/** Start a server over a WAL source; the caller closes it. */
export async function startServer(source: WalSource, s: ServerSettings, log: Logger, serverVersion?: string): Promise<{ server: WalServer; slots: SlotRegistry }> {
  const auth = authSettings(s.auth);
  const tls = tlsSettings(s.tls);
  if (s.tls?.required && !tls) throw new UsageError('--tls-required needs --tls-cert and --tls-key');
  let slots: SlotRegistry;
  try {
    slots = new SlotRegistry(s.slotFile);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  for (const name of s.slots ?? []) {
    if (!slots.get(name))
      await slots.create(name, false, 0, undefined).catch((err: Error) => {
        throw new UsageError(err.message);
      });
  }
  const server = new WalServer({ source, slots, auth, ...(tls ? { tls } : {}), log, maxClients: s.maxClients ?? 64, ...(serverVersion ? { serverVersion } : {}) });
  await server.listen(s.listen).catch((err: Error) => {
    throw new UsageError(err.message);
  });
  if (auth.trust) log.warn(`--trust: anyone who can connect to ${hostPort(server.address!)} may stream this WAL without a password`);
  return { server, slots };
}

/** Open the WAL source over a directory and/or an archive. */
export async function openSource(o: { directory?: string; archive?: ArchiveStore; tail?: LiveTail; identity?: SourceIdentity; pollIntervalMs?: number; log: Logger }): Promise<WalSource> {
  const stores: StoreReader[] = [];
  if (o.directory !== undefined) stores.push(new StoreReader(new LocalStore(o.directory), 'directory'));
  if (o.archive) stores.push(new StoreReader(o.archive, 'archive'));
  const opts: WalSourceOptions = {
    stores,
    log: o.log,
    ...(o.tail ? { tail: o.tail } : {}),
    ...(o.identity ? { identity: o.identity } : {}),
    ...(o.pollIntervalMs !== undefined ? { pollIntervalMs: o.pollIntervalMs } : {}),
  };
  return WalSource.open(opts);
}

/** The server inside `walstream receive --serve`: the receiver's directory, its archive and its durable tail. */
export interface ReceiverServer {
  /** The receiver learned which system it receives (IDENTIFY_SYSTEM and the SHOWs). */
  identified(id: SourceIdentity): Promise<void>;
  running: RunningServer;
  close(): Promise<void>;
}

export async function serveReceiver(o: { directory: string; archive?: ArchiveStore; tail: LiveTail; settings: ServerSettings; log: Logger }): Promise<ReceiverServer> {
  authSettings(o.settings.auth);
  tlsSettings(o.settings.tls);
  const source = await openSource({ directory: o.directory, archive: o.archive, tail: o.tail, log: o.log });
  let started: { server: WalServer; slots: SlotRegistry };
  try {
    started = await startServer(source, o.settings, o.log);
  } catch (err) {
    source.close();
    throw err;
  }
  const { server, slots } = started;
  o.log.info(`serving the WAL received on ${hostPort(server.address!)}`);
  return {
    identified: (id) => source.adoptIdentity(id),
    running: { address: server.address!, clients: () => server.clients(), source, slots },
    async close() {
      await server.close();
      await slots.save().catch(() => undefined);
      source.close();
    },
  };
}

export async function serve(o: ServeOptions): Promise<void> {
  if (o.directory === undefined && !o.archive) throw new UsageError('nothing to serve: give --archive URL and/or -D DIR');
  // The checksums of segments read are computed on worker threads, off the loop that sends to every client.
  useHashThreads(Math.min(2, availableParallelism()));
  // Settings first: a bad password file or certificate is reported before anything is read.
  authSettings(o.auth);
  tlsSettings(o.tls);
  let source: WalSource;
  try {
    source = await openSource(o);
  } catch (err) {
    throw new UsageError(`cannot serve: ${(err as Error).message}`);
  }
  try {
    const { server, slots } = await startServer(source, o, o.log);
    try {
      const ts = await source.timelines();
      const id = source.identity;
      const what = id
        ? `WAL of database system ${id.systemId}${id.major !== undefined ? ` (PostgreSQL ${id.major})` : ''}, timeline ${ts.current} up to ${formatLsn(ts.end)}`
        : 'no WAL yet (clients are refused until some arrives)';
      o.log.info(`serving ${what} on ${hostPort(server.address!)}`);
      o.onListening?.({ address: server.address!, clients: () => server.clients(), source, slots });
      await o.stop;
      o.log.verbose('shutting down');
    } finally {
      await server.close();
      await slots.save().catch(() => undefined);
    }
  } finally {
    source.close();
  }
}
