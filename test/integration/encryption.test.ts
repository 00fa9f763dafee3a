// Client-side encryption end to end with real PostgreSQL servers: push (--parallel, gzip) as the
// archive_command with a key file, a key rotation while archiving, point-in-time recovery through
// fetch (--prefetch) from the encrypted archive, verify with and without the key, and fetch
// refusing what it cannot authenticate (a changed byte, objects swapped under each other's names,
// a missing or wrong key) with the exit status that stops a recovery rather than ending it early.
// Also receive --archive: its uploads and the pieces of the segment in progress are encrypted.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, chownSync, cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../harness/pg.js';
import { pgOsUser } from '../harness/exec.js';
import { runCli, startCli } from '../support/cli.js';
import { pgOwnedDir, walstreamCommand } from '../support/pgcommand.js';
import { waitArchived } from '../support/standby.js';
import { SEG_RE } from '../support/walfiles.js';
import { SEALED_MAGIC, sealedHeader } from '../../src/storage/encryption.js';
import { LocalStore, META_DIR } from '../../src/storage/local.js';
import { listPieces } from '../../src/archive/partial.js';

const OLD_KEY = randomBytes(32);
const NEW_KEY = randomBytes(32);

/** Write a key file the PostgreSQL OS user owns, mode 0600. */
function writeKeyFile(path: string, text: string, mode = 0o600): void {
  writeFileSync(path, text, { mode });
  chmodSync(path, mode);
  const user = pgOsUser();
  if (user) chownSync(path, user.uid, user.gid);
}

/** The stored file of a segment in a local archive (X or X.gz). */
function storedFile(archive: string, name: string): string {
  const f = readdirSync(archive).find((e) => e === name || e === `${name}.gz` || e === `${name}.zst`);
  if (!f) throw new Error(`${name} is not in ${archive}`);
  return join(archive, f);
}

function keyIdOf(archive: string, name: string): string {
  return sealedHeader(name, readFileSync(storedFile(archive, name))).keyId;
}

