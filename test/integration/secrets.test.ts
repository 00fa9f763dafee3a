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

  it('in --help, with the secrets in the environment', async () => {
    for (const cmd of ['receive', 'push', 'fetch', 'status', 'verify', 'cleanup', 'demo']) {
      const res = await runCli([cmd, '--help'], { env: { ...env, WALSTREAM_DBNAME: `password=${CONNINFO_PASSWORD}` } });
      expect(res.code, cmd).toBe(0);
      for (const secret of [...Object.values(SECRETS), CONNINFO_PASSWORD]) expect(res.stdout + res.stderr).not.toContain(secret);
    }
  });
});
