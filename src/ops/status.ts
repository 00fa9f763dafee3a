// walstream status: what the archive holds per timeline (first and last segment, count, bytes,
// gaps), the segment in progress, how far the archive reaches, and, given a server, how far it is
// behind that server and its replication slot. Reads the listing, the history files and one
// segment's long page header (for the segment size and system identifier); never the whole archive.
// Also what killed writers left behind (temp files, incomplete multipart uploads), which no
// listing shows: how many, how many bytes, and how many cleanup would remove.
import { parseLsn, type Lsn } from '../wal/lsn.js';
import { heldPast } from '../archive/fork.js';
import { readWriters } from '../archive/writers.js';
import type { ArchiveStore } from '../storage/types.js';
import { formatAge, formatBytes, plural } from './format.js';
import {
  buildInventory,
  leftoverWhat,
  lsnText,
  missingRanges,
  newestSegment,
  positionFits,
  positionToSegNo,
  probeGeometry,
  readAllHistories,
  segNosOf,
  summariseLeftovers,
  timelineBegin,
  timelinesOf,
  type ArchivedFile,
  type Geometry,
  type LeftoverSummary,
  type SegmentRange,
} from './inventory.js';

/** What a server said about itself (IDENTIFY_SYSTEM, SHOW wal_segment_size, READ_REPLICATION_SLOT). */
export interface ServerState {
  systemIdentifier: bigint;
  timeline: number;
  /** IDENTIFY_SYSTEM xlogpos: the server's current WAL flush position. */
  position: Lsn;
  segSize: number | undefined;
  slot?: {
    name: string;
    exists: boolean;
    restartLsn: Lsn | null;
    restartTimeline: number | null;
    /** Why the slot could not be read (READ_REPLICATION_SLOT needs PostgreSQL 15). */
    unavailable?: string;
  };
  /** What an ordinary SQL connection to the server added. */
  sql?: SqlState;
  /** The server is a walstream serve: its clients and slots (SHOW walstream.clients, walstream.slots). */
  walstream?: { clients: ServeClient[]; slots: ServeSlot[] };
}

/** A client of walstream serve, as SHOW walstream.clients lists it (pg_stat_replication's columns). */
export interface ServeClient {
  pid: number;
  application_name: string;
  client_addr: string;
  state: string;
  timeline: number | null;
  slot_name: string | null;
  sent_lsn: string | null;
  write_lsn: string | null;
  flush_lsn: string | null;
  replay_lsn: string | null;
  reply_time: string | null;
  backend_xmin: number | null;
}

export interface ServeSlot {
  name: string;
  temporary: boolean;
  active_pid: number | null;
  restart_lsn: string | null;
}

export interface SqlState {
  /** Why nothing could be asked over SQL (the role may only replicate), else null. */
  unavailable: string | null;
  /** The walstream receiver as the server sees it (pg_stat_replication), with the lag in time it measures. */
  receiver: {
    applicationName: string;
    state: string | null;
    /** Received (written), and its lag; a receiver without a slot or --synchronous reports no flush (as pg_receivewal). */
    writeLsn: string | null;
    writeLagSeconds: number | null;
    flushLsn: string | null;
    flushLagSeconds: number | null;
    replyAgeSeconds: number | null;
  } | null;
  /** The server's own archiver (pg_stat_archiver), when archive_command has run. */
  archiver: { lastArchived: string | null; lastArchivedAgeSeconds: number | null; failedCount: number; lastFailed: string | null } | null;
}

export interface StatusTimeline {
  timeline: number;
  parent: number | null;
  begin: string | null;
  historyFile: string | null;
  firstSegment: string | null;
  lastSegment: string | null;
  segments: number;
  bytes: number;
  /** Missing segments between the first and the last; null when the segment size is unknown. */
  gaps: SegmentRange[] | null;
  /**
   * WAL of this timeline the archive holds past the point where the next timeline forked from it
   * (the old primary's, lost in a failover, kept): null when there is none or the size is unknown.
   */
  pastFork: { nextTimeline: number; at: string; to: string; bytes: number } | null;
}