describe('an encrypted archive with real servers', () => {
  let primary: PgCluster;
  let restored: PgCluster | undefined;
  let archive: string;
  let keys: string;
  let keyFile: string;
  const dirs: string[] = [];

  beforeAll(async () => {
    archive = pgOwnedDir('enc-archive');
    keys = pgOwnedDir('enc-keys');
    chmodSync(keys, 0o700);
    dirs.push(archive, keys);
    keyFile = join(keys, 'walstream.keys');
    writeKeyFile(keyFile, `# walstream archive keys\nk2025=${OLD_KEY.toString('base64')}\n`);
    primary = await PgCluster.create({
      name: 'enc',
      conf: {
        archive_mode: 'on',
        archive_command: walstreamCommand(['push', '%p', '--archive', archive, '--encryption-key-file', keyFile, '-Z', 'gzip', '--parallel', '2']),
      },
    });
  });
  afterAll(async () => {
    await restored?.destroy();
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('archives encrypted, rotates keys, and recovers a base backup to a target LSN through fetch', async () => {
    await primary.query('create table secret (id int primary key, note text)');
    restored = await primary.createStandby({ name: 'enc-restored', start: false });
    await primary.query("insert into secret select g, 'plaintext-marker-' || g from generate_series(1, 50) g");
    await primary.generateWal(2 * 1024 * 1024);
    const beforeRotation = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
    await primary.switchWal();
    await waitArchived(primary, beforeRotation, 60_000);
    // Rotation: the new key first, the old one kept for what it encrypted.
    writeKeyFile(keyFile, `k2026=${NEW_KEY.toString('hex')}\nk2025=${OLD_KEY.toString('base64')}\n`);
    await primary.query("insert into secret select g, 'plaintext-marker-' || g from generate_series(51, 100) g");
    await primary.generateWal(2 * 1024 * 1024);
    const [{ target }] = (await primary.query<{ target: string }>('select pg_current_wal_lsn()::text as target')) as [{ target: string }];
    await primary.query('insert into secret select g, null from generate_series(101, 200) g');
    const last = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
    await primary.switchWal();
    await waitArchived(primary, last, 60_000);
    const [stats] = await primary.query<{ failed: string }>('select failed_count::text as failed from pg_stat_archiver');
    expect(stats!.failed).toBe('0');

    // Every archived object is sealed; no WAL page is readable in the archive.
    const segments = readdirSync(archive).filter((f) => !f.startsWith('.') && f !== META_DIR);
    expect(segments.length).toBeGreaterThanOrEqual(5);
    for (const f of segments) {
      const bytes = readFileSync(join(archive, f));
      expect(bytes.subarray(0, 8).equals(SEALED_MAGIC), f).toBe(true);
      expect(bytes.includes('plaintext-marker-'), f).toBe(false);
    }
    const ids = new Set(
      readdirSync(archive)
        .filter((f) => SEG_RE.test(f.replace(/\.gz$/, '')))
        .map((f) => keyIdOf(archive, f.replace(/\.gz$/, ''))),
    );
    expect([...ids].sort()).toEqual(['k2025', 'k2026']);
    expect(keyIdOf(archive, last)).toBe('k2026');

    // Point-in-time recovery from the encrypted archive, with the prefetch worker.
    unlinkSync(join(restored.dataDir, 'standby.signal'));
    writeFileSync(join(restored.dataDir, 'recovery.signal'), '');
    restored.configure({
      primary_conninfo: '',
      restore_command: walstreamCommand(['fetch', '%f', '%p', '--archive', archive, '--encryption-key-file', keyFile, '--prefetch', '4']),
      recovery_target_lsn: target,
      recovery_target_action: 'promote',
    });
    await restored.start();
    await restored.waitFor(async () => !(await restored!.isInRecovery()), 120_000, 'the end of recovery');
    const [{ n, max }] = (await restored.query<{ n: string; max: number }>('select count(*)::text as n, max(id) as max from secret')) as [{ n: string; max: number }];
    expect(n).toBe('100');
    expect(max).toBe(100);
    expect(readFileSync(restored.logFile, 'utf8')).toMatch(/restored log file "[0-9A-F]{24}" from archive/);
  });

  it('verify authenticates with the key; without it, says it cannot verify rather than calling objects bad', async () => {
    const ok = await runCli(['verify', '--archive', archive, '--encryption-key-file', keyFile]);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/encrypted objects authenticated/);
    const without = await runCli(['verify', '--archive', archive, '--json']);
    expect(without.code).toBe(1);
    const report = JSON.parse(without.stdout) as { problems: { kind: string; message: string }[]; checked: { encryptedWithoutKey: number } };
    expect(report.problems.map((p) => p.kind)).toEqual(['unverified']);
    expect(report.problems[0]!.message).toMatch(/cannot verify \d+ encrypted objects: keys "k2025", "k2026" not given/);
    expect(report.checked.encryptedWithoutKey).toBeGreaterThanOrEqual(5);
    // status lists without a key.
    const status = await runCli(['status', '--archive', archive]);
    expect(status.code, status.stderr).toBe(0);
  });

  it('fetch refuses what it cannot authenticate: exit 126 in archive recovery (1 in a standby), naming the object', async () => {
    const copy = mkdtempSync(join(tmpdir(), 'walstream-enc-copy-'));
    const cwd = mkdtempSync(join(tmpdir(), 'walstream-enc-datadir-'));
    dirs.push(copy, cwd);
    cpSync(archive, copy, { recursive: true });
    const names = readdirSync(copy)
      .filter((f) => SEG_RE.test(f.replace(/\.gz$/, '')))
      .map((f) => f.replace(/\.gz$/, ''))
      .sort();
    const [a, b, c] = [names[1]!, names[2]!, names[3]!];
    const dest = join(cwd, 'RECOVERYXLOG');
    const fetch = (name: string, extra: string[] = [], env: Record<string, string> = {}): ReturnType<typeof runCli> => runCli(['fetch', name, dest, '--archive', copy, ...extra], { cwd, env });
    const withKey = ['--encryption-key-file', keyFile];

    // Intact: served.
    expect((await fetch(c, withKey)).code).toBe(0);
    unlinkSync(dest);

    // A changed byte.
    const fa = storedFile(copy, a);
    const bytes = readFileSync(fa);
    bytes[Math.floor(bytes.length / 2)] ^= 0x01;
    writeFileSync(fa, bytes);
    const tampered = await fetch(a, withKey);
    expect(tampered.code).toBe(126);
    expect(tampered.stderr).toContain(a);
    expect(tampered.stderr).toMatch(/corrupt: it fails authentication/);
    expect(existsSync(dest)).toBe(false);

    // Two objects swapped under each other's names, checksum records and all.
    const [fb, fc] = [storedFile(copy, b), storedFile(copy, c)];
    const [rb, rc] = [join(copy, META_DIR, `${b}.sha256`), join(copy, META_DIR, `${c}.sha256`)];
    for (const [x, y] of [
      [fb, fc],
      [rb, rc],
    ] as const) {
      const bx = readFileSync(x);
      writeFileSync(x, readFileSync(y));
      writeFileSync(y, bx);
    }
    const swapped = await fetch(b, withKey);
    expect(swapped.code).toBe(126);
    expect(swapped.stderr).toContain(b);
    expect(swapped.stderr).toMatch(/fails authentication/);

    // No key, another key, a key file others can read: never served, never "not found".
    const intact = names[names.length - 1]!;
    const none = await fetch(intact);
    expect(none.code).toBe(126);
    expect(none.stderr).toContain(intact);
    expect(none.stderr).toMatch(/encrypted with key "k2026" and no encryption key was given/);
    const otherKeys = join(keys, 'other.keys');
    writeKeyFile(otherKeys, `k2027=${randomBytes(32).toString('base64')}\n`);
    const other = await fetch(intact, ['--encryption-key-file', otherKeys]);
    expect(other.code).toBe(126);
    expect(other.stderr).toMatch(new RegExp(`"${intact}" is encrypted with key "k2026", which is not among the keys given \\("k2027"\\)`));
    const viaVariable = await fetch(intact, [], { WALSTREAM_ENCRYPTION_KEY: `k2026=${NEW_KEY.toString('base64')}` });
    expect(viaVariable.code, viaVariable.stderr).toBe(0);
    unlinkSync(dest);
    const loose = join(keys, 'loose.keys');
    writeKeyFile(loose, `k2026=${NEW_KEY.toString('base64')}\n`, 0o640);
    const refused = await fetch(intact, ['--encryption-key-file', loose]);
    expect(refused.code).toBe(126);
    expect(refused.stderr.trim()).toBe(`walstream: error: encryption key file ${loose} is accessible by group or others (mode 0640); use chmod 600`);
    for (const r of [tampered, swapped, none, other, refused]) {
      expect(r.stderr).not.toContain(NEW_KEY.toString('base64'));
      expect(r.stderr).not.toContain(NEW_KEY.toString('hex'));
    }

    // Plain WAL slipped in under an encrypted object's name (with a matching checksum record):
    // refused even without --encryption-required, since the archive's identity record (written
    // by a push with a key) says its objects are encrypted; the flag refuses it in its own words.
    const planted = names[names.length - 2]!;
    expect((await fetch(planted, withKey)).code).toBe(0);
    const plainCopy = readFileSync(dest);
    unlinkSync(dest);
    unlinkSync(storedFile(copy, planted));
    writeFileSync(join(copy, planted), plainCopy);
    writeFileSync(join(copy, META_DIR, `${planted}.sha256`), `${createHash('sha256').update(plainCopy).digest('hex')} none ${plainCopy.length}\n`);
    const marked = await fetch(planted, withKey);
    expect(marked.code).toBe(126);
    expect(marked.stderr).toContain(planted);
    expect(marked.stderr).toMatch(/not encrypted, and the archive's identity record \(walstream\.json\) says its objects are encrypted/);
    expect(existsSync(dest)).toBe(false);
    const strict = await fetch(planted, [...withKey, '--encryption-required']);
    expect(strict.code).toBe(126);
    expect(strict.stderr).toContain(planted);
    expect(strict.stderr).toMatch(/not encrypted, and only encrypted objects are accepted/);
    expect(existsSync(dest)).toBe(false);
    const strictVerify = await runCli(['verify', '--archive', copy, ...withKey, '--encryption-required', '--json']);
    expect(strictVerify.code).toBe(1);
    expect((JSON.parse(strictVerify.stdout) as { problems: { object: string }[] }).problems.map((p) => p.object)).toContain(planted);

    // In a standby, "not available" is harmless: exit 1, it streams instead.
    writeFileSync(join(cwd, 'standby.signal'), '');
    expect((await fetch(a, withKey)).code).toBe(1);
    expect((await fetch(intact)).code).toBe(1);
    expect(existsSync(dest)).toBe(false);
  });

  it('push: an identical re-push of an encrypted segment is success; a key file others can read is refused', async () => {
    const scratch = mkdtempSync(join(tmpdir(), 'walstream-enc-push-'));
    dirs.push(scratch);
    const name = readdirSync(archive)
      .map((f) => f.replace(/\.gz$/, ''))
      .filter((f) => SEG_RE.test(f))
      .sort()[0]!;
    const got = await runCli(['fetch', name, join(scratch, name), '--archive', archive, '--encryption-key-file', keyFile], { cwd: scratch });
    expect(got.code, got.stderr).toBe(0);
    const again = await runCli(['push', join(scratch, name), '--archive', archive, '--encryption-key-file', keyFile, '-Z', 'gzip', '-v'], { cwd: scratch });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/already archived with identical contents/);
    const loose = join(keys, 'loose2.keys');
    writeKeyFile(loose, `k2026=${NEW_KEY.toString('base64')}\n`, 0o644);
    const refused = await runCli(['push', join(scratch, name), '--archive', archive, '--encryption-key-file', loose], { cwd: scratch });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/accessible by group or others \(mode 0644\)/);
  });
});

