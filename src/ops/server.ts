// What `walstream status` asks a server, over one replication connection (the same role
// `walstream receive` uses): IDENTIFY_SYSTEM for the system identifier, timeline and current WAL
// position (xlogpos, the flush position), SHOW wal_segment_size, and READ_REPLICATION_SLOT
// (PostgreSQL 15+) for a slot's restart_lsn. See streamutil.c RunIdentifySystem, GetSlotInformation.
// Then, over an ordinary connection to the same server when the role may open one, what only SQL
// shows: the receiver's lag in time as the server measures it (pg_stat_replication flush_lag),
// the archiver's last success and failures (pg_stat_archiver), and the slot on any version.
import { assertSlotName } from '../protocol/commands.js';
import { buildClientConfig, describeTarget, type ConnectionOptions, type ReplicationClientConfig } from '../session/conninfo.js';
import { ReplicationConnection } from '../session/connection.js';
import type { ServeClient, ServeSlot, ServerState, SqlState } from './status.js';
import { ServerError } from '../session/errors.js';
import { parseLsn } from '../wal/lsn.js';

export async function probeServer(connection: ConnectionOptions, slot: string | undefined, receiverName = 'walstream'): Promise<ServerState> {
  if (slot !== undefined) assertSlotName(slot);
  const cfg = buildClientConfig(connection);
  let conn: ReplicationConnection;
  try {
    conn = await ReplicationConnection.connect(cfg);
  } catch (err) {
    throw new Error(`cannot connect to ${describeTarget(cfg)}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const id = await conn.identifySystem();
    const segSize = await conn.walSegmentSize();
    const state: ServerState = { systemIdentifier: id.systemId, timeline: id.timeline, position: id.xlogPos, segSize };
    if (slot !== undefined) {
      const info = await conn.readSlot(slot);
      state.slot =
        info === undefined
          ? { name: slot, exists: false, restartLsn: null, restartTimeline: null, unavailable: 'not readable over replication before PostgreSQL 15' }
          : { name: slot, exists: info.slotType !== null, restartLsn: info.restartLsn, restartTimeline: info.restartTli };
    }
    // A walstream serve says so (SHOW walstream.clients; a PostgreSQL server refuses the name and
    // the session goes on): its clients instead of SQL, which it does not run.
    const walstream = await probeWalstream(conn);
    if (walstream) {
      state.walstream = walstream;
      state.sql = { unavailable: 'the server is a walstream serve, which runs no SQL', receiver: null, archiver: null };
      return state;
    }
    // The SQL connection goes to the same server (a multi-host list could lead elsewhere).
    state.sql = await probeSql({ ...cfg, hosts: [conn.target], loadBalanceHosts: 'disable' }, slot, receiverName, state);
    return state;
  } catch (err) {
    throw new Error(`${describeTarget(cfg)}: ${(err as Error).message}`, { cause: err });
  } finally {
    await conn.close();
  }
}

function quoteLiteral(v: string): string {
  return `'${v.replace(/'/g, "''")}'`;
}

function num(v: string | null | undefined): number | null {
  return v === null || v === undefined || v === '' ? null : Number(v);
}

/** The SQL side; never fails the status: what cannot be asked is said in `unavailable`. */
async function probeSql(cfg: ReplicationClientConfig, slot: string | undefined, receiverName: string, state: ServerState): Promise<SqlState> {
  const { replication: _r, ...plain } = cfg;
  let conn: ReplicationConnection;
  try {
    conn = await ReplicationConnection.connect({ ...plain, database: cfg.database === 'replication' ? 'postgres' : cfg.database }, () => undefined);
  } catch (err) {
    return { unavailable: `no SQL connection: ${(err as Error).message}`, receiver: null, archiver: null };
  }
  try {
    const rep = await conn.command(
      `select state, write_lsn::text as write_lsn, extract(epoch from write_lag)::text as write_lag, flush_lsn::text as flush_lsn, ` +
        `extract(epoch from flush_lag)::text as flush_lag, extract(epoch from now() - reply_time)::text as reply_age ` +
        `from pg_stat_replication where application_name = ${quoteLiteral(receiverName)} order by reply_time desc nulls last limit 1`,
    );
    const r = rep.rows[0];
    const receiver = r
      ? {
          applicationName: receiverName,
          state: r['state'] ?? null,
          writeLsn: r['write_lsn'] ?? null,
          writeLagSeconds: num(r['write_lag']),
          flushLsn: r['flush_lsn'] ?? null,
          flushLagSeconds: num(r['flush_lag']),
          replyAgeSeconds: num(r['reply_age']),
        }
      : null;
    const arc = (await conn.command('select last_archived_wal, extract(epoch from now() - last_archived_time)::text as archived_age, failed_count::text as failed, last_failed_wal from pg_stat_archiver'))
      .rows[0];
    const archiver =
      arc && (arc['last_archived_wal'] || arc['failed'] !== '0')
        ? { lastArchived: arc['last_archived_wal'] ?? null, lastArchivedAgeSeconds: num(arc['archived_age']), failedCount: Number(arc['failed'] ?? 0), lastFailed: arc['last_failed_wal'] ?? null }
        : null;
    if (slot !== undefined && state.slot?.unavailable) {
      // Before PostgreSQL 15 the slot is readable only here.
      const row = (await conn.command(`select restart_lsn::text as restart_lsn from pg_replication_slots where slot_name = ${quoteLiteral(slot)}`)).rows[0];
      state.slot = { name: slot, exists: row !== undefined, restartLsn: row?.['restart_lsn'] ? parseLsn(row['restart_lsn']) : null, restartTimeline: null };
    }
    return { unavailable: null, receiver, archiver };
  } catch (err) {
    return { unavailable: `SQL: ${(err as Error).message}`, receiver: null, archiver: null };
  } finally {
    await conn.close();
  }
}

/** The clients and slots of a walstream serve, or undefined for any other server. */
async function probeWalstream(conn: ReplicationConnection): Promise<{ clients: ServeClient[]; slots: ServeSlot[] } | undefined> {
  let clients: string | null | undefined;
  try {
    clients = (await conn.command('SHOW walstream.clients')).rows[0]?.['walstream.clients'];
  } catch (err) {
    if (err instanceof ServerError && err.code === '42704') return undefined;
    throw err;
  }
  const slots = (await conn.command('SHOW walstream.slots')).rows[0]?.['walstream.slots'];
  try {
    return { clients: JSON.parse(clients ?? '[]') as ServeClient[], slots: JSON.parse(slots ?? '[]') as ServeSlot[] };
  } catch {
    throw new Error('the server answered SHOW walstream.clients with something that is not JSON');
  }
}
