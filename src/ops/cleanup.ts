// walstream cleanup: remove WAL the archive no longer needs, as archive_cleanup_command (with %r,
// the file holding the oldest restart point a standby still needs: xlog.c CreateRestartPoint,
// like pg_archivecleanup) or as a retention rule (before a segment, or older than a duration).
//
// What it may remove, and what it never does:
// - only segments, .partial files, pieces and backup history files; never a history file (they are
//   tiny, and recovery_target_timeline = 'latest' probes them in order, so removing one hides every
//   newer timeline), never the archive's newest segment;
// - before a segment (%r or --before): the segments older than it on its own timeline, and on the
//   timelines its history file proves to be its ancestors only the part before each one's switch
//   point; timelines it cannot prove to be ancestors are left alone;
// - older than a duration: objects last modified before the cutoff that also lie before every
//   segment modified after it (so no hole opens inside what is kept);
// - an archive that cannot be listed completely is not touched (list() fails as a whole).
// Objects are removed oldest first, so an interruption leaves the archive contiguous.
// Every run, whatever its rule (even the all-zero %r that removes no WAL), also removes what
// killed writers left behind: temp files whose writer is gone, and S3 multipart uploads idle for
// longer than the leftover age (storage/leftovers.ts), never one a live writer may still publish.
// That part never fails the run: what cannot be removed is a warning.
import { listBackups, parseBackupObjectName, recordName } from '../backup/layout.js';
import { StorageError, type ArchiveStore, type Leftover } from '../storage/types.js';
import { DEFAULT_LEFTOVER_AGE_MS } from '../storage/leftovers.js';
import { silentLogger, type Logger } from '../util/log.js';
import { historyFileName } from '../wal/segment.js';
import type { Lsn } from '../wal/lsn.js';
import {
  ancestry,
  buildInventory,
  cmp,
  newestSegment,
  lsnText,
  positionFits,
  positionToSegNo,
  probeGeometry,
  readHistories,
  type ArchivedFile,
  type Geometry,
  type HistoryMap,
  type Inventory,
} from './inventory.js';

export type CleanupRule = { kind: 'before'; segment: string } | { kind: 'older-than'; cutoff: Date };

export interface CleanupPlan {
  /** What goes, oldest position first. */
  remove: ArchivedFile[];
  /** How many WAL files stay. */
  kept: number;
  /** Things the operator should know (e.g. a history file that could not be read). */
  warnings: string[];
}

export class CleanupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CleanupError';
  }
}

const ZERO_NAME = '000000000000000000000000';
const CUTOFF_NAME_RE = /^([0-9A-F]{24})(?:\.partial|\.[0-9A-F]{8}\.backup)?$/;

/**
 * The segment a cutoff name stands for: a segment name, or a .partial or .backup name (as
 * pg_archivecleanup accepts). Undefined for the all-zero name PostgreSQL passes before the first
 * restart point, which means "nothing may go".
 */
export function cutoffSegment(name: string): string | undefined {
  const m = CUTOFF_NAME_RE.exec(name);
  if (!m) throw new CleanupError(`"${name.slice(0, 80)}" is not a WAL file name (expected a 24-digit segment name such as %r)`);
  if (m[1] === ZERO_NAME) return undefined;
  if (m[1]!.startsWith('00000000')) throw new CleanupError(`"${name}" names timeline 0`);
  return m[1]!;
}

/** "7d", "12h", "90m", "1w2d", "3600s" → milliseconds. */
export function parseDuration(text: string): number {
  const t = text.trim();
  if (!/^(?:\d+[smhdw])+$/.test(t)) throw new CleanupError(`invalid duration "${text}" (use a number with s, m, h, d or w, e.g. 7d or 12h)`);
  const unit: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
  let ms = 0;
  for (const [, n, u] of t.matchAll(/(\d+)([smhdw])/g)) ms += Number(n) * unit[u!]!;
  if (ms <= 0) throw new CleanupError(`invalid duration "${text}": must be longer than zero`);
  return ms;
}

const REMOVABLE = new Set(['segment', 'partial', 'piece', 'backup']);

/**
 * Decide what a rule removes. Pure. `geometry` (the segment size) is needed only for a cutoff on
 * a timeline with ancestors; `histories` must hold the cutoff timeline's history when above 1.
 */
