// walstream receive against real PostgreSQL servers: identical bytes to pg_receivewal and to the
// server's own pg_wal, timeline switches, kill -9 resume, server restarts, synchronous commit.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import zlib, { gunzipSync } from 'node:zlib';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, pgVersionsUnderTest, toolBinDir } from '../harness/pg.js';
import { runCli, startCli } from '../support/cli.js';
import { assertPrefixEqual, assertSegmentsMatch, completeSegments, listDir, lsnOf, segName } from '../support/walfiles.js';
import { run } from '../harness/exec.js';

const SEG = 1024 * 1024;

async function decompressPrefix(data: Buffer, method: 'gzip' | 'zstd'): Promise<Buffer> {
  const z = method === 'gzip' ? zlib.createGunzip() : (zlib as unknown as { createZstdDecompress(): NodeJS.ReadWriteStream }).createZstdDecompress();
  const out: Buffer[] = [];
  return new Promise((resolve) => {
    z.on('data', (c: Buffer) => out.push(c));
    z.on('end', () => resolve(Buffer.concat(out)));
    z.on('error', () => resolve(Buffer.concat(out)));
    z.end(data);
  });
}

function tmp(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `walstream-${prefix}-`));
}

for (const version of pgVersionsUnderTest()) {
  describe(`receive on PostgreSQL ${version}`, () => {
    let primary: PgCluster;
    const dirs: string[] = [];
    const newDir = (p: string): string => {
      const d = tmp(p);
      dirs.push(d);
      return d;
    };
    // Before 15 there is no READ_REPLICATION_SLOT: like pg_receivewal, walstream then starts at
    // the server's position unless the directory says otherwise, so say it with an empty .partial.
    const startAtSlot = (dir: string, slotLsn: string): void => {
      if (version < 15) writeFileSync(join(dir, `${segName(1, lsnOf(slotLsn), SEG)}.partial`), '');
    };

    beforeAll(async () => {
      primary = await PgCluster.create({ version, name: `recv${version}`, conf: { wal_sender_timeout: '10s' } });
    });
    afterAll(async () => {
      await primary?.destroy();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    });

    it('writes the same files and bytes as pg_receivewal and the server, up to --endpos', async () => {
      const [slotA] = await primary.query<{ lsn: string }>("select lsn::text from pg_create_physical_replication_slot('oracle_a', true)");
      await primary.query("select pg_create_physical_replication_slot('oracle_b', true)");
      await primary.generateWal(5 * SEG);
      const endpos = await primary.currentLsn();
      const ours = newDir('ours');
      startAtSlot(ours, slotA!.lsn);
      const res = await runCli(['receive', '-D', ours, '-d', primary.connectionString(), '-S', 'oracle_a', '-E', endpos, '--no-loop']);
      expect(res.stderr).toBe('');
      expect(res.code).toBe(0);

      const names = listDir(ours);
      const partial = `${segName(1, lsnOf(endpos), SEG)}.partial`;
      expect(names).toContain(partial);
      expect(completeSegments(ours).length).toBeGreaterThanOrEqual(5);
      // Complete segments are the server's own files, byte for byte.
      assertSegmentsMatch(ours, primary.walDir);
      const offset = Number(lsnOf(endpos) % BigInt(SEG));
      assertPrefixEqual(join(ours, partial), join(primary.walDir, partial.replace('.partial', '')), offset);

      if (version === 15) {
        // The real pg_receivewal as the oracle (it only streams from servers of its own major or older).
        const theirs = newDir('theirs');
        // pg_receivewal checks --endpos only when it waits for more data: give it some past endpos.
        await primary.query("select pg_logical_emit_message(false, 'walstream-test', 'past endpos')");
        await run([join(toolBinDir(), 'pg_receivewal'), '-D', theirs, '-d', primary.connectionString(), '-S', 'oracle_b', '-E', endpos, '-n'], { timeoutMs: 60_000 });
        expect(listDir(ours)).toEqual(listDir(theirs));
        assertSegmentsMatch(ours, theirs);
        assertPrefixEqual(join(ours, partial), join(theirs, partial), offset);
        // pg_waldump reads everything up to endpos.
        const first = completeSegments(ours)[0]!;
        const hex = (n: bigint): string => `${(n >> 32n).toString(16).toUpperCase()}/${(n & 0xffffffffn).toString(16).toUpperCase()}`;
        const start = hex((BigInt('0x' + first.slice(8, 16)) << 32n) + BigInt('0x' + first.slice(16)) * BigInt(SEG));
        // pg_waldump does not read .partial files: dump every complete segment.
        const end = hex(lsnOf(endpos) - (lsnOf(endpos) % BigInt(SEG)));
        const dump = await run([join(toolBinDir(), 'pg_waldump'), '-p', ours, '-s', start, '-e', end, '--stats'], { timeoutMs: 60_000 });
        expect(dump.stdout).toMatch(/Total/);
      }
    });

    it("compresses with -Z gzip (and zstd where Node has it) to files that decompress to the server's bytes", async () => {
      await primary.query("select pg_create_physical_replication_slot('gz', true)");
      await primary.generateWal(2 * SEG + SEG / 3);
      const endpos = await primary.currentLsn();
      const methods: ['gzip' | 'zstd', string, (b: Buffer) => Buffer][] = [['gzip', '.gz', (b) => gunzipSync(b)]];
      const zstd = (zlib as unknown as { zstdDecompressSync?: (b: Buffer) => Buffer }).zstdDecompressSync;
      if (zstd) methods.push(['zstd', '.zst', (b) => zstd(b)]);
      else {
        // Older Node: a clear refusal, nothing written.
        const dir = newDir('nozstd');
        const res = await runCli(['receive', '-D', dir, '-d', primary.connectionString(), '-Z', 'zstd', '-n', '-E', endpos]);
        expect(res.code).toBe(1);
        expect(res.stderr).toMatch(/zstd compression needs Node\.js 22\.15 or newer/);
        expect(listDir(dir)).toEqual([]);
      }
      for (const [method, suffix, decompress] of methods) {
        const dir = newDir(method);
        // The slot is only a retention guard here; start from the directory's empty .partial.
        const [row] = await primary.query<{ lsn: string }>("select restart_lsn::text as lsn from pg_replication_slots where slot_name = 'gz'");
        const first = segName(1, lsnOf(row!.lsn), SEG);
        writeFileSync(join(dir, `${first}${suffix}.partial`), '');
        const res = await runCli(['receive', '-D', dir, '-d', primary.connectionString(), '-Z', method, '-E', endpos, '-n']);
        expect(res.code, res.stderr).toBe(0);
        const names = listDir(dir);
        const complete = names.filter((n) => n.endsWith(suffix));
        expect(complete.length).toBeGreaterThanOrEqual(2);
        for (const n of complete) {
          const seg = n.slice(0, 24);
          expect(decompress(readFileSync(join(dir, n))).equals(readFileSync(join(primary.walDir, seg))), n).toBe(true);
        }
        const partial = `${segName(1, lsnOf(endpos), SEG)}${suffix}.partial`;
        expect(names).toContain(partial);
        // An in-progress compressed file is a flushed but unfinished stream: read what it holds.
        const prefix = await decompressPrefix(readFileSync(join(dir, partial)), method);
        const offset = Number(lsnOf(endpos) % BigInt(SEG));
        expect(prefix.length).toBeGreaterThanOrEqual(offset);
        expect(prefix.subarray(0, offset).equals(readFileSync(join(primary.walDir, partial.slice(0, 24))).subarray(0, offset))).toBe(true);
      }
    });

    it('resumes after kill -9 in the middle of a segment with identical results', async () => {
      const [slot] = await primary.query<{ lsn: string }>("select lsn::text from pg_create_physical_replication_slot('kill9', true)");
      const startLsn = lsnOf(slot!.lsn);
      const dir = newDir('kill9');
      startAtSlot(dir, slot!.lsn);
      const proc = startCli(['receive', '-D', dir, '-d', primary.connectionString(), '-S', 'kill9', '-v']);
      await proc.waitForOutput(/starting log streaming/);
      await primary.generateWal(3 * SEG + SEG / 2);
      await proc.waitForOutput(/finished segment/);
      proc.kill('SIGKILL');
      const killed = await proc.done;
      expect(killed.signal).toBe('SIGKILL');
      await primary.generateWal(2 * SEG);
      const endpos = await primary.currentLsn();
      const res = await runCli(['receive', '-D', dir, '-d', primary.connectionString(), '-S', 'kill9', '-E', endpos, '-n']);
      expect(res.code, res.stderr).toBe(0);
      const names = completeSegments(dir);
      // Nothing missing: every segment from the start to the one holding endpos.
      const firstSeg = startLsn / BigInt(SEG);
      const lastSeg = lsnOf(endpos) / BigInt(SEG);
      const expected: string[] = [];
      for (let s = firstSeg; s < lastSeg; s++) expected.push(segName(1, s * BigInt(SEG), SEG));
      expect(names).toEqual(expected);
      assertSegmentsMatch(dir, primary.walDir);
      expect(listDir(dir).filter((n) => n.endsWith('.partial'))).toEqual([`${segName(1, lsnOf(endpos), SEG)}.partial`]);
    });

    it('reconnects by itself when the primary restarts while streaming', async () => {
      await primary.query("select pg_create_physical_replication_slot('restart', true)");
      const dir = newDir('restart');
      const proc = startCli(['receive', '-D', dir, '-d', primary.connectionString(), '-S', 'restart', '--synchronous', '-v']);
      await proc.waitForOutput(/starting log streaming/);
      await primary.generateWal(SEG);
      await primary.restart();
      const target = await primary.generateWal(2 * SEG);
      // The reported flush position reaches the new WAL only if walstream came back and made it durable.
      await primary
        .waitFor(
          async () => {
            const rows = await primary.query<{ ok: boolean }>("select flush_lsn >= $1::pg_lsn as ok from pg_stat_replication where application_name = 'walstream'", [target]);
            return rows[0]?.ok === true;
          },
          60_000,
          'walstream to reconnect and flush',
        )
        .catch((err: Error) => {
          throw new Error(`${err.message}\n--- walstream ---\n${proc.stderr}`);
        });
      proc.kill('SIGTERM');
      const res = await proc.done;
      expect(res.code, res.stderr).toBe(0);
      expect(res.stderr).toMatch(/reconnect|retrying/);
      assertSegmentsMatch(dir, primary.walDir);
      const partial = listDir(dir).find((n) => n.endsWith('.partial'));
      expect(partial).toBeDefined();
      // The durable partial holds everything up to the flush position reported.
      const seg = partial!.replace('.partial', '');
      if (seg === segName(1, lsnOf(target), SEG)) {
        assertPrefixEqual(join(dir, partial!), join(primary.walDir, seg), Number(lsnOf(target) % BigInt(SEG)));
      }
    });

    it('is a synchronous standby with --synchronous: COMMIT waits for walstream', async () => {
      await primary.query("alter system set synchronous_standby_names = 'walstream_sync'");
      await primary.reload();
      const dir = newDir('sync');
      let proc = startCli(['receive', '-D', dir, '-d', primary.connectionString(), '--synchronous', '--application-name', 'walstream_sync', '-v']);
      try {
        await primary.waitFor(
          async () => (await primary.query<{ s: string }>("select sync_state as s from pg_stat_replication where application_name = 'walstream_sync'"))[0]?.s === 'sync',
          30_000,
          'walstream to become the synchronous standby',
        );
        const client = await primary.connect();
        try {
          await client.query('create table if not exists synctest (id int)');
          await client.query('insert into synctest values (1)');
          const lsn = (await client.query<{ l: string }>('select pg_current_wal_flush_lsn()::text as l')).rows[0]!.l;
          // The commit returned: walstream reported it durable, and the bytes are on its disk.
          const rows = await primary.query<{ ok: boolean }>("select flush_lsn >= $1::pg_lsn as ok from pg_stat_replication where application_name = 'walstream_sync'", [lsn]);
          expect(rows[0]?.ok).toBe(true);
          const seg = segName(1, lsnOf(lsn), SEG);
          assertPrefixEqual(join(dir, `${seg}.partial`), join(primary.walDir, seg), Number(lsnOf(lsn) % BigInt(SEG)));

          proc.kill('SIGINT');
          expect((await proc.done).code).toBe(0);
          // With walstream stopped, a commit blocks.
          let committed = false;
          const pending = client.query('insert into synctest values (2)').then(() => {
            committed = true;
          });
          await new Promise((r) => setTimeout(r, 1500));
          expect(committed).toBe(false);
          const waits = await primary.query<{ w: string }>("select wait_event as w from pg_stat_activity where query like 'insert into synctest values (2)%'");
          expect(waits[0]?.w).toBe('SyncRep');
          // And completes once walstream is back.
          proc = startCli(['receive', '-D', dir, '-d', primary.connectionString(), '--synchronous', '--application-name', 'walstream_sync']);
          await pending;
          expect(committed).toBe(true);
        } finally {
          await client.end();
        }
      } finally {
        proc.kill('SIGINT');
        await proc.done;
        await primary.query('alter system reset synchronous_standby_names');
        await primary.reload();
      }
    });

    it('follows a timeline switch when the standby it streams from is promoted', async () => {
      const standby = await primary.createStandby({ name: `tl${version}` });
      try {
        const dir = newDir('timeline');
        const proc = startCli(['receive', '-D', dir, '-d', standby.connectionString(), '-v']);
        await proc.waitForOutput(/starting log streaming/);
        const before = await primary.generateWal(SEG + SEG / 4);
        await standby.waitForReplay(before);
        await standby.promote();
        await standby.generateWal(2 * SEG);
        const endpos = await standby.currentLsn();
        // Either the running receiver crossed the switch already, or a restart must do it from the directory.
        await new Promise((r) => setTimeout(r, 1000));
        proc.kill('SIGINT');
        const first = await proc.done;
        expect(first.code, first.stderr).toBe(0);
        const res = await runCli(['receive', '-D', dir, '-d', standby.connectionString(), '-E', endpos, '-n', '-v']);
        expect(res.code, res.stderr).toBe(0);
        expect(existsSync(join(dir, '00000002.history'))).toBe(true);
        expect(readFileSync(join(dir, '00000002.history'))).toEqual(readFileSync(join(standby.walDir, '00000002.history')));
        const names = completeSegments(dir);
        expect(names.some((n) => n.startsWith('00000001'))).toBe(true);
        expect(names.some((n) => n.startsWith('00000002'))).toBe(true);
        assertSegmentsMatch(
          dir,
          standby.walDir,
          names.filter((n) => n.startsWith('00000002')),
        );
        assertSegmentsMatch(
          dir,
          primary.walDir,
          names.filter((n) => n.startsWith('00000001')),
        );
        const partial = `${segName(2, lsnOf(endpos), SEG)}.partial`;
        expect(listDir(dir)).toContain(partial);
      } finally {
        await standby.destroy();
      }
    });
  });
}