export interface StatusPartial {
  segment: string;
  timeline: number;
  kind: 'pieces' | 'file';
  pieces: number;
  /** Pieces: the contiguous bytes from the segment start; a file: its size. */
  bytes: number;
  modified: string;
  ageSeconds: number;
}

/** A receiver archiving here, as its record in the archive says (archive/writers.ts). */
export interface StatusWriter {
  writer: string;
  host: string;
  pid: number;
  slot: string | null;
  timeline: number | null;
  flushLsn: string | null;
  lastArchived: string | null;
  updated: string;
  ageSeconds: number;
  /** The writer furthest ahead (timeline, then flush position); with several writers, false for the others. */
  ahead: boolean;
  /** How far its flush position is behind the writer ahead, on the same timeline (null when not comparable). */
  behindBytes: number | null;
}

export interface StatusReport {
  archive: string;
  time: string;
  segmentSize: number | null;
  systemIdentifier: string | null;
  objects: number;
  bytes: number;
  historyFiles: number;
  backupFiles: number;
  timelines: StatusTimeline[];
  partial: StatusPartial | null;
  archivedUpTo: { lsn: string; timeline: number } | null;
  newest: { name: string; modified: string; ageSeconds: number } | null;
  /** Temp files and incomplete uploads of writers (null for a store that keeps none). */
  leftovers: LeftoverSummary | null;
  /** The receivers that record themselves in the archive, by name (two for the high-availability layout). */
  writers: StatusWriter[];
  /** Receivers' records encrypted with a key status was not given. */
  writersEncrypted: number;
  server: {
    systemIdentifier: string;
    timeline: number;
    position: string;
    lagBytes: number | null;
    sameSystem: boolean | null;
    /** Lag in time: the receiver's flush lag as the server measures it, else the age of the archiver's last success. */
    lagSeconds: number | null;
    receiver: SqlState['receiver'];
    archiver: SqlState['archiver'];
    sqlUnavailable: string | null;
    /** A walstream serve: its clients and slots. */
    walstream: { clients: ServeClient[]; slots: ServeSlot[] } | null;
  } | null;
  slot: {
    name: string;
    exists: boolean | null;
    restartLsn: string | null;
    restartTimeline: number | null;
    retainedBytes: number | null;
    aheadOfArchiveBytes: number | null;
    unavailable: string | null;
  } | null;
  warnings: string[];
}

export interface StatusOptions {
  store: ArchiveStore;
  server?: ServerState;
  now?: Date;
  /** Leftovers whose writer cannot be checked count as removable once older than this (default 1 hour). */
  leftoverAgeMs?: number;
}