export function planCleanup(inv: Inventory, rule: CleanupRule, histories: HistoryMap, geometry: Geometry | undefined): CleanupPlan {
  const warnings: string[] = [];
  const newest = newestSegment(inv);
  const candidates = inv.files.filter((f) => REMOVABLE.has(f.kind) && f !== newest);
  let remove: ArchivedFile[];
  if (rule.kind === 'before') {
    const tli = parseInt(rule.segment.slice(0, 8), 16);
    const pos = rule.segment.slice(8);
    const h = histories.get(tli);
    if (tli > 1 && h?.state !== 'ok') {
      warnings.push(`${historyFileName(tli)} is ${h?.state === 'missing' || !h ? 'not in the archive' : `unreadable (${h.problem})`}: only timeline ${tli} is cleaned`);
    }
    const lines = ancestry(histories, tli);
    const ends = new Map(lines.map((l) => [l.tli, l.end]));
    if (lines.length > 1 && !geometry) {
      throw new CleanupError('cannot tell the segment size (no segment in the archive has a readable header): not removing anything');
    }
    remove = candidates.filter((f) => {
      if (!ends.has(f.tli) || f.position! >= pos) return false;
      const end = ends.get(f.tli);
      if (end === undefined) return true; // the cutoff's own timeline
      // An ancestor: only the segments holding WAL from before its switch point.
      if (!positionFits(f.position!, geometry!.segSize)) return false;
      return positionToSegNo(f.position!, geometry!.segSize) * BigInt(geometry!.segSize) < end;
    });
  } else {
    const cutoff = rule.cutoff.getTime();
    // Nothing at or after the oldest segment that is still recent (or the newest segment) goes.
    let floor: string | undefined = newest?.position;
    for (const list of inv.segments.values()) {
      for (const f of list) if (f.info.modified.getTime() >= cutoff && (floor === undefined || f.position! < floor)) floor = f.position!;
    }
    if (floor === undefined) {
      warnings.push('the archive holds no complete segment: nothing is removed by age');
      remove = [];
    } else {
      remove = candidates.filter((f) => f.info.modified.getTime() < cutoff && f.position! < floor);
    }
  }
  remove.sort((a, b) => cmp(a.position!, b.position!) || a.tli - b.tli || cmp(a.name, b.name));
  return { remove, kept: inv.files.length - remove.length, warnings };
}

export interface CleanupOptions {
  store: ArchiveStore;
  /** What WAL to remove; undefined: none (the all-zero %r), only leftovers. */
  rule: CleanupRule | undefined;
  dryRun: boolean;
  /** Deletes in flight (default 4). */
  parallel?: number;
  log?: Logger;
  /** Called for each object removed (or, in a dry run, that would be). */
  onRemove?: (file: ArchivedFile) => void;
  /** Leftovers whose writer cannot be checked are removed once older than this (default 1 hour). */
  leftoverAgeMs?: number;
  /** Called for each leftover removed (or, in a dry run, that would be). */
  onRemoveLeftover?: (leftover: Leftover) => void;
  /**
   * Keep every segment holding WAL from this position on, on every timeline, whatever the rule
   * says: what replication slots of walstream serve still need (--keep-slots).
   */
  keepFrom?: { lsn: Lsn; why: string };
}

export interface LeftoverCleanup {
  /** What was removed (in a dry run: what would be). */
  removed: Leftover[];
  /** Their bytes (those whose size is known). */
  bytes: number;
  /** Leftovers kept: a writer may still be at work on them. */
  kept: number;
  /** Removable leftovers that could not be removed, with why. */
  failed: { name: string; error: string }[];
  /** Why the archive could not be searched for leftovers (or not all of it), else undefined. */
  unavailable: string | undefined;
}

export interface CleanupResult {
  plan: CleanupPlan;
  /** Objects actually removed (0 in a dry run). */
  removed: number;
  /** Stored bytes of the objects in the plan. */
  bytes: number;
  /** What killed writers left, and what became of it (nothing for a store that keeps no leftovers). */
  leftovers: LeftoverCleanup;
}

export async function cleanupArchive(o: CleanupOptions): Promise<CleanupResult> {
  const log = o.log ?? silentLogger;
  const wal = o.rule ? await cleanupWal(o, o.rule, log) : { plan: { remove: [], kept: 0, warnings: [] }, removed: 0, bytes: 0 };
  return { ...wal, leftovers: await cleanupLeftovers(o, log) };
}

/**
 * Remove the leftovers of writers that are gone (see the top of this file). Failures are
 * warnings: leftovers are not WAL, and the next run tries again.
 */