describe('receive --archive with an encryption key', () => {
  let primary: PgCluster;
  let dir: string;
  let spool: string;
  afterAll(async () => {
    await primary?.destroy();
    for (const d of [dir, spool]) if (d) rmSync(d, { recursive: true, force: true });
  });

  it('uploads and pieces of the segment in progress are encrypted; fetch --partial reads them back', async () => {
    dir = mkdtempSync(join(tmpdir(), 'walstream-enc-recv-'));
    spool = mkdtempSync(join(tmpdir(), 'walstream-enc-spool-'));
    chmodSync(spool, 0o700);
    const archive = join(dir, 'archive');
    const keyFile = join(dir, 'keys');
    writeFileSync(keyFile, `r1=${OLD_KEY.toString('hex')}\n`, { mode: 0o600 });
    primary = await PgCluster.create({ name: 'enc-recv' });
    await primary.query("select pg_create_physical_replication_slot('encrecv', true)");
    const receiver = startCli(['receive', '-D', spool, '--archive', archive, '--encryption-key-file', keyFile, '-d', primary.connectionString(), '-S', 'encrecv', '--partial-interval', '1', '--synchronous']);
    let current = '';
    try {
      await primary.waitFor(
        async () => (await primary.query<{ n: string }>("select count(*)::text as n from pg_stat_replication where application_name = 'walstream'"))[0]!.n === '1',
        30_000,
        'the receiver to stream',
      );
      await primary.generateWal(3 * 1024 * 1024);
      await primary.switchWal();
      // Stop in the middle of a segment: its received part is shipped as pieces.
      await primary.query('create table t (x int); insert into t select generate_series(1, 1000)');
      current = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
      const store = new LocalStore(archive);
      await primary.waitFor(async () => (await listPieces(store, current)).length > 0, 60_000, `pieces of ${current}`);
    } finally {
      receiver.child.kill('SIGTERM');
      await receiver.done;
    }
    const stored = readdirSync(archive).filter((f) => !f.startsWith('.'));
    expect(stored.filter((f) => SEG_RE.test(f)).length).toBeGreaterThanOrEqual(2);
    expect(stored.filter((f) => /\.partial\.[0-9A-F]{8}$/.test(f)).length).toBeGreaterThanOrEqual(1);
    for (const f of stored) expect(readFileSync(join(archive, f)).subarray(0, 8).equals(SEALED_MAGIC), f).toBe(true);
    const cwd = mkdtempSync(join(dir, 'datadir-'));
    const partial = await runCli(['fetch', current, join(cwd, 'RECOVERYXLOG'), '--archive', archive, '--encryption-key-file', keyFile, '--partial'], { cwd });
    expect(partial.code, partial.stderr).toBe(0);
    expect(readFileSync(join(cwd, 'RECOVERYXLOG')).length).toBe(primary.walSegmentSizeMB * 1024 * 1024);
    // Without the key the same request stops the recovery rather than ending it.
    unlinkSync(join(cwd, 'RECOVERYXLOG'));
    const locked = await runCli(['fetch', current, join(cwd, 'RECOVERYXLOG'), '--archive', archive, '--partial'], { cwd });
    expect(locked.code).toBe(126);
    expect(locked.stderr).toMatch(/encrypted with key "r1"/);
    // A key without an archive: refused, the -D directory is never encrypted.
    const plainDir = await runCli(['receive', '-D', spool, '--encryption-key-file', keyFile, '-d', primary.connectionString(), '-n']);
    expect(plainDir.code).toBe(1);
    expect(plainDir.stderr).toMatch(/applies to the archive only/);
  });
});
