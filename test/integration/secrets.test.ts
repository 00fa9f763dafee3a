// No secret in any output: every command runs with a database password (PGPASSWORD and in the
// connection string) and S3 keys configured, verbose, in text and JSON logs, against endpoints
// that fail, and its standard output and error must not contain any of them. Also --help.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../harness/pg.js';
import { runCli } from '../support/cli.js';
import { fixtureSegment, FIXTURE_NAME } from '../unit/fixture.js';

const SECRETS = {
  PGPASSWORD: 'pg-env-secret-7f3a',
  AWS_SECRET_ACCESS_KEY: 'aws-secret-key-91bd',
  AWS_SESSION_TOKEN: 'aws-session-token-c2e8',
};
const CONNINFO_PASSWORD = 'conninfo-secret-5d10';

describe('secrets stay out of every output', () => {
  let dir: string;
  let closed: number;
  const env = { ...SECRETS, AWS_ACCESS_KEY_ID: 'AKIDLEAKTEST', AWS_REGION: 'us-east-1', WALSTREAM_VERBOSE: '1' };
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'walstream-secrets-'));
    writeFileSync(join(dir, FIXTURE_NAME), fixtureSegment());
    closed = await freePort();
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('in errors, verbose messages and JSON logs of every command', async () => {
    const s3 = ['--archive', 's3://leak-bucket/wal', '--s3-endpoint', `http://127.0.0.1:${closed}`];
    const conn = `host=127.0.0.1 port=${closed} user=walstream password=${CONNINFO_PASSWORD}`;
    const uri = `postgresql://walstream:${CONNINFO_PASSWORD}@127.0.0.1:${closed}/postgres`;
    const runs: string[][] = [
      ['receive', '-D', join(dir, 'spool'), '-d', conn, '-n'],
      ['receive', '-D', join(dir, 'spool'), '-d', uri, '-n'],
      ['receive', '-D', join(dir, 'spool'), '-d', conn, '-n', ...s3],
      ['receive', '--create-slot', '-S', 'x', '-d', conn],
      ['push', join(dir, FIXTURE_NAME), ...s3],
      ['fetch', FIXTURE_NAME, join(dir, 'out'), ...s3],
      ['status', ...s3, '-d', conn],
      ['verify', ...s3],
      ['cleanup', '--before', FIXTURE_NAME, ...s3],
      ['push', join(dir, FIXTURE_NAME), '--archive', `s3://AKIDLEAKTEST:${SECRETS.AWS_SECRET_ACCESS_KEY}@leak-bucket/wal`],
    ];
    let failures = 0;
    for (const args of runs) {
      for (const format of ['text', 'json']) {
        const res = await runCli(['--log-format', format, ...args], { env, cwd: dir, timeoutMs: 90_000 });
        if (res.code !== 0) failures++;
        const out = res.stdout + res.stderr;
        expect(out.length, args.join(' ')).toBeGreaterThan(0);
        for (const secret of [...Object.values(SECRETS), CONNINFO_PASSWORD]) expect(out, `${args[0]} ${format}: ${out}`).not.toContain(secret);
      }
    }
    // Every one of them failed (nothing listens), so each printed its error.
    expect(failures).toBe(runs.length * 2);
  });

  it('encryption keys: in no error, verbose message, JSON log or --help, whether good, wrong, malformed or in a loose file', async () => {
    const { chmodSync, mkdirSync } = await import('node:fs');
    const { LocalStore } = await import('../../src/storage/local.js');
    const { Keyring } = await import('../../src/storage/encryption.js');
    const keyA = Buffer.from('encryption-key-secret-a-0123456789abcdef').subarray(0, 32);
    const keyB = Buffer.from('encryption-key-secret-b-fedcba9876543210').subarray(0, 32);
    const malformed = 'bWFsZm9ybWVkLWtleS1zZWNyZXQtOTk5OTk5OTk5';
    const forms = (k: Buffer): string[] => [k.toString('base64'), k.toString('hex'), k.toString('base64url'), k.toString('latin1')];
    const secrets = [...forms(keyA), ...forms(keyB), malformed];
    // An archive holding an object encrypted with key "a", and one it fails to authenticate.
    const archive = join(dir, 'enc-archive');
    mkdirSync(archive);
    const store = new LocalStore(archive, { keyring: new Keyring([{ id: 'a', key: keyA }], 'test') });
    await store.put(FIXTURE_NAME, fixtureSegment());
    const keyFile = join(dir, 'b.keys');
    writeFileSync(keyFile, `b=${keyB.toString('base64')}\n`, { mode: 0o600 });
    const loose = join(dir, 'loose.keys');
    writeFileSync(loose, `b=${keyB.toString('hex')}\n`);
    chmodSync(loose, 0o644);
    const bad = join(dir, 'bad.keys');
    writeFileSync(bad, `x=${malformed}\n`, { mode: 0o600 });
    const sameIdWrongKey = join(dir, 'wrong.keys');
    writeFileSync(sameIdWrongKey, `a=${keyB.toString('base64')}\n`, { mode: 0o600 });
    const keyRuns: [string[], Record<string, string>][] = [];
    const commands = (a: string): string[][] => [
      ['push', join(dir, FIXTURE_NAME), '--archive', a],
      ['fetch', FIXTURE_NAME, join(dir, 'out'), '--archive', a],
      ['fetch', FIXTURE_NAME, join(dir, 'out'), '--archive', a, '--prefetch', '2'],
      ['verify', '--archive', a],
      ['status', '--archive', a],
      ['cleanup', '--before', FIXTURE_NAME, '--dry-run', '--archive', a],
      ['receive', '-D', join(dir, 'spool'), '-d', `host=127.0.0.1 port=${closed} user=walstream`, '-n', '--archive', a],
    ];
    const s3 = `s3://leak-bucket/wal`;
    for (const cmd of commands(s3).map((c) => [...c, '--s3-endpoint', `http://127.0.0.1:${closed}`])) {
      keyRuns.push([cmd, { WALSTREAM_ENCRYPTION_KEY: keyA.toString('base64') }]);
      keyRuns.push([[...cmd, '--encryption-key-file', keyFile], {}]);
    }
    for (const cmd of commands(archive)) {
      keyRuns.push([cmd, { WALSTREAM_ENCRYPTION_KEY: keyB.toString('base64') }]);
      keyRuns.push([cmd, { WALSTREAM_ENCRYPTION_KEY: `a=${malformed}` }]);
      keyRuns.push([[...cmd, '--encryption-key-file', keyFile], {}]);
      keyRuns.push([[...cmd, '--encryption-key-file', loose], {}]);
      keyRuns.push([[...cmd, '--encryption-key-file', bad], {}]);
      keyRuns.push([[...cmd, '--encryption-key-file', sameIdWrongKey], {}]);
      keyRuns.push([cmd, { WALSTREAM_ENCRYPTION_KEY_FILE: keyFile, WALSTREAM_ENCRYPTION_KEY: keyA.toString('hex') }]);
    }
    keyRuns.push([['fetch', FIXTURE_NAME, join(dir, 'out'), '--archive', archive], { WALSTREAM_ENCRYPTION_KEY: `a=${keyA.toString('base64')}` }]);
    let outputs = 0;
    // Every run with text logs; JSON logs for the commands that fail fastest (push, verify, receive),
    // which still meet every key source. 91 runs, six at a time (fetch waits on retries against
    // the closed port).
    const jsonToo = new Set(['push', 'verify', 'receive']);
    const jobs = keyRuns.flatMap(([args, extra]) => (jsonToo.has(args[0]!) ? ['text', 'json'] : ['text']).map((format) => ({ args, extra, format })));
    const worker = async (): Promise<void> => {
      for (let job = jobs.shift(); job; job = jobs.shift()) {
        const { args, extra, format } = job;
        const res = await runCli(['--log-format', format, ...args], { env: { ...env, ...extra }, cwd: dir, timeoutMs: 90_000 });
        const out = res.stdout + res.stderr;
        if (out.length > 0) outputs++;
        for (const secret of secrets) expect(out, `${args.join(' ')} ${format}: ${out}`).not.toContain(secret);
      }
    };
    await Promise.all(Array.from({ length: 6 }, worker));
    expect(outputs).toBeGreaterThan(keyRuns.length);
    for (const cmd of ['receive', 'push', 'fetch', 'status', 'verify', 'cleanup']) {
      const res = await runCli([cmd, '--help'], { env: { ...env, WALSTREAM_ENCRYPTION_KEY: keyA.toString('base64'), WALSTREAM_ENCRYPTION_KEY_FILE: keyFile } });
      expect(res.code, cmd).toBe(0);
      expect(res.stdout).toContain('--encryption-key-file');
      for (const secret of secrets) expect(res.stdout + res.stderr).not.toContain(secret);
    }
  }, 300_000);

  it('in --help, with the secrets in the environment', async () => {
    for (const cmd of ['receive', 'push', 'fetch', 'status', 'verify', 'cleanup', 'demo']) {
      const res = await runCli([cmd, '--help'], { env: { ...env, WALSTREAM_DBNAME: `password=${CONNINFO_PASSWORD}` } });
      expect(res.code, cmd).toBe(0);
      for (const secret of [...Object.values(SECRETS), CONNINFO_PASSWORD]) expect(res.stdout + res.stderr).not.toContain(secret);
    }
  });
});