export async function cleanupLeftovers(o: Pick<CleanupOptions, 'store' | 'dryRun' | 'leftoverAgeMs' | 'onRemoveLeftover'>, log: Logger = silentLogger): Promise<LeftoverCleanup> {
  const none: LeftoverCleanup = { removed: [], bytes: 0, kept: 0, failed: [], unavailable: undefined };
  if (!o.store.removeLeftovers) return none;
  let r;
  try {
    r = await o.store.removeLeftovers({ dryRun: o.dryRun, maxAgeMs: o.leftoverAgeMs ?? DEFAULT_LEFTOVER_AGE_MS });
  } catch (err) {
    if (!(err instanceof StorageError)) throw err;
    const unavailable = `cannot look for leftovers of writers: ${err.message}`;
    log.warn(unavailable);
    return { ...none, unavailable };
  }
  if (r.unavailable !== undefined) log.warn(r.unavailable);
  for (const l of r.removed) o.onRemoveLeftover?.(l);
  const failed = r.failed.map((f) => ({ name: f.leftover.name, error: f.error }));
  for (const f of failed) log.warn(`cannot remove ${f.name}, left by a writer that is gone: ${f.error}`);
  const out = new Set([...r.removed, ...r.failed.map((f) => f.leftover)]);
  return {
    removed: r.removed,
    bytes: r.removed.reduce((n, l) => n + (l.bytes ?? 0), 0),
    kept: r.leftovers.filter((l) => !out.has(l)).length,
    failed,
    unavailable: r.unavailable,
  };
}

async function cleanupWal(o: CleanupOptions, rule: CleanupRule, log: Logger): Promise<Omit<CleanupResult, 'leftovers'>> {
  // A listing error stops us here: nothing is removed from an archive that cannot be seen whole.
  let listing;
  try {
    listing = await o.store.list();
  } catch (err) {
    throw new CleanupError(`cannot list the archive completely, so nothing was removed: ${(err as Error).message}`);
  }
  const inv = buildInventory(listing);
  let histories: HistoryMap = new Map();
  let geometry: Geometry | undefined;
  if (rule.kind === 'before') {
    const tli = parseInt(rule.segment.slice(0, 8), 16);
    histories = await readHistories(o.store, inv, [tli]);
    if (tli > 1 && histories.get(tli)?.state === 'ok') geometry = await probeGeometry(o.store, inv);
  }
  const plan = planCleanup(inv, rule, histories, geometry);
  if (o.keepFrom && plan.remove.length > 0) {
    geometry ??= await probeGeometry(o.store, inv);
    if (!geometry) throw new CleanupError(`cannot tell the segment size (no segment in the archive has a readable header), so what ${o.keepFrom.why} still needs is unknown: not removing anything`);
    const segSize = BigInt(geometry.segSize);
    const keepSeg = o.keepFrom.lsn / segSize;
    const before = plan.remove.length;
    plan.remove = plan.remove.filter((f) => positionFits(f.position!, geometry!.segSize) && positionToSegNo(f.position!, geometry!.segSize) < keepSeg);
    const held = before - plan.remove.length;
    plan.kept += held;
    if (held > 0) plan.warnings.push(`${held} object${held === 1 ? '' : 's'} kept for ${o.keepFrom.why} (WAL from ${lsnText(o.keepFrom.lsn)} on)`);
  }
  for (const w of plan.warnings) log.warn(w);
  let removed = 0;
  const bytes = plan.remove.reduce((n, f) => n + f.info.storedSize, 0);
  if (o.dryRun) {
    for (const f of plan.remove) o.onRemove?.(f);
    return { plan, removed: 0, bytes };
  }
  // Oldest first, a few at a time: whatever stops us leaves the archive without holes above the removed part.
  const width = Math.max(1, o.parallel ?? 4);
  for (let i = 0; i < plan.remove.length; i += width) {
    const batch = plan.remove.slice(i, i + width);
    const results = await Promise.allSettled(batch.map((f) => o.store.delete(f.name)));
    let failed: { name: string; err: Error } | undefined;
    for (let j = 0; j < batch.length; j++) {
      const r = results[j]!;
      if (r.status === 'rejected') {
        failed ??= { name: batch[j]!.name, err: r.reason as Error };
        continue;
      }
      removed++;
      o.onRemove?.(batch[j]!);
    }
    if (failed) {
      throw new CleanupError(`removed ${removed} of ${plan.remove.length} objects, then could not remove ${failed.name}: ${failed.err.message}`);
    }
  }
  return { plan, removed, bytes };
}

/** Backup retention: keep the newest N complete backups and/or those that ended within D days. */
export interface BackupRetention {
  /** Keep the newest this many complete backups (at least 1). */
  backups?: number;
  /** Keep the complete backups that ended less than this many days ago. */
  days?: number;
}