export async function archiveStatus(o: StatusOptions): Promise<StatusReport> {
  const now = o.now ?? new Date();
  const inv = buildInventory(await o.store.list());
  const histories = await readAllHistories(o.store, inv);
  const warnings: string[] = [];
  const geometry: Geometry | undefined = await probeGeometry(o.store, inv);
  const segSize = geometry?.segSize ?? o.server?.segSize;
  if (!geometry && inv.files.some((f) => f.kind !== 'history' && f.kind !== 'backup')) {
    warnings.push(`no segment header could be read${segSize ? "; using the server's segment size" : ': gaps and positions are unknown'}`);
  }
  for (const h of histories.values()) {
    if (h.state !== 'ok') warnings.push(`${h.file} is ${h.state === 'missing' ? 'missing' : `unreadable: ${h.problem}`}`);
  }

  const age = (d: Date): number => Math.max(0, (now.getTime() - d.getTime()) / 1000);
  const timelines: StatusTimeline[] = timelinesOf(inv, histories).map((tli) => {
    const files = inv.segments.get(tli) ?? [];
    const begin = timelineBegin(histories, tli);
    let gaps: SegmentRange[] | null = null;
    if (segSize !== undefined) {
      const nos = segNosOf(files, segSize);
      gaps = nos.length ? missingRanges(tli, nos, nos[0]!, nos[nos.length - 1]!, segSize) : [];
    }
    return {
      timeline: tli,
      parent: begin?.parent ?? null,
      begin: begin ? lsnText(begin.lsn) : null,
      historyFile: inv.histories.get(tli)?.name ?? null,
      firstSegment: files[0]?.name ?? null,
      lastSegment: files[files.length - 1]?.name ?? null,
      segments: files.length,
      bytes: files.reduce((n, f) => n + f.info.storedSize, 0),
      gaps,
      pastFork: null,
    };
  });
  // A timeline the archive holds past its fork to the next one (a failover that lost WAL).
  if (segSize !== undefined) {
    for (const t of timelines) {
      const next = timelines.find((n) => n.parent === t.timeline);
      const at = next ? timelineBegin(histories, next.timeline)?.lsn : undefined;
      if (!next || at === undefined) continue;
      const held = await heldPast({ store: o.store, tli: t.timeline, fork: at, segSize }).catch(() => at);
      if (held > at) t.pastFork = { nextTimeline: next.timeline, at: lsnText(at), to: lsnText(held), bytes: Number(held - at) };
    }
  }

  // The segment in progress: the partial with the highest position (pieces, or a .partial file).
  const groups = new Map<string, ArchivedFile[]>();
  for (const f of [...inv.pieces, ...inv.partials]) {
    const key = `${f.segment!}:${f.kind}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = []));
    g.push(f);
  }
  let partial: StatusPartial | null = null;
  let partialEnd: Lsn | undefined;
  for (const g of groups.values()) {
    const f0 = g[0]!;
    if (partial && (f0.position! < partial.segment.slice(8) || (f0.position === partial.segment.slice(8) && f0.tli <= partial.timeline))) continue;
    const modified = new Date(Math.max(...g.map((f) => f.info.modified.getTime())));
    let bytes: number;
    if (f0.kind === 'piece') {
      bytes = 0;
      for (const p of [...g].sort((a, b) => a.offset! - b.offset!)) if (p.offset === bytes) bytes += p.info.size;
    } else {
      bytes = f0.info.size;
    }
    partial = {
      segment: f0.segment!,
      timeline: f0.tli,
      kind: f0.kind === 'piece' ? 'pieces' : 'file',
      pieces: f0.kind === 'piece' ? g.length : 0,
      bytes,
      modified: modified.toISOString(),
      ageSeconds: age(modified),
    };
    partialEnd = f0.kind === 'piece' && segSize !== undefined && positionFits(f0.position!, segSize) ? positionToSegNo(f0.position!, segSize) * BigInt(segSize) + BigInt(bytes) : undefined;
  }

  // How far the archive reaches: the newest complete segment, extended by the pieces of the next one.
  let archivedUpTo: StatusReport['archivedUpTo'] = null;
  let upTo: Lsn | undefined;
  const newest = newestSegment(inv);
  if (segSize !== undefined && newest && positionFits(newest.position!, segSize)) {
    upTo = (positionToSegNo(newest.position!, segSize) + 1n) * BigInt(segSize);
    archivedUpTo = { lsn: lsnText(upTo), timeline: newest.tli };
  }
  if (partial && partialEnd !== undefined && segSize !== undefined) {
    const start = positionToSegNo(partial.segment.slice(8), segSize) * BigInt(segSize);
    if ((upTo === undefined || start === upTo) && partial.bytes > 0) {
      upTo = partialEnd;
      archivedUpTo = { lsn: lsnText(upTo), timeline: partial.timeline };
    }
  }

  let newestFile: ArchivedFile | undefined;
  for (const f of inv.files) if (!newestFile || f.info.modified > newestFile.info.modified) newestFile = f;

  const report: StatusReport = {
    archive: o.store.description,
    time: now.toISOString(),
    segmentSize: segSize ?? null,
    systemIdentifier: geometry?.systemId.toString() ?? null,
    objects: inv.files.length,
    bytes: inv.files.reduce((n, f) => n + f.info.storedSize, 0),
    historyFiles: inv.histories.size,
    backupFiles: inv.backups.length,
    timelines,
    partial,
    archivedUpTo,
    newest: newestFile ? { name: newestFile.name, modified: newestFile.info.modified.toISOString(), ageSeconds: age(newestFile.info.modified) } : null,
    leftovers: await summariseLeftovers(o.store, { now, ...(o.leftoverAgeMs !== undefined ? { maxAgeMs: o.leftoverAgeMs } : {}) }),
    ...(await statusWriters(o.store, now, warnings)),
    server: null,
    slot: null,
    warnings,
  };

  const s = o.server;
  if (s) {
    const sameSystem = geometry ? geometry.systemId === s.systemIdentifier : null;
    if (sameSystem === false) warnings.push(`the server is database system ${s.systemIdentifier}, the archive holds WAL of system ${geometry!.systemId}`);
    if (geometry && s.segSize !== undefined && s.segSize !== geometry.segSize) warnings.push(`the server uses ${s.segSize}-byte segments, the archive ${geometry.segSize}-byte segments`);
    report.server = {
      systemIdentifier: s.systemIdentifier.toString(),
      timeline: s.timeline,
      position: lsnText(s.position),
      lagBytes: upTo !== undefined ? Number(s.position - upTo) : null,
      sameSystem,
      lagSeconds: timeLag(s.sql),
      receiver: s.sql?.receiver ?? null,
      archiver: s.sql?.archiver ?? null,
      sqlUnavailable: s.sql?.unavailable ?? null,
      walstream: s.walstream ?? null,
    };
    if (s.sql?.archiver && s.sql.archiver.failedCount > 0) warnings.push(`the server's archiver has failed ${s.sql.archiver.failedCount} times (last: ${s.sql.archiver.lastFailed ?? 'unknown'})`);
    if (s.slot) {
      const r = s.slot.restartLsn;
      report.slot = {
        name: s.slot.name,
        exists: s.slot.unavailable ? null : s.slot.exists,
        restartLsn: r !== null ? lsnText(r) : null,
        restartTimeline: s.slot.restartTimeline,
        retainedBytes: r !== null ? Number(s.position - r) : null,
        aheadOfArchiveBytes: r !== null && upTo !== undefined ? Number(r - upTo) : null,
        unavailable: s.slot.unavailable ?? null,
      };
      if (!s.slot.unavailable && !s.slot.exists) warnings.push(`replication slot "${s.slot.name}" does not exist on the server`);
    }
  }
  return report;
}

