// An archive that remembers it is encrypted (archive/identity.ts), on a local directory and on S3
// (s3rver), with the real CLI and WAL segments of a real server: push and receive --archive
// without the key are refused before writing anything; fetch (also its prefetch worker) and
// verify with a key refuse a plain object planted there without --encryption-required; an
// identity record without the field keeps an archive unencrypted until a writer with the key and
// --encryption-required records it (with the marker walstream.encrypted); a first writer with a key
// in an archive already holding plain WAL does not record it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../harness/pg.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { runCli, type CliResult } from '../support/cli.js';
import { SEG_RE } from '../support/walfiles.js';
import { Keyring } from '../../src/storage/encryption.js';
import { LocalStore } from '../../src/storage/local.js';
import { S3Store } from '../../src/storage/s3.js';
import { ENCRYPTED_MARKER_NAME, IDENTITY_NAME, KeyUnavailableError, type ArchiveStore } from '../../src/storage/types.js';
import { readIdentity } from '../../src/archive/identity.js';

const KEY = randomBytes(32);
const KEYRING = new Keyring([{ id: 'id1', key: KEY }], 'test');
const REFUSAL =
  /^walstream: error: the archive \S+ is encrypted \(its identity record walstream\.json says so\) and no encryption key was given: writing to it needs its key \(--encryption-key-file or WALSTREAM_ENCRYPTION_KEY\); nothing was written$/;
const PLANTED = /is corrupt: it is not encrypted, and the archive's identity record \(walstream\.json\) says its objects are encrypted/;
const HISTORY = '00000002.history';

interface Backend {
  name: string;
  url(tag: string): string;
  /** Arguments every command needs besides --archive. */
  args: string[];
  env: Record<string, string | undefined>;
  /** The archive opened in the test process, without a key unless given one. */
  store(tag: string, keyring?: Keyring): ArchiveStore;
}

const root = mkdtempSync(join(tmpdir(), 'walstream-encid-'));
let s3: S3TestServer | undefined;
let primary: PgCluster;
/** Consecutive finished segments of the primary, copied to walDir. */
let segs: string[] = [];
const walDir = join(root, 'wal');
const keyFile = join(root, 'keys', 'archive.keys');
const withKey = ['--encryption-key-file', keyFile];
const stores: ArchiveStore[] = [];

const backends: Backend[] = [
  {
    name: 'a local directory',
    url: (tag) => join(root, 'archives', tag),
    args: [],
    env: {},
    store: (tag, keyring) => {
      const st = new LocalStore(join(root, 'archives', tag), keyring ? { keyring } : {});
      stores.push(st);
      return st;
    },
  },
  {
    name: 'S3',
    url: (tag) => `s3://${s3!.bucket}/${s3!.prefix}${tag}/`,
    get args() {
      return ['--s3-endpoint', s3!.endpoint];
    },
    get env() {
      return { AWS_ACCESS_KEY_ID: s3!.accessKeyId, AWS_SECRET_ACCESS_KEY: s3!.secretAccessKey, AWS_REGION: s3!.region };
    },
    store: (tag, keyring) => {
      const st = new S3Store({ bucket: s3!.bucket, prefix: `${s3!.prefix}${tag}/`, endpoint: s3!.endpoint, region: s3!.region, credentials: s3!.credentials, ...(keyring ? { keyring } : {}) });
      stores.push(st);
      return st;
    },
  },
];

beforeAll(async () => {
  mkdirSync(join(root, 'keys'), { mode: 0o700 });
  writeFileSync(keyFile, `id1=${KEY.toString('base64')}\n`, { mode: 0o600 });
  mkdirSync(walDir);
  mkdirSync(join(root, 'archives'));
  [s3, primary] = await Promise.all([startS3({ builtIn: true }), PgCluster.create({ name: 'encid' })]);
  for (let i = 0; i < 6; i++) {
    await primary.generateWal(200 * 1024);
    await primary.switchWal();
  }
  const current = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
  segs = readdirSync(primary.walDir)
    .filter((f) => SEG_RE.test(f) && f < current)
    .sort()
    .slice(-5);
  expect(segs.length).toBe(5);
  for (const s of segs) copyFileSync(join(primary.walDir, s), join(walDir, s));
  writeFileSync(join(walDir, HISTORY), '1\t0/3000000\tno recovery target specified\n');
});

afterAll(async () => {
  for (const st of stores) await st.close().catch(() => undefined);
  await primary?.destroy();
  await s3?.stop();
  rmSync(root, { recursive: true, force: true });
});

function oneLine(r: CliResult): string {
  const lines = r.stderr.trim().split('\n');
  expect(lines.length, r.stderr).toBe(1);
  return lines[0]!;
}

