// Base backups in the archive: their object names and the record that makes one usable. Shared by
// `walstream backup` (which writes them), `walstream restore` (which reads them), `backup list`,
// status and cleanup.
//
// A backup named N (its start time in UTC, YYYYMMDDTHHMMSSZ, with "-2", "-3"... when two start in
// one second) is these objects, next to the WAL under the same storage contract (checksum,
// compression, encryption, never overwritten):
//
//   backups/N.base.tar          the data directory as BASE_BACKUP sends it (tar), streamed
//   backups/N.<oid>.tar         one per tablespace other than pg_default, streamed
//   backups/N.backup_manifest   the server's backup manifest (PostgreSQL 13+), a whole object
//   backups/N.json              the record (BackupRecord), written last
//
// A backup is usable only once its record exists: the record is created after every other object
// is durable and verified, and create-if-absent makes it appear whole or not at all. Objects
// named for a backup that has no record are an interrupted backup (or one in progress): never
// listed as usable, removed by the next backup run or cleanup once their writer is gone.
import { BACKUP_PREFIX, StorageError, type ArchiveStore, type Compression } from '../storage/types.js';

export const RECORD_FORMAT = 1;

/** One stored object of a backup, as the record lists it. */
export interface BackupObject {
  /** Its archive name (backups/N.base.tar ...). */
  name: string;
  kind: 'base' | 'tablespace' | 'manifest';
  /** A tablespace: its OID and the location it had on the server backed up. */
  oid?: number;
  location?: string;
  /** Uncompressed bytes, and their hex SHA-256 (as the archive recorded it). */
  size: number;
  sha256: string;
  /** Bytes stored (compressed, encrypted). */
  storedSize: number;
  compression: Compression;
}

/** The record of a complete backup: backups/N.json. */
export interface BackupRecord {
  format: typeof RECORD_FORMAT;
  name: string;
  label: string;
  /** The database system identifier, as a decimal string. */
  systemId: string;
  /** The server's version number (server_version_num, e.g. 150010). */
  serverVersion: number;
  walSegmentSize: number;
  timeline: number;
  /** The backup's start and end LSN ("0/2000028") and the WAL files holding them. */
  startLsn: string;
  endLsn: string;
  startWal: string;
  endWal: string;
  /** ISO 8601, UTC. */
  startTime: string;
  endTime: string;
  /** How the WAL from startLsn to endLsn reaches the archive: archived by others, or streamed by the backup itself. */
  walMethod: 'archive' | 'stream';
  /** Sum of the objects' uncompressed sizes. */
  size: number;
  objects: BackupObject[];
}

const NAME_RE = /^\d{8}T\d{6}Z(?:-\d{1,3})?$/;
const OBJECT_RE = /^backups\/(\d{8}T\d{6}Z(?:-\d{1,3})?)\.(base\.tar|\d{1,10}\.tar|backup_manifest|json)$/;

export function isBackupName(name: string): boolean {
  return NAME_RE.test(name);
}

/** The backup name for a start at `when`; `attempt` > 1 appends "-attempt" (two backups in one second). */
export function backupName(when: Date, attempt = 1): string {
  const stamp = when.toISOString().slice(0, 19).replace(/[-:]/g, '');
  return `${stamp}Z${attempt > 1 ? `-${attempt}` : ''}`;
}

export function baseTarName(backup: string): string {
  return `${BACKUP_PREFIX}${backup}.base.tar`;
}

export function tablespaceTarName(backup: string, oid: number): string {
  return `${BACKUP_PREFIX}${backup}.${oid}.tar`;
}

export function manifestName(backup: string): string {
  return `${BACKUP_PREFIX}${backup}.backup_manifest`;
}

export function recordName(backup: string): string {
  return `${BACKUP_PREFIX}${backup}.json`;
}

/** The backup an archive name belongs to and which part it is, or undefined for any other name. */
export function parseBackupObjectName(name: string): { backup: string; part: string } | undefined {
  const m = OBJECT_RE.exec(name);
  return m ? { backup: m[1]!, part: m[2]! } : undefined;
}

/** A record as JSON bytes. */
export function encodeRecord(r: BackupRecord): Buffer {
  return Buffer.from(`${JSON.stringify(r, null, 2)}\n`, 'utf8');
}

