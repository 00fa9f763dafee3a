// walstream restore: a new data directory from a base backup in the archive (backup/restore.ts),
// with a restore_command that reads the same archive with the same options. Settings that come
// from the environment (S3 and Azure credentials, AWS_REGION, WALSTREAM_ENCRYPTION_KEY) are never
// written into the data directory: the output says which ones PostgreSQL's environment must have.
import { resolve } from 'node:path';
import { restoreBackup, type RestoreOptions, type RestoreResult } from '../backup/restore.js';
import { parseArchiveUrl } from '../storage/open.js';
import type { ArchiveStore } from '../storage/types.js';

/**
 * The library's options (backup/restore.ts) but for the store and restore_command, which the
 * command makes itself: the store from openStore, restore_command from the archive's options.
 */
export interface RestoreCommandOptions extends Omit<RestoreOptions, 'store' | 'restoreCommand'> {
  /** The archive as given (--archive). */
  archive: string;
  s3Endpoint?: string;
  encryptionKeyFile?: string;
  encryptionRequired?: boolean;
  /** Whether a key came from WALSTREAM_ENCRYPTION_KEY (PostgreSQL's environment must then have it too). */
  keyFromEnvironment: boolean;
  openStore: () => Promise<ArchiveStore>;
  /** More arguments for walstream fetch in restore_command (e.g. --prefetch 8). */
  fetchOptions?: readonly string[];
  /** How restore_command runs walstream: node and the bin script, absolute. */
  program: readonly string[];
  /** Where the summary goes (standard output). */
  out: (line: string) => void;
}

/** The archive as restore_command must name it: a local path made absolute (the server runs it in the data directory). */
export function archiveForServer(archive: string): string {
  const loc = parseArchiveUrl(archive);
  return loc.kind === 'local' ? resolve(loc.path) : archive;
}

/** The arguments after "fetch %f %p", and what PostgreSQL's environment must provide. */
export function fetchArguments(o: Pick<RestoreCommandOptions, 'archive' | 's3Endpoint' | 'encryptionKeyFile' | 'encryptionRequired' | 'keyFromEnvironment' | 'fetchOptions'>): {
  args: string[];
  environment: string[];
} {
  const args = ['--archive', archiveForServer(o.archive)];
  const environment: string[] = [];
  const kind = parseArchiveUrl(o.archive).kind;
  if (kind === 's3') {
    if (o.s3Endpoint) args.push('--s3-endpoint', o.s3Endpoint);
    environment.push('S3 credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or an instance role) and AWS_REGION if not us-east-1');
  }
  if (kind === 'azure') environment.push('Azure credentials (AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or a managed identity)');
  if (o.encryptionKeyFile) args.push('--encryption-key-file', resolve(o.encryptionKeyFile));
  else if (o.keyFromEnvironment) environment.push('WALSTREAM_ENCRYPTION_KEY (the archive key)');
  if (o.encryptionRequired) args.push('--encryption-required');
  for (const a of o.fetchOptions ?? []) {
    if (a.includes('%')) throw new Error(`--fetch-options: "${a}" contains %, which PostgreSQL would substitute`);
    if (/^--(?:archive|s3-endpoint|encryption-key-file)(?:=|$)/.test(a)) throw new Error(`--fetch-options: ${a} is set by restore itself`);
    args.push(a);
  }
  return { args, environment };
}

function describeTarget(o: RestoreCommandOptions): string {
  if (o.standby) return `as a standby${o.primaryConninfo ? ' streaming from its primary once the archive runs out' : ' replaying the archive (no primary_conninfo given)'}`;
  const t = o.target;
  const action = o.targetAction ?? 'pause';
  if (!t) return 'to the end of the archived WAL, then promoted';
  const what = t.kind === 'time' ? `time ${t.value}` : t.kind === 'lsn' ? `LSN ${t.value}` : `restore point "${t.value}"`;
  return `to ${what}, then ${action === 'pause' ? 'paused (recovery_target_action = pause)' : action === 'promote' ? 'promoted' : 'shut down'}`;
}

export async function restore(o: RestoreCommandOptions): Promise<RestoreResult> {
  const { args, environment } = fetchArguments(o);
  const store = await o.openStore();
  const {
    archive: _archive,
    s3Endpoint: _endpoint,
    encryptionKeyFile: _keyFile,
    encryptionRequired: _required,
    keyFromEnvironment: _fromEnv,
    openStore: _open,
    fetchOptions: _fetch,
    program,
    out: _out,
    ...library
  } = o;
  const result = await restoreBackup({ ...library, store, restoreCommand: { program, fetchArgs: args } });
  const r = result.backup;
  o.out(
    `restored backup ${r.name} (PostgreSQL ${Math.floor(r.serverVersion / 10000)}.${r.serverVersion % 10000}, ${r.startLsn} to ${r.endLsn} on timeline ${r.timeline}): ${result.files} files, ${result.bytes} bytes into ${result.directory}, verified against its manifest`,
  );
  for (const t of result.tablespaces) o.out(`tablespace ${t.oid}: ${t.location}`);
  o.out(`recovery: ${describeTarget(o)}; ${result.signal} and restore_command written (postgresql.auto.conf)`);
  for (const e of environment) o.out(`note: restore_command runs in PostgreSQL's environment, which must provide ${e}`);
  // PostgreSQL refuses a data directory its OS user does not own.
  if (process.getuid?.() === 0) o.out(`note: the files are root's: chown -R the data directory${result.tablespaces.length ? ' and the tablespace directories' : ''} to the server's OS user before starting it`);
  o.out(`next: pg_ctl -D ${result.directory} start`);
  return result;
}