describe.each(backends)('an encrypted archive on $name', (b) => {
  const keyless = (): Record<string, string | undefined> => ({ ...b.env, WALSTREAM_ENCRYPTION_KEY: undefined, WALSTREAM_ENCRYPTION_KEY_FILE: undefined });
  const push = (tag: string, file: string, extra: string[] = []): Promise<CliResult> => runCli(['push', join(walDir, file), '--archive', b.url(tag), ...b.args, ...extra], { env: keyless(), cwd: root });
  const fetch = (tag: string, name: string, cwd: string, extra: string[] = []): Promise<CliResult> =>
    runCli(['fetch', name, join(cwd, 'RECOVERYXLOG'), '--archive', b.url(tag), ...b.args, ...extra], { env: keyless(), cwd });
  const names = async (st: ArchiveStore): Promise<string[]> => [...(await st.list()).map((o) => o.name), ...(await st.list('quarantine/')).map((o) => o.name)].sort();

  it('push and receive --archive without the key are refused, before anything is written', async () => {
    const tag = `refuse-${b.name === 'S3' ? 's3' : 'local'}`;
    const first = await push(tag, segs[0]!, withKey);
    expect(first.code, first.stderr).toBe(0);
    // The first writer had a key: the identity record says so (and is itself encrypted).
    expect(await readIdentity(b.store(tag, KEYRING))).toMatchObject({ encryption: 'aes-256-gcm', segmentSize: primary.walSegmentSizeMB * 1024 * 1024 });
    await expect(readIdentity(b.store(tag))).rejects.toThrow(KeyUnavailableError);
    const plain = b.store(tag);
    const before = await names(plain);
    expect(before).toEqual([segs[0]]);

    // push: a segment, a history file, and with --parallel: exit 1 (PostgreSQL retries), one line.
    for (const [file, extra] of [
      [segs[1]!, []],
      [HISTORY, []],
      [segs[2]!, ['--parallel', '2']],
    ] as const) {
      const refused = await push(tag, file, [...extra]);
      expect(refused.code, refused.stderr).toBe(1);
      expect(oneLine(refused)).toMatch(REFUSAL);
    }
    // --encryption-required without a key is refused too (it needs a key).
    const strictNoKey = await push(tag, segs[1]!, ['--encryption-required']);
    expect(strictNoKey.code).toBe(1);
    expect(oneLine(strictNoKey)).toMatch(/--encryption-required needs an encryption key/);

    // receive --archive without the key: exit 1 at start; a file left in its spool is not uploaded.
    const spool = join(root, `spool-${tag}`);
    mkdirSync(spool, { mode: 0o700 });
    copyFileSync(join(walDir, segs[3]!), join(spool, segs[3]!));
    const recv = await runCli(['receive', '-D', spool, '--archive', b.url(tag), ...b.args, '-d', primary.connectionString(), '-n'], { env: keyless(), timeoutMs: 60_000 });
    expect(recv.code, recv.stderr).toBe(1);
    expect(oneLine(recv)).toMatch(REFUSAL);
    expect(existsSync(join(spool, segs[3]!))).toBe(true);

    expect(await names(plain)).toEqual(before);

    // With the key (here from the variable), the same push goes through, encrypted.
    const viaVariable = await runCli(['push', join(walDir, segs[1]!), '--archive', b.url(tag), ...b.args], { env: { ...b.env, WALSTREAM_ENCRYPTION_KEY: `id1=${KEY.toString('hex')}` }, cwd: root });
    expect(viaVariable.code, viaVariable.stderr).toBe(0);
    await expect(plain.get(segs[1]!)).rejects.toThrow(KeyUnavailableError);
  });

  it('fetch and verify with the key refuse a plain object planted there, without --encryption-required', async () => {
    const tag = `refuse-${b.name === 'S3' ? 's3' : 'local'}`;
    // Plain WAL slipped in under the names of the next segments, by someone without the key.
    const plain = b.store(tag);
    for (const s of [segs[2]!, segs[3]!]) expect((await plain.put(s, readFileSync(join(walDir, s)))).status).toBe('created');

    const cwd = mkdtempSync(join(root, 'datadir-'));
    const served = await fetch(tag, segs[0]!, cwd, withKey);
    expect(served.code, served.stderr).toBe(0);
    expect(readFileSync(join(cwd, 'RECOVERYXLOG')).equals(readFileSync(join(walDir, segs[0]!)))).toBe(true);
    rmSync(join(cwd, 'RECOVERYXLOG'));

    // Archive or point-in-time recovery: 126 stops it rather than ending it early; nothing written.
    const refused = await fetch(tag, segs[2]!, cwd, withKey);
    expect(refused.code, refused.stderr).toBe(126);
    expect(oneLine(refused)).toContain(segs[2]!);
    expect(refused.stderr).toMatch(PLANTED);
    expect(existsSync(join(cwd, 'RECOVERYXLOG'))).toBe(false);
    // A standby: 1, it streams instead.
    writeFileSync(join(cwd, 'standby.signal'), '');
    expect((await fetch(tag, segs[2]!, cwd, withKey)).code).toBe(1);
    expect(existsSync(join(cwd, 'RECOVERYXLOG'))).toBe(false);

    // The prefetch worker refuses it too: it never reaches the spool, and fetch then refuses it.
    const cwd2 = mkdtempSync(join(root, 'datadir-'));
    const spool = join(cwd2, 'prefetch');
    const first = await fetch(tag, segs[1]!, cwd2, [...withKey, '--prefetch', '2', '--spool', spool]);
    expect(first.code, first.stderr).toBe(0);
    const log = join(spool, 'prefetch.log');
    const deadline = Date.now() + 30_000;
    while (!(existsSync(log) && readFileSync(log, 'utf8').includes(`could not prefetch ${segs[2]}`))) {
      if (Date.now() > deadline) throw new Error(`the prefetch worker did not try ${segs[2]}: ${existsSync(log) ? readFileSync(log, 'utf8') : 'no log'}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(readFileSync(log, 'utf8')).toMatch(PLANTED);
    expect(existsSync(join(spool, segs[2]!))).toBe(false);
    rmSync(join(cwd2, 'RECOVERYXLOG'));
    const afterPrefetch = await fetch(tag, segs[2]!, cwd2, [...withKey, '--prefetch', '2', '--spool', spool]);
    expect(afterPrefetch.code, afterPrefetch.stderr).toBe(126);
    expect(afterPrefetch.stderr).toMatch(PLANTED);

    // verify names both planted objects as corrupt.
    const verify = await runCli(['verify', '--archive', b.url(tag), ...b.args, ...withKey, '--json'], { env: keyless() });
    expect(verify.code).toBe(1);
    const report = JSON.parse(verify.stdout) as { problems: { object: string; kind: string; message: string }[] };
    const planted = report.problems.filter((p) => p.message.match(PLANTED));
    expect(planted.map((p) => `${p.object} ${p.kind}`).sort()).toEqual([`${segs[2]} checksum`, `${segs[3]} checksum`]);
  });

  it('an identity record without the field keeps the archive unencrypted until a writer with the key and --encryption-required records it', async () => {
    const tag = `older-${b.name === 'S3' ? 's3' : 'local'}`;
    const plain = b.store(tag);
    // The record as walstream wrote it before the field existed, and as a writer without a key still does.
    expect((await push(tag, segs[0]!)).code).toBe(0);
    const sysid = (await readIdentity(plain))!.systemIdentifier;
    expect((await plain.get(IDENTITY_NAME)).data.toString()).toBe(`{"format":1,"systemIdentifier":"${sysid}","segmentSize":${primary.walSegmentSizeMB * 1024 * 1024}}\n`);

    // Plain and encrypted writers side by side, as before: nothing is recorded.
    expect((await push(tag, segs[1]!)).code).toBe(0);
    expect((await push(tag, segs[2]!, withKey)).code).toBe(0);
    expect((await push(tag, HISTORY)).code).toBe(0);
    expect((await plain.get(IDENTITY_NAME)).info.keyId).toBeUndefined();
    expect(await readIdentity(plain)).toEqual({ systemIdentifier: sysid, segmentSize: primary.walSegmentSizeMB * 1024 * 1024 });
    const cwd = mkdtempSync(join(root, 'datadir-'));
    for (const [name, extra] of [
      [segs[1]!, []],
      [segs[1]!, withKey],
      [segs[2]!, withKey],
    ] as const) {
      const got = await fetch(tag, name, cwd, [...extra]);
      expect(got.code, got.stderr).toBe(0);
      rmSync(join(cwd, 'RECOVERYXLOG'));
    }
    const status = await runCli(['status', '--archive', b.url(tag), ...b.args, ...withKey], { env: keyless() });
    expect(status.code, status.stderr).toBe(0);

    // A writer with the key and --encryption-required records it: with the marker walstream.encrypted;
    // the record itself is never rewritten (an archive without its record could be claimed by another system).
    const recordBefore = (await plain.get(IDENTITY_NAME)).data;
    const strict = await push(tag, segs[3]!, [...withKey, '--encryption-required']);
    expect(strict.code, strict.stderr).toBe(0);
    expect((await plain.get(IDENTITY_NAME)).data.equals(recordBefore)).toBe(true);
    expect(await plain.head(ENCRYPTED_MARKER_NAME)).toBeDefined();
    expect(await plain.list('quarantine/')).toEqual([]);
    // From then on: writers without the key are refused...
    for (const file of [segs[4]!, HISTORY]) {
      const refused = await push(tag, file);
      expect(refused.code).toBe(1);
      expect(oneLine(refused)).toMatch(/the archive \S+ is encrypted \(its marker walstream\.encrypted says so\) and no encryption key was given/);
    }
    expect(await plain.head(segs[4]!)).toBeUndefined();
    // ...and readers with the key refuse the plain objects written before (hence: only once `verify --encryption-required` passes).
    const old = await fetch(tag, segs[1]!, cwd, withKey);
    expect(old.code).toBe(126);
    expect(old.stderr).toMatch(/is corrupt: it is not encrypted, and the archive's marker walstream\.encrypted says its objects are encrypted/);
    expect((await fetch(tag, segs[3]!, cwd, withKey)).code).toBe(0);
    // A writer with the key re-pushing one of them replaces the plain copy on S3 (kept in quarantine):
    // exit 0 only once the archive holds a copy readers accept (also with --parallel, whose
    // shortcut for a file already archived cannot tell a plain copy by its checksum).
    const parallel = [...withKey, '--parallel', '2', '--spool', join(root, `markers-${tag}`)];
    if (b.name !== 'S3') {
      // An archive directory never replaces a stored file: an error naming it and what to do; the
      // new copy goes to quarantine/, the plain file stays until the operator moves it aside.
      const refused = await push(tag, segs[1]!, parallel);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/cannot be kept: it is not encrypted, and the archive is encrypted; a local archive never replaces a stored file/);
      expect((await fetch(tag, segs[1]!, cwd, withKey)).code).toBe(126);
      expect(await plain.list('quarantine/')).toHaveLength(1);
      const dir = b.url(tag);
      const file = readdirSync(dir).find((f) => f.startsWith(segs[1]!))!;
      renameSync(join(dir, file), join(dir, 'quarantine', `${file}.moved-by-hand`));
      rmSync(join(dir, '.walstream-meta', `${segs[1]!}.sha256`));
    }
    const again = await push(tag, segs[1]!, parallel);
    expect(again.code, again.stderr).toBe(0);
    if (b.name === 'S3') expect(again.stderr).toMatch(/kept as quarantine\/.* and replaced/);
    expect((await fetch(tag, segs[1]!, cwd, withKey)).code).toBe(0);
    // Turned off again by removing the marker by hand.
    await plain.delete(ENCRYPTED_MARKER_NAME);
    expect((await push(tag, segs[4]!)).code).toBe(0);
  });

  it('a first writer with a key in an archive that already holds plain WAL does not record it as encrypted', async () => {
    const tag = `existing-${b.name === 'S3' ? 's3' : 'local'}`;
    // WAL from before walstream (pg_receivewal, or an archive whose walstream.json was removed).
    const plain = b.store(tag);
    for (const s of [segs[0]!, segs[1]!]) expect((await plain.put(s, readFileSync(join(walDir, s)))).status).toBe('created');
    const first = await push(tag, segs[2]!, withKey);
    expect(first.code, first.stderr).toBe(0);
    // Recorded plain, without the field: a recovery with the key still reads the old WAL.
    expect(await readIdentity(plain)).toEqual({ systemIdentifier: expect.any(BigInt), segmentSize: primary.walSegmentSizeMB * 1024 * 1024 });
    const cwd = mkdtempSync(join(root, 'datadir-'));
    for (const name of [segs[0]!, segs[2]!]) {
      const got = await fetch(tag, name, cwd, withKey);
      expect(got.code, got.stderr).toBe(0);
      rmSync(join(cwd, 'RECOVERYXLOG'));
    }
    // Unless asked for: --encryption-required records it (readers then refuse the plain WAL).
    const forced = `forced-${b.name === 'S3' ? 's3' : 'local'}`;
    expect((await b.store(forced).put(segs[0]!, readFileSync(join(walDir, segs[0]!)))).status).toBe('created');
    expect((await push(forced, segs[2]!, [...withKey, '--encryption-required'])).code).toBe(0);
    expect(await readIdentity(b.store(forced, KEYRING))).toMatchObject({ encryption: 'aes-256-gcm' });
    expect((await fetch(forced, segs[0]!, cwd, withKey)).code).toBe(126);
  });
});