/** Parse and check a stored record; StorageError naming it when it is not one. */
export function decodeRecord(name: string, data: Buffer): BackupRecord {
  const bad = (why: string): StorageError => new StorageError(`backup record "${name}" is invalid: ${why}`, false);
  let r: unknown;
  try {
    r = JSON.parse(data.toString('utf8'));
  } catch (err) {
    throw bad(`not JSON (${(err as Error).message})`);
  }
  if (typeof r !== 'object' || r === null) throw bad('not an object');
  const o = r as Record<string, unknown>;
  if (o['format'] !== RECORD_FORMAT) throw bad(`format ${JSON.stringify(o['format'])} (this walstream reads format ${RECORD_FORMAT})`);
  for (const k of ['name', 'label', 'systemId', 'startLsn', 'endLsn', 'startWal', 'endWal', 'startTime', 'endTime']) {
    if (typeof o[k] !== 'string') throw bad(`"${k}" is missing`);
  }
  for (const k of ['serverVersion', 'walSegmentSize', 'timeline', 'size']) {
    if (typeof o[k] !== 'number' || !Number.isSafeInteger(o[k])) throw bad(`"${k}" is missing`);
  }
  if (!isBackupName(o['name'] as string)) throw bad(`"${String(o['name'])}" is not a backup name`);
  if (o['walMethod'] !== 'archive' && o['walMethod'] !== 'stream') throw bad('"walMethod" is missing');
  if (!Array.isArray(o['objects']) || o['objects'].length === 0) throw bad('it lists no objects');
  for (const obj of o['objects'] as unknown[]) {
    const b = obj as Record<string, unknown>;
    if (typeof b?.['name'] !== 'string' || parseBackupObjectName(b['name'])?.backup !== o['name']) throw bad('an object is not named for this backup');
    if (typeof b['sha256'] !== 'string' || !/^[0-9a-f]{64}$/.test(b['sha256'])) throw bad(`object "${b['name']}" has no SHA-256`);
    if (typeof b['size'] !== 'number' || typeof b['storedSize'] !== 'number') throw bad(`object "${b['name']}" has no size`);
    if (b['kind'] !== 'base' && b['kind'] !== 'tablespace' && b['kind'] !== 'manifest') throw bad(`object "${b['name']}" has no kind`);
  }
  if (!(o['objects'] as BackupObject[]).some((b) => b.kind === 'base')) throw bad('it lists no base.tar');
  return r as BackupRecord;
}

/** What the archive holds under backups/: complete backups (records, oldest first) and the names of interrupted ones. */
export interface BackupInventory {
  complete: BackupRecord[];
  /** Backups with objects and no record (interrupted, or in progress), with their object names. */
  incomplete: { backup: string; objects: string[] }[];
}

/** Read the backups an archive holds. Records that do not parse are errors: they are never skipped silently. */
export async function listBackups(store: ArchiveStore): Promise<BackupInventory> {
  const objects = new Map<string, string[]>();
  for (const o of await store.list(BACKUP_PREFIX)) {
    const p = parseBackupObjectName(o.name);
    if (!p) continue;
    const l = objects.get(p.backup) ?? [];
    l.push(o.name);
    objects.set(p.backup, l);
  }
  const complete: BackupRecord[] = [];
  const incomplete: BackupInventory['incomplete'] = [];
  for (const [backup, names] of [...objects].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const rec = recordName(backup);
    if (names.includes(rec)) complete.push(decodeRecord(rec, (await store.get(rec)).data));
    else incomplete.push({ backup, objects: names.sort() });
  }
  return { complete, incomplete };
}

/** The record of backup `name` ("latest": the newest complete one); StorageError when there is none. */
export async function findBackup(store: ArchiveStore, name: string): Promise<BackupRecord> {
  if (name !== 'latest' && !isBackupName(name)) throw new StorageError(`"${name}" is not a backup name (YYYYMMDDTHHMMSSZ, or "latest")`, false);
  const { complete, incomplete } = await listBackups(store);
  if (name === 'latest') {
    const last = complete.at(-1);
    if (!last) throw new StorageError(`${store.description} holds no complete backup`, false);
    return last;
  }
  const found = complete.find((r) => r.name === name);
  if (found) return found;
  if (incomplete.some((i) => i.backup === name)) throw new StorageError(`backup "${name}" in ${store.description} is incomplete (interrupted or still running): it cannot be restored`, false);
  throw new StorageError(`backup "${name}" is not in ${store.description}`, false);
}