/** The writers' records, the one furthest ahead marked and the others' distance behind it. */
async function statusWriters(store: ArchiveStore, now: Date, warnings: string[]): Promise<{ writers: StatusWriter[]; writersEncrypted: number }> {
  let found: Awaited<ReturnType<typeof readWriters>>;
  try {
    found = await readWriters(store);
  } catch (err) {
    warnings.push(`the receivers' records could not be read: ${(err as Error).message}`);
    return { writers: [], writersEncrypted: 0 };
  }
  if (found.unreadable > 0) warnings.push(`${plural(found.unreadable, "receiver's record")} could not be read (encrypted, or not written by walstream)`);
  const key = (w: { timeline: number | null; flushLsn: Lsn | null }): [number, Lsn] => [w.timeline ?? 0, w.flushLsn ?? 0n];
  let lead: (typeof found.writers)[number] | undefined;
  for (const w of found.writers) {
    if (w.flushLsn === null) continue;
    const [t, l] = key(w);
    if (!lead || t > key(lead)[0] || (t === key(lead)[0] && l > key(lead)[1])) lead = w;
  }
  const writers = found.writers.map((w) => ({
    writer: w.writer,
    host: w.host,
    pid: w.pid,
    slot: w.slot,
    timeline: w.timeline,
    flushLsn: w.flushLsn !== null ? lsnText(w.flushLsn) : null,
    lastArchived: w.lastArchived,
    updated: w.updated.toISOString(),
    ageSeconds: Math.max(0, (now.getTime() - w.updated.getTime()) / 1000),
    ahead: w === lead,
    behindBytes: lead && w.flushLsn !== null && w.timeline === lead.timeline ? Number(lead.flushLsn! - w.flushLsn) : null,
  }));
  return { writers, writersEncrypted: found.encrypted };
}

/**
 * The lag in time: the receiver's, as the server measures it (flush lag when it reports flushes,
 * else write lag; the server shows none once the receiver has caught up), else how long ago the
 * server's archiver last archived a file; null when the server could not be asked.
 */