export interface BackupCleanupOptions {
  store: ArchiveStore;
  retain: BackupRetention;
  dryRun: boolean;
  log?: Logger;
  /** The time ages are measured from (default now). */
  now?: Date;
  /**
   * An interrupted backup (objects, no record) is removed once a complete backup that started
   * after it exists and its newest object is older than this (default: the leftover age, 1 hour):
   * by then its writer is gone.
   */
  interruptedAgeMs?: number;
  /** Called for each backup removed (or, in a dry run, that would be), and each of its objects. */
  onRemoveBackup?: (name: string, objects: string[], why: 'retention' | 'interrupted') => void;
  /** Called for each WAL object removed (or that would be). */
  onRemove?: (file: ArchivedFile) => void;
}

export interface BackupCleanupResult {
  /** Backups removed (in a dry run: that would be), oldest first. */
  removed: string[];
  /** Interrupted backups removed. */
  interrupted: string[];
  /** Complete backups kept, oldest first. */
  kept: string[];
  /** The WAL cleanup below the oldest backup kept (undefined when no WAL could go). */
  wal: Omit<CleanupResult, 'leftovers'> | undefined;
  /** The segment before which WAL was removed: the oldest kept backup's first WAL file. */
  walBefore: string | undefined;
}

/**
 * Remove old backups by a retention rule, then the WAL only they needed: each backup's record
 * first (so it stops being usable, and a cut-short run never leaves a usable-looking backup with
 * objects missing), then its objects; then the WAL before the oldest kept backup's first segment,
 * on its timeline and the part of its ancestors before their switch points (history files never).
 * The newest complete backup is always kept. Interrupted backups are removed once their writer is
 * gone (see interruptedAgeMs).
 */
export async function cleanupBackups(o: BackupCleanupOptions): Promise<BackupCleanupResult> {
  const log = o.log ?? silentLogger;
  const { backups, days } = o.retain;
  if (backups === undefined && days === undefined) throw new CleanupError('give a retention: a number of backups, or of days');
  if (backups !== undefined && (!Number.isSafeInteger(backups) || backups < 1)) throw new CleanupError(`invalid number of backups to keep: ${backups} (at least 1)`);
  if (days !== undefined && (!Number.isFinite(days) || days < 0)) throw new CleanupError(`invalid number of days: ${days}`);
  const now = (o.now ?? new Date()).getTime();
  let inventory;
  try {
    inventory = await listBackups(o.store);
  } catch (err) {
    throw new CleanupError(`cannot read the archive's backups, so nothing was removed: ${(err as Error).message}`);
  }
  const { complete, incomplete } = inventory;
  const keep = complete.filter((r, i) => {
    if (i === complete.length - 1) return true;
    if (backups !== undefined && i >= complete.length - backups) return true;
    if (days !== undefined && now - new Date(r.endTime).getTime() < days * 86_400_000) return true;
    return false;
  });
  const drop = complete.filter((r) => !keep.includes(r));
  const removed: string[] = [];
  const removeBackup = async (name: string, objects: string[], why: 'retention' | 'interrupted'): Promise<void> => {
    o.onRemoveBackup?.(name, objects, why);
    if (o.dryRun) return;
    // The record first: from then on the backup is not listed as usable, whatever happens next.
    const rec = recordName(name);
    if (objects.includes(rec)) await o.store.delete(rec);
    for (const obj of objects) if (obj !== rec) await o.store.delete(obj);
  };
  for (const r of drop) {
    const objects = (await o.store.list(`backups/${r.name}.`)).map((x) => x.name).filter((n) => parseBackupObjectName(n)?.backup === r.name);
    await removeBackup(r.name, objects, 'retention');
    removed.push(r.name);
  }
  const interrupted: string[] = [];
  const age = o.interruptedAgeMs ?? DEFAULT_LEFTOVER_AGE_MS;
  for (const inc of incomplete) {
    if (!complete.some((r) => r.name > inc.backup)) continue;
    const infos = (await o.store.list(`backups/${inc.backup}.`)).filter((x) => inc.objects.includes(x.name));
    if (infos.some((x) => now - x.modified.getTime() < age)) continue;
    await removeBackup(inc.backup, inc.objects, 'interrupted');
    interrupted.push(inc.backup);
  }
  // WAL: what the oldest backup kept needs starts at its first segment.
  const oldest = keep[0];
  let wal: Omit<CleanupResult, 'leftovers'> | undefined;
  if (oldest) {
    wal = await cleanupWal({ store: o.store, rule: undefined, dryRun: o.dryRun, ...(o.onRemove ? { onRemove: o.onRemove } : {}) }, { kind: 'before', segment: oldest.startWal }, log);
  }
  return { removed, interrupted, kept: keep.map((r) => r.name), wal, walBefore: oldest?.startWal };
}
