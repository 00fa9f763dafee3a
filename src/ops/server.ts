// What `walstream status` asks a server, over one replication connection (the same role
// `walstream receive` uses): IDENTIFY_SYSTEM for the system identifier, timeline and current WAL
// position (xlogpos, the flush position), SHOW wal_segment_size, and READ_REPLICATION_SLOT
// (PostgreSQL 15+) for a slot's restart_lsn. See streamutil.c RunIdentifySystem, GetSlotInformation.
import { assertSlotName } from '../protocol/commands.js';
import { buildClientConfig, describeTarget, type ConnectionOptions } from '../session/conninfo.js';
import { ReplicationConnection } from '../session/connection.js';
import type { ServerState } from './status.js';

export async function probeServer(connection: ConnectionOptions, slot: string | undefined): Promise<ServerState> {
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
    return state;
  } catch (err) {
    throw new Error(`${describeTarget(cfg)}: ${(err as Error).message}`, { cause: err });
  } finally {
    await conn.close();
  }
}
