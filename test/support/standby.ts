// Waiting on a server's replication and archiving state, shared by the push/fetch tests.
import type { PgCluster } from '../harness/pg.js';

/** Wait until a standby that caught up from the archive streams from its primary again. */
export function waitStreaming(standby: PgCluster): Promise<void> {
  return standby.waitFor(async () => (await standby.query<{ s: string }>('select status as s from pg_stat_wal_receiver'))[0]?.s === 'streaming', 60_000, 'the standby to stream from the primary again');
}

/** Wait until the server's archiver has archived `last` (or a later file). */
export function waitArchived(server: PgCluster, last: string, timeoutMs = 120_000): Promise<void> {
  return server.waitFor(async () => ((await server.query<{ l: string | null }>('select last_archived_wal as l from pg_stat_archiver'))[0]?.l ?? '') >= last, timeoutMs, `archiving up to ${last}`);
}
