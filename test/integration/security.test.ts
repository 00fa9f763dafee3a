// walstream receive against a real server with TLS and password authentication, the libpq way:
// sslmode disable/allow/prefer/require/verify-ca/verify-full, root and client certificates (given
// or from ~/.postgresql), host name checks, SCRAM and md5, passwords from password=, PGPASSWORD
// and the password file. Failures are one clear line that never shows the password.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../harness/pg.js';
import { createTestPki, type TestPki } from '../harness/tls.js';
import { BIN, runCli, type CliResult } from '../support/cli.js';
import { spawn } from 'node:child_process';
import { statSync, existsSync } from 'node:fs';

const SECRETS = {
  ssl_user: 'ssl-user-secret',
  scram_user: 'scram-user-secret',
  md5_user: 'md5-user-secret',
  norepl_user: 'norepl-secret',
};

function oneLineError(res: CliResult, pattern: RegExp): void {
  expect(res.code, res.stderr).toBe(1);
  const lines = res.stderr.trim().split('\n');
  expect(lines, res.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(pattern);
  for (const secret of Object.values(SECRETS)) expect(res.stderr).not.toContain(secret);
}

function ok(res: CliResult): void {
  expect(res.code, res.stderr).toBe(0);
  for (const secret of Object.values(SECRETS)) expect(res.stderr).not.toContain(secret);
}

describe('receive: TLS and password authentication', () => {
  let pg: PgCluster;
  let pki: TestPki;
  const dirs: string[] = [];
  let appSeq = 0;

  const tempDir = (prefix: string): string => {
    const d = mkdtempSync(join(tmpdir(), prefix));
    dirs.push(d);
    return d;
  };

  /**
   * Run `walstream receive -E <current LSN>` with a connection string and an environment of
   * its own: HOME is an empty directory unless given, no PG* variable leaks in. Returns the
   * result and the application_name used, to find the connection in the server log.
   */
  const receive = async (conninfo: string, env: Record<string, string | undefined> = {}, extra: string[] = []): Promise<{ res: CliResult; app: string; dir: string }> => {
    const app = `sec_${++appSeq}`;
    const dir = tempDir('walstream-sec-wal-');
    const lsn = await pg.currentLsn();
    const res = await runCli(['receive', '-D', dir, '-n', '-E', lsn, '-d', `${conninfo} application_name=${app}`, ...extra], {
      env: {
        HOME: tempDir('walstream-sec-home-'),
        PGPASSWORD: undefined,
        PGPASSFILE: undefined,
        PGSSLMODE: undefined,
        PGSSLROOTCERT: undefined,
        PGSSLCERT: undefined,
        PGSSLKEY: undefined,
        PGHOST: undefined,
        PGPORT: undefined,
        PGUSER: undefined,
        ...env,
      },
      timeoutMs: 60_000,
    });
    return { res, app, dir };
  };

  /** How the server saw the connection of `app` ("SSL enabled (...)" or not), from its log. */
  const authorizedLine = (app: string): string => {
    const line = readFileSync(pg.logFile, 'utf8')
      .split('\n')
      .find((l) => l.includes('connection authorized') && (l.includes(`application_name=${app} `) || l.endsWith(`application_name=${app}`)));
    if (line === undefined) throw new Error(`no "connection authorized" line for ${app} in the server log`);
    return line;
  };

  const tcp = (): string => `host=127.0.0.1 port=${pg.port}`;

  beforeAll(async () => {
    pki = await createTestPki({ clientCn: 'cert_user' });
    pg = await PgCluster.create({
      name: 'security',
      start: false,
      conf: { log_connections: true, password_encryption: 'scram-sha-256' },
      hba: [
        'hostssl replication cert_user 127.0.0.1/32 cert',
        'hostnossl replication cert_user 127.0.0.1/32 reject',
        'hostssl replication ssl_user 127.0.0.1/32 scram-sha-256',
        'hostnossl replication ssl_user 127.0.0.1/32 reject',
        'host replication scram_user 127.0.0.1/32 scram-sha-256',
        'host replication md5_user 127.0.0.1/32 md5',
      ],
    });
    pg.configure({ ssl: true, ...pki.installServerFiles(pg.dataDir) });
    await pg.start();
    await pg.createRole('ssl_user', { replication: true, password: SECRETS.ssl_user });
    await pg.createRole('cert_user', { replication: true });
    await pg.createRole('scram_user', { replication: true, password: SECRETS.scram_user });
    await pg.createRole('norepl_user', { password: SECRETS.norepl_user });
    // An md5 hash needs password_encryption = md5 when the password is set.
    const c = await pg.connect();
    try {
      await c.query("set password_encryption = 'md5'");
      await c.query(`create role md5_user login replication password '${SECRETS.md5_user}'`);
    } finally {
      await c.end();
    }
  });

  afterAll(async () => {
    await pg?.destroy();
    pki?.remove();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  describe('TLS', () => {
    it('sslmode=disable against a hostssl-only entry fails clearly', async () => {
      const { res } = await receive(`${tcp()} user=ssl_user sslmode=disable`, { PGPASSWORD: SECRETS.ssl_user });
      oneLineError(res, /could not connect to 127\.0\.0\.1:\d+ as ssl_user: pg_hba\.conf rejects replication connection .*"ssl_user", no encryption/);
    });

    it('sslmode=require encrypts without verifying (no root certificate)', async () => {
      const { res, app, dir } = await receive(`${tcp()} user=ssl_user sslmode=require`, { PGPASSWORD: SECRETS.ssl_user });
      ok(res);
      expect(authorizedLine(app)).toMatch(/SSL enabled/);
      // WAL arrived over the encrypted connection.
      expect(readdirNames(dir).length).toBeGreaterThan(0);
    });

    it('the default sslmode (prefer) uses SSL when the server offers it', async () => {
      const { res, app } = await receive(`${tcp()} user=ssl_user`, { PGPASSWORD: SECRETS.ssl_user });
      ok(res);
      expect(authorizedLine(app)).toMatch(/SSL enabled/);
    });

    it('sslmode=allow tries without SSL first, then with it when the server rejects that', async () => {
      const { res, app } = await receive(`${tcp()} user=ssl_user sslmode=allow`, { PGPASSWORD: SECRETS.ssl_user });
      ok(res);
      expect(authorizedLine(app)).toMatch(/SSL enabled/);
    });

    it('verify-ca with the right CA; PGSSLMODE and PGSSLROOTCERT are read', async () => {
      ok((await receive(`${tcp()} user=ssl_user sslmode=verify-ca sslrootcert=${pki.caCert}`, { PGPASSWORD: SECRETS.ssl_user })).res);
      const { res, app } = await receive(`${tcp()} user=ssl_user`, { PGPASSWORD: SECRETS.ssl_user, PGSSLMODE: 'verify-ca', PGSSLROOTCERT: pki.caCert });
      ok(res);
      expect(authorizedLine(app)).toMatch(/SSL enabled/);
    });

    it('verify-ca refuses a server certificate from another CA', async () => {
      const { res } = await receive(`${tcp()} user=ssl_user sslmode=verify-ca sslrootcert=${pki.otherCaCert}`, { PGPASSWORD: SECRETS.ssl_user });
      oneLineError(res, /could not connect to .*: SSL error: certificate verify failed: /);
    });

    it('sslmode=require with a root certificate verifies like verify-ca (libpq)', async () => {
      const { res } = await receive(`${tcp()} user=ssl_user sslmode=require sslrootcert=${pki.otherCaCert}`, { PGPASSWORD: SECRETS.ssl_user });
      oneLineError(res, /SSL error: certificate verify failed/);
    });

    it('verify-ca / verify-full without any root certificate refuse to start', async () => {
      const { res } = await receive(`${tcp()} user=ssl_user sslmode=verify-full`, { PGPASSWORD: SECRETS.ssl_user });
      oneLineError(res, /root certificate file ".*\/\.postgresql\/root\.crt" does not exist/);
    });

    it('verify-full accepts the names in the certificate (DNS and IP address)', async () => {
      const byName = await receive(`host=localhost port=${pg.port} user=ssl_user sslmode=verify-full sslrootcert=${pki.caCert}`, {
        PGPASSWORD: SECRETS.ssl_user,
      });
      ok(byName.res);
      expect(authorizedLine(byName.app)).toMatch(/SSL enabled/);
      ok((await receive(`${tcp()} user=ssl_user sslmode=verify-full sslrootcert=${pki.caCert}`, { PGPASSWORD: SECRETS.ssl_user })).res);
    });

    it('verify-full refuses a host name the certificate does not carry (hostaddr connects, host is checked)', async () => {
      const { res } = await receive(`host=db.wrong.example hostaddr=127.0.0.1 port=${pg.port} user=ssl_user sslmode=verify-full sslrootcert=${pki.caCert}`, { PGPASSWORD: SECRETS.ssl_user });
      oneLineError(res, /server certificate for "localhost" \(and 1 other name\) does not match host name "db\.wrong\.example"/);
      // verify-ca does not check the name.
      ok(
        (
          await receive(`host=db.wrong.example hostaddr=127.0.0.1 port=${pg.port} user=ssl_user sslmode=verify-ca sslrootcert=${pki.caCert}`, {
            PGPASSWORD: SECRETS.ssl_user,
          })
        ).res,
      );
    });

    it('root certificate from ~/.postgresql/root.crt by default', async () => {
      const home = tempDir('walstream-sec-home-');
      mkdirSync(join(home, '.postgresql'));
      copyFileSync(pki.caCert, join(home, '.postgresql', 'root.crt'));
      ok((await receive(`host=localhost port=${pg.port} user=ssl_user sslmode=verify-full`, { HOME: home, PGPASSWORD: SECRETS.ssl_user })).res);
      // A default root.crt of another CA makes even sslmode=require fail, as in libpq.
      copyFileSync(pki.otherCaCert, join(home, '.postgresql', 'root.crt'));
      oneLineError((await receive(`${tcp()} user=ssl_user sslmode=require`, { HOME: home, PGPASSWORD: SECRETS.ssl_user })).res, /certificate verify failed/);
    });

    it('client certificate authentication (cert) with sslcert/sslkey, and without one it is refused', async () => {
      const { res, app } = await receive(`${tcp()} user=cert_user sslmode=verify-full sslrootcert=${pki.caCert} sslcert=${pki.clientCert} sslkey=${pki.clientKey}`);
      ok(res);
      expect(authorizedLine(app)).toMatch(/SSL enabled/);
      oneLineError((await receive(`${tcp()} user=cert_user sslmode=verify-full sslrootcert=${pki.caCert}`)).res, /connection requires a valid client certificate/);
    });

    it('client certificate and key from ~/.postgresql by default; PGSSLCERT/PGSSLKEY read', async () => {
      const home = tempDir('walstream-sec-home-');
      mkdirSync(join(home, '.postgresql'));
      copyFileSync(pki.clientCert, join(home, '.postgresql', 'postgresql.crt'));
      copyFileSync(pki.clientKey, join(home, '.postgresql', 'postgresql.key'));
      chmodSync(join(home, '.postgresql', 'postgresql.key'), 0o600);
      ok((await receive(`${tcp()} user=cert_user sslmode=verify-ca sslrootcert=${pki.caCert}`, { HOME: home })).res);
      ok(
        (
          await receive(`${tcp()} user=cert_user sslmode=require`, {
            PGSSLCERT: pki.clientCert,
            PGSSLKEY: pki.clientKey,
          })
        ).res,
      );
    });

    it('a private key that others can read is refused, as libpq does', async () => {
      const keyDir = tempDir('walstream-sec-key-');
      const key = join(keyDir, 'client.key');
      copyFileSync(pki.clientKey, key);
      chmodSync(key, 0o644);
      const { res } = await receive(`${tcp()} user=cert_user sslmode=require sslcert=${pki.clientCert} sslkey=${key}`);
      oneLineError(res, /private key file ".*client\.key" has group or world access/);
    });
  });

  describe('passwords', () => {
    it('SCRAM-SHA-256 from PGPASSWORD, from password= and from a URI', async () => {
      ok((await receive(`${tcp()} user=scram_user`, { PGPASSWORD: SECRETS.scram_user })).res);
      ok((await receive(`${tcp()} user=scram_user password=${SECRETS.scram_user}`)).res);
      // password= beats PGPASSWORD.
      ok((await receive(`${tcp()} user=scram_user password=${SECRETS.scram_user}`, { PGPASSWORD: 'wrong' })).res);
    });

    it('md5 from PGPASSWORD and from the password file', async () => {
      ok((await receive(`${tcp()} user=md5_user sslmode=disable`, { PGPASSWORD: SECRETS.md5_user })).res);
      const home = tempDir('walstream-sec-home-');
      writeFileSync(join(home, '.pgpass'), `127.0.0.1:${pg.port}:replication:md5_user:${SECRETS.md5_user}\n`, { mode: 0o600 });
      ok((await receive(`${tcp()} user=md5_user`, { HOME: home })).res);
    });

    it('~/.pgpass (mode 0600) and PGPASSFILE, matched on host, port, "replication" and user', async () => {
      const home = tempDir('walstream-sec-home-');
      writeFileSync(join(home, '.pgpass'), [`# walstream`, `127.0.0.1:${pg.port}:postgres:scram_user:not-this-one`, `127.0.0.1:${pg.port}:replication:scram_user:${SECRETS.scram_user}`, ''].join('\n'), {
        mode: 0o600,
      });
      chmodSync(join(home, '.pgpass'), 0o600);
      const res = (await receive(`${tcp()} user=scram_user`, { HOME: home })).res;
      ok(res);
      // No deprecation notice or other noise from the pg client's own password file support.
      expect(res.stderr).toBe('');
      const other = join(tempDir('walstream-sec-pf-'), 'pgpass');
      writeFileSync(other, `*:*:*:scram_user:${SECRETS.scram_user}\n`, { mode: 0o600 });
      ok((await receive(`${tcp()} user=scram_user`, { PGPASSFILE: other })).res);
      ok((await receive(`${tcp()} user=scram_user passfile=${other}`)).res);
    });

    it('a password file others can read is ignored with a warning', async () => {
      const home = tempDir('walstream-sec-home-');
      writeFileSync(join(home, '.pgpass'), `*:*:*:scram_user:${SECRETS.scram_user}\n`);
      chmodSync(join(home, '.pgpass'), 0o644);
      const { res } = await receive(`${tcp()} user=scram_user`, { HOME: home });
      expect(res.code).toBe(1);
      const lines = res.stderr.trim().split('\n');
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatch(/warning: password file ".*\.pgpass" has group or world access; permissions should be u=rw \(0600\) or less/);
      expect(lines[1]).toMatch(/error: could not connect to .* as scram_user: fe_sendauth: no password supplied/);
      expect(res.stderr).not.toContain(SECRETS.scram_user);
    });

    it('a wrong password is one line without the password; from the password file it says so', async () => {
      oneLineError((await receive(`${tcp()} user=scram_user password=wrong-pw-123`)).res, /could not connect to 127\.0\.0\.1:\d+ as scram_user: password authentication failed for user "scram_user"$/);
      const wrong = await receive(`${tcp()} user=md5_user sslmode=disable`, { PGPASSWORD: 'wrong-pw-456' });
      oneLineError(wrong.res, /password authentication failed for user "md5_user"/);
      expect(wrong.res.stderr).not.toContain('wrong-pw-456');
      const home = tempDir('walstream-sec-home-');
      writeFileSync(join(home, '.pgpass'), `*:*:*:scram_user:wrong-pw-789\n`, { mode: 0o600 });
      const fromFile = await receive(`${tcp()} user=scram_user sslmode=disable`, { HOME: home });
      oneLineError(fromFile.res, /password authentication failed for user "scram_user" \(password retrieved from file ".*\.pgpass"\)/);
      expect(fromFile.res.stderr).not.toContain('wrong-pw-789');
    });

    it('a role without REPLICATION gets a clear error', async () => {
      const { res } = await receive(`${tcp()} user=norepl_user`, { PGPASSWORD: SECRETS.norepl_user });
      oneLineError(res, /could not connect to .* as norepl_user: .*(permission denied to start WAL sender|must be superuser or replication role)/);
    });

    it('channel_binding=require: SCRAM-SHA-256-PLUS over TLS, refused without TLS or with md5', async () => {
      const { res, app } = await receive(`${tcp()} user=ssl_user sslmode=require channel_binding=require`, { PGPASSWORD: SECRETS.ssl_user });
      ok(res);
      expect(authorizedLine(app)).toMatch(/SSL enabled/);
      oneLineError(
        (await receive(`${tcp()} user=md5_user sslmode=require channel_binding=require`, { PGPASSWORD: SECRETS.md5_user })).res,
        /channel binding required, but server authenticated client without channel binding/,
      );
      oneLineError((await receive(`${tcp()} user=scram_user sslmode=disable channel_binding=require`, { PGPASSWORD: SECRETS.scram_user })).res, /channel binding required, but SSL not in use/);
    });

    it('--create-slot over TLS with a password', async () => {
      const res = await runCli(['receive', '--create-slot', '-S', 'sec_slot', '-d', `${tcp()} user=ssl_user sslmode=require`], {
        env: { PGPASSWORD: SECRETS.ssl_user, PGSSLMODE: undefined, HOME: tempDir('walstream-sec-home-') },
      });
      ok(res);
      const rows = await pg.query<{ slot_name: string }>("select slot_name from pg_replication_slots where slot_name = 'sec_slot'");
      expect(rows).toHaveLength(1);
    });
  });

  describe('file modes', () => {
    /** Run walstream under `umask 000`, as a careless service manager might. */
    const runUmask0 = (args: string[], opts: { untilFile?: () => boolean } = {}): Promise<CliResult> =>
      new Promise((resolve, reject) => {
        const child = spawn('sh', ['-c', 'umask 000; exec "$@"', 'sh', process.execPath, BIN, ...args], {
          env: { ...process.env, PGPASSWORD: undefined, PGPASSFILE: undefined, PGSSLMODE: undefined, HOME: tempDir('walstream-sec-home-') },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
        child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
        const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
        // one SIGTERM only: a second one makes walstream exit at once with status 1
        let termSent = false;
        const poll = opts.untilFile
          ? setInterval(() => {
              if (!termSent && opts.untilFile!()) {
                termSent = true;
                child.kill('SIGTERM');
              }
            }, 100)
          : undefined;
        child.on('error', reject);
        child.on('close', (code, signal) => {
          clearTimeout(killer);
          if (poll) clearInterval(poll);
          resolve({ code, signal, stdout, stderr });
        });
      });

    /** Every file and directory below `root` (not `root` itself) with its permission bits. */
    const modesBelow = (root: string): { path: string; dir: boolean; mode: number }[] => {
      const out: { path: string; dir: boolean; mode: number }[] = [];
      const walk = (d: string): void => {
        for (const name of readdirSync(d)) {
          const p = join(d, name);
          const st = statSync(p);
          out.push({ path: p, dir: st.isDirectory(), mode: st.mode & 0o7777 });
          if (st.isDirectory()) walk(p);
        }
      };
      walk(root);
      return out;
    };

    const expectPrivate = (entries: { path: string; dir: boolean; mode: number }[]): void => {
      expect(entries.length).toBeGreaterThan(0);
      for (const e of entries) expect({ path: e.path, mode: e.mode.toString(8) }).toEqual({ path: e.path, mode: e.dir ? '700' : '600' });
    };

    const superuser = (): string => `${tcp()} user=postgres`;

    it('receive (plain and gzip), receive --archive and push create only 0600 files and 0700 directories under umask 000', async () => {
      // Slots that hold WAL from here make each run start before a few complete segments.
      for (const slot of ['modes_plain', 'modes_gz', 'modes_archive']) await pg.query('select pg_create_physical_replication_slot($1, true)', [slot]);
      await pg.switchWal();
      await pg.switchWal();
      await pg.query("select pg_logical_emit_message(true, 'walstream-test', 'mid-segment')");
      // Mid-segment: the last segment stays .partial.
      const lsn = await pg.currentLsn();

      const plain = tempDir('walstream-sec-plain-');
      const r1 = await runUmask0(['receive', '-D', plain, '-n', '-E', lsn, '-S', 'modes_plain', '-d', superuser()]);
      expect(r1.code, r1.stderr).toBe(0);
      const plainFiles = modesBelow(plain);
      expect(plainFiles.some((e) => /^[0-9A-F]{24}$/.test(e.path.slice(-24)))).toBe(true);
      expect(plainFiles.some((e) => e.path.endsWith('.partial'))).toBe(true);
      expectPrivate(plainFiles);

      const gz = tempDir('walstream-sec-gz-');
      const r2 = await runUmask0(['receive', '-D', gz, '-n', '-E', lsn, '-S', 'modes_gz', '-Z', 'gzip', '-d', superuser()]);
      expect(r2.code, r2.stderr).toBe(0);
      expect(readdirSync(gz).some((n) => n.endsWith('.gz'))).toBe(true);
      expectPrivate(modesBelow(gz));

      // The archive directory does not exist yet: walstream creates it and everything in it.
      const spool = tempDir('walstream-sec-spool-');
      const archiveBase = tempDir('walstream-sec-archive-');
      const archive = join(archiveBase, 'new', 'archive');
      const r3 = await runUmask0(['receive', '-D', spool, '-n', '-E', lsn, '-S', 'modes_archive', '--archive', archive, '-d', superuser()]);
      expect(r3.code, r3.stderr).toBe(0);
      expectPrivate(modesBelow(spool));
      const archived = modesBelow(archiveBase);
      expect(archived.some((e) => /^[0-9A-F]{24}$/.test(e.path.slice(-24)))).toBe(true);
      expectPrivate(archived);

      // push: a new archive directory, a segment and its checksum record.
      const segment = readdirSync(plain).find((n) => /^[0-9A-F]{24}$/.test(n))!;
      const pushBase = tempDir('walstream-sec-push-');
      const r4 = await runUmask0(['push', join(plain, segment), '--archive', join(pushBase, 'a', 'b')]);
      expect(r4.code, r4.stderr).toBe(0);
      const pushed = modesBelow(pushBase);
      expect(pushed.some((e) => e.path.endsWith(segment))).toBe(true);
      expectPrivate(pushed);
    });

    it('the segment in progress, shipped as pieces, is private too', async () => {
      const spool = tempDir('walstream-sec-spool-');
      const archive = tempDir('walstream-sec-archive-');
      const writer = setInterval(() => void pg.query("select pg_logical_emit_message(false, 'walstream-test', repeat('x', 2000))").catch(() => undefined), 200);
      try {
        const res = await runUmask0(['receive', '-D', spool, '--archive', archive, '--partial-interval', '1', '-d', superuser()], {
          untilFile: () => readdirSync(archive).some((n) => /\.partial\.[0-9A-F]+$/i.test(n)),
        });
        expect(res.code, res.stderr).toBe(0);
      } finally {
        clearInterval(writer);
      }
      const entries = modesBelow(archive);
      expect(entries.some((e) => /\.partial\.[0-9A-F]+$/i.test(e.path))).toBe(true);
      expectPrivate(entries);
      expectPrivate(modesBelow(spool));
    });

    it('receive --archive refuses a spool directory group or others can write to', async () => {
      for (const mode of [0o770, 0o777, 0o1777]) {
        const spool = tempDir('walstream-sec-spool-');
        chmodSync(spool, mode);
        const archive = join(tempDir('walstream-sec-archive-'), 'archive');
        const res = await runCli(['receive', '-D', spool, '-n', '--archive', archive, '-d', superuser()], { env: { PGSSLMODE: undefined } });
        oneLineError(res, new RegExp(`spool directory ".*" is writable by (its group|all users) \\(mode ${mode.toString(8).padStart(4, '0')}\\).*chmod go-w`));
        expect(readdirSync(spool)).toEqual([]);
        expect(existsSync(archive)).toBe(false);
      }
      // Without --archive the directory is pg_receivewal's and is taken as it is.
      const open = tempDir('walstream-sec-open-');
      chmodSync(open, 0o777);
      const res = await runCli(['receive', '-D', open, '-n', '-E', await pg.currentLsn(), '-d', superuser()], { env: { PGSSLMODE: undefined } });
      expect(res.code, res.stderr).toBe(0);
    });
  });

  it('sslmode=require against a server without SSL fails clearly; prefer goes on without it', async () => {
    pg.configure({ ssl: false });
    await pg.reload();
    await pg.waitFor(async () => (await pg.query<{ ssl: string }>('show ssl'))[0]?.ssl === 'off', 10_000, 'ssl = off');
    oneLineError((await receive(`${tcp()} user=scram_user sslmode=require`, { PGPASSWORD: SECRETS.scram_user })).res, /could not connect to .*: server does not support SSL, but SSL was required/);
    const { res, app } = await receive(`${tcp()} user=scram_user`, { PGPASSWORD: SECRETS.scram_user });
    ok(res);
    expect(authorizedLine(app)).not.toMatch(/SSL enabled/);
  });
});

function readdirNames(dir: string): string[] {
  return readdirSyncSafe(dir).filter((n) => /^[0-9A-F]{24}/.test(n));
}

function readdirSyncSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