function timeLag(sql: SqlState | undefined): number | null {
  const r = sql?.receiver;
  if (r) {
    if (r.flushLsn !== null) return r.flushLagSeconds ?? 0;
    if (r.writeLsn !== null) return r.writeLagSeconds ?? 0;
    return null;
  }
  return sql?.archiver?.lastArchivedAgeSeconds ?? null;
}

/** Status for a person: one line per fact, timelines aligned. */
export function formatStatus(r: StatusReport): string {
  const L: string[] = [];
  const label = (l: string): string => l.padEnd(12);
  const geo = r.segmentSize !== null ? `${formatBytes(r.segmentSize)} segments${r.systemIdentifier ? `, system ${r.systemIdentifier}` : ''}` : 'segment size unknown';
  L.push(`${label('archive')}${r.archive}  (${geo})`);
  const newest = r.newest ? `; newest written ${formatAge(r.newest.ageSeconds)} ago` : '';
  L.push(`${label('')}${plural(r.objects, 'WAL file')}, ${formatBytes(r.bytes)} stored, ${plural(r.historyFiles, 'history file')}, ${plural(r.backupFiles, 'backup file')}${newest}`);
  for (const t of r.timelines) {
    const range = t.firstSegment ? `${t.firstSegment} .. ${t.lastSegment}  ${plural(t.segments, 'segment')}, ${formatBytes(t.bytes)} stored` : 'no segments';
    const from = t.parent !== null ? `  (from timeline ${t.parent} at ${t.begin})` : '';
    L.push(`${label(`timeline ${t.timeline}`)}${range}${from}`);
    for (const g of t.gaps ?? []) {
      L.push(`${label('')}GAP: ${g.first}${g.count > 1 ? ` .. ${g.last}` : ''} missing (${plural(g.count, 'segment')})`);
    }
    if (t.pastFork) {
      const f = t.pastFork;
      L.push(`${label('')}timeline ${t.timeline} continues past the fork to timeline ${f.nextTimeline} at ${f.at} by ${formatBytes(f.bytes)} (to ${f.to}), lost in the failover; kept`);
    }
  }
  if (r.partial) {
    const p = r.partial;
    const what = p.kind === 'pieces' ? `${plural(p.pieces, 'piece')}, ${formatBytes(p.bytes)}` : `${p.segment}.partial, ${formatBytes(p.bytes)}`;
    L.push(`${label('partial')}${p.segment}: ${what}, written ${formatAge(p.ageSeconds)} ago`);
  }
  L.push(`${label('reaches')}${r.archivedUpTo ? `${r.archivedUpTo.lsn} on timeline ${r.archivedUpTo.timeline}` : 'unknown'}`);
  const left = formatLeftovers(r.leftovers);
  if (left !== undefined) L.push(`${label('leftovers')}${left}`);
  const lead = r.writers.find((w) => w.ahead);
  if (r.writersEncrypted > 0) L.push(`${label('writers')}${plural(r.writersEncrypted, "receiver's record")} encrypted: give --encryption-key-file to read`);
  for (const w of r.writers) {
    const where = w.flushLsn !== null ? `flushed ${w.flushLsn}${w.timeline !== null ? ` on timeline ${w.timeline}` : ''}` : 'nothing flushed yet';
    const archived = w.lastArchived !== null ? `, archived ${w.lastArchived}` : '';
    let rank = '';
    if (r.writers.length > 1 && lead) rank = w.ahead ? '; ahead' : w.behindBytes !== null ? `; ${formatBytes(w.behindBytes)} behind ${lead.writer}` : `; behind ${lead.writer}`;
    L.push(`${label('writer')}${w.writer} on ${w.host || 'unknown host'}${w.slot !== null ? ` (slot ${w.slot})` : ''}: ${where}${archived}, updated ${formatAge(w.ageSeconds)} ago${rank}`);
  }
  if (r.server) {
    const s = r.server;
    const lag = s.lagBytes === null ? 'lag unknown' : s.lagBytes >= 0 ? `archive ${formatBytes(s.lagBytes)} behind` : `archive ${formatBytes(-s.lagBytes)} ahead of the server`;
    L.push(`${label('server')}at ${s.position} on timeline ${s.timeline}: ${lag}${s.lagSeconds !== null ? `, ${s.lagSeconds.toFixed(1)} s` : ''}`);
    if (s.receiver) {
      const rcv = s.receiver;
      const lagOf = (v: number | null): string => (v !== null ? `${v.toFixed(1)} s` : 'none');
      const flushed = rcv.flushLsn !== null ? `flushed ${rcv.flushLsn}, flush lag ${lagOf(rcv.flushLagSeconds)}` : 'reports no flushes (no slot)';
      L.push(`${label('receiver')}${rcv.applicationName} ${rcv.state ?? 'unknown'}, received ${rcv.writeLsn ?? 'nothing yet'}, write lag ${lagOf(rcv.writeLagSeconds)}, ${flushed} (as the server measures it)`);
    }
    if (s.archiver) {
      const a = s.archiver;
      L.push(`${label('archiver')}last archived ${a.lastArchived ?? 'nothing'}${a.lastArchivedAgeSeconds !== null ? ` ${formatAge(a.lastArchivedAgeSeconds)} ago` : ''}, ${plural(a.failedCount, 'failure')}`);
    }
    if (s.sqlUnavailable) L.push(`${label('')}(lag in time unknown: ${s.sqlUnavailable})`);
    if (s.walstream) {
      L.push(`${label('clients')}${s.walstream.clients.length === 0 ? 'none connected (a walstream serve)' : `${plural(s.walstream.clients.length, 'client')} of this walstream serve`}`);
      for (const c of s.walstream.clients) {
        const behind = c.flush_lsn && /^[0-9A-F]+\/[0-9A-F]+$/i.test(c.flush_lsn) ? `, ${formatBytes(Math.max(0, Number(parseLsn(s.position) - parseLsn(c.flush_lsn))))} behind` : '';
        L.push(
          `${label('')}${c.application_name || '(no name)'} ${c.client_addr} pid ${c.pid} ${c.state}${c.timeline !== null ? ` on timeline ${c.timeline}` : ''}: ` +
            `sent ${c.sent_lsn ?? '-'}, flushed ${c.flush_lsn ?? '-'}${behind}, replayed ${c.replay_lsn ?? '-'}${c.slot_name ? `, slot ${c.slot_name}` : ''}`,
        );
      }
      for (const sl of s.walstream.slots)
        L.push(`${label('')}slot ${sl.name}${sl.temporary ? ' (temporary)' : ''}: restart_lsn ${sl.restart_lsn ?? 'none yet'}${sl.active_pid !== null ? `, used by pid ${sl.active_pid}` : ''}`);
    }
  }
  if (r.slot) {
    const s = r.slot;
    let text: string;
    if (s.unavailable) text = `${s.name}: ${s.unavailable}`;
    else if (!s.exists) text = `${s.name}: does not exist`;
    else if (s.restartLsn === null) text = `${s.name}: no restart_lsn yet`;
    else text = `${s.name}: restart_lsn ${s.restartLsn}, ${formatBytes(s.retainedBytes ?? 0)} kept on the server`;
    L.push(`${label('slot')}${text}`);
  }
  for (const w of r.warnings) L.push(`warning: ${w}`);
  return `${L.join('\n')}\n`;
}

/**
 * One line on the leftovers of writers (undefined when there are none to speak of): "3 temp files,
 * 48.0 MB: 2 of writers that are gone (32.0 MB; walstream cleanup removes them), 1 kept (a writer may still be at work)".
 */
export function formatLeftovers(l: LeftoverSummary | null): string | undefined {
  if (!l || (l.count === 0 && l.unavailable === null)) return undefined;
  const parts: string[] = [];
  if (l.count > 0) {
    const what = `${leftoverWhat(l.count, l.uploads)}, ${formatBytes(l.bytes)}`;
    const how: string[] = [];
    if (l.removable > 0) how.push(`${l.removable} of writers that are gone (${formatBytes(l.removableBytes)}; walstream cleanup removes them)`);
    if (l.inUse > 0) how.push(`${l.inUse} kept (a writer may still be at work)`);
    parts.push(`${what}: ${how.join(', ')}`);
  }
  if (l.unavailable !== null) parts.push(l.unavailable);
  return parts.join('; ');
}

export function statusJson(r: StatusReport): string {
  return `${JSON.stringify(r, null, 2)}\n`;
}
