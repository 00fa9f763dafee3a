// A base backup put into an archive the way `walstream backup` stores one (backup/layout.ts):
// pg_basebackup -Ft -X none into a scratch directory, each tar streamed into
// backups/<name>.base.tar / backups/<name>.<oid>.tar, the backup_manifest, then the record last.
// For the restore tests; it relies on the server's archive_command for the WAL, as -X none does.
import { createReadStream, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { backupName, baseTarName, encodeRecord, manifestName, recordName, tablespaceTarName, type BackupObject, type BackupRecord } from '../../src/backup/layout.js';
import { parseManifest } from '../../src/backup/manifest.js';
import { readAll, readTar } from '../../src/backup/tar.js';
import type { ArchiveStore } from '../../src/storage/types.js';
import { formatLsn, parseLsn } from '../../src/wal/lsn.js';
import { harnessTmpRoot, runAsPg } from '../harness/exec.js';
import { type PgCluster, toolBinDir } from '../harness/pg.js';
import { chownSync } from 'node:fs';
import { pgOsUser } from '../harness/exec.js';

function walFileName(tli: number, lsn: bigint, segSize: number): string {
  const seg = lsn / BigInt(segSize);
  const perId = BigInt(0x100000000 / segSize);
  const hex = (n: bigint | number): string => n.toString(16).toUpperCase().padStart(8, '0');
  return `${hex(tli)}${hex(seg / perId)}${hex(seg % perId)}`;
}

/** Take a backup of `cluster` with pg_basebackup and store it in `store` as walstream backup would. */
export async function putBasebackup(cluster: PgCluster, store: ArchiveStore, label = 'walstream test backup'): Promise<BackupRecord> {
  const scratch = mkdtempSync(join(harnessTmpRoot(), 'walstream-bb-'));
  const user = pgOsUser();
  if (user) chownSync(scratch, user.uid, user.gid);
  try {
    const out = join(scratch, 'out');
    await runAsPg(join(toolBinDir(), 'pg_basebackup'), ['-h', cluster.host, '-p', String(cluster.port), '-U', 'postgres', '-D', out, '-Ft', '-X', 'none', '-c', 'fast', '--no-sync', '-l', label], {
      cwd: scratch,
      what: 'pg_basebackup',
      timeoutMs: 180_000,
    });
    const endTime = new Date();
    const [{ sysid, version }] = (await cluster.query<{ sysid: string; version: string }>(
      "select system_identifier::text as sysid, current_setting('server_version_num') as version from pg_control_system()",
    )) as [{ sysid: string; version: string }];
    const manifestBytes = readFileSync(join(out, 'backup_manifest'));
    const manifest = parseManifest(manifestBytes);
    const range = manifest.walRanges.at(-1)!;

    // backup_label: where and when the backup started.
    let label_: string | undefined;
    let tablespaceMap = '';
    async function* file(path: string): AsyncGenerator<Buffer> {
      yield* createReadStream(path) as AsyncIterable<Buffer>;
    }
    for await (const e of readTar(file(join(out, 'base.tar')))) {
      if (e.name === 'backup_label') label_ = (await readAll(e.content)).toString();
      if (e.name === 'tablespace_map') tablespaceMap = (await readAll(e.content)).toString();
    }
    if (!label_) throw new Error('base.tar has no backup_label');
    const startLsn = /^START WAL LOCATION: ([0-9A-F]+\/[0-9A-F]+)/m.exec(label_)![1]!;
    const startTime = new Date(/^START TIME: (.*)$/m.exec(label_)![1]!.replace(' UTC', 'Z').replace(' ', 'T'));
    const timeline = Number(/^START TIMELINE: (\d+)$/m.exec(label_)![1]);
    const locations = new Map<number, string>();
    for (const line of tablespaceMap.split('\n').filter((l) => l !== '')) {
      const sp = line.indexOf(' ');
      locations.set(Number(line.slice(0, sp)), line.slice(sp + 1));
    }

    const name = backupName(startTime);
    const objects: BackupObject[] = [];
    const putTar = async (path: string, objectName: string, kind: 'base' | 'tablespace', oid?: number): Promise<void> => {
      const r = await store.putStream!(objectName, file(path));
      const o: BackupObject = { name: objectName, kind, size: r.info.size, sha256: r.info.checksum!, storedSize: r.info.storedSize, compression: r.info.compression ?? 'none' };
      if (oid !== undefined) {
        o.oid = oid;
        o.location = locations.get(oid)!;
      }
      objects.push(o);
    };
    await putTar(join(out, 'base.tar'), baseTarName(name), 'base');
    for (const f of readdirSync(out)) {
      const m = /^(\d+)\.tar$/.exec(f);
      if (m) await putTar(join(out, f), tablespaceTarName(name, Number(m[1])), 'tablespace', Number(m[1]));
    }
    const mr = await store.put(manifestName(name), manifestBytes);
    objects.push({ name: manifestName(name), kind: 'manifest', size: mr.info.size, sha256: mr.info.checksum!, storedSize: mr.info.storedSize, compression: mr.info.compression ?? 'none' });
    const segSize = cluster.walSegmentSizeBytes;
    const record: BackupRecord = {
      format: 1,
      name,
      label,
      systemId: sysid,
      serverVersion: Number(version),
      walSegmentSize: segSize,
      timeline,
      startLsn: formatLsn(parseLsn(startLsn)),
      endLsn: formatLsn(parseLsn(range.endLsn)),
      startWal: walFileName(timeline, parseLsn(startLsn), segSize),
      endWal: walFileName(range.timeline, parseLsn(range.endLsn), segSize),
      startTime: startTime.toISOString(),
      endTime: endTime.toISOString(),
      walMethod: 'archive',
      size: objects.reduce((s, o) => s + o.size, 0),
      objects,
    };
    await store.put(recordName(name), encodeRecord(record));
    return record;
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
