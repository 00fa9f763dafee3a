// Fault 6: writers of one local archive killed with SIGKILL at random moments, again and again:
// two `walstream push` at once (sometimes of the same segment, compressed or not), and
// `walstream receive --archive` into the same archive with a push beside it. Some kills are timed
// from the start, some land the moment the writer's temp file appears (so leftovers are made
// every run, not by luck). Checked after every round and at the end:
// - the next writer that stores anything leaves no temp file of a writer that was already dead
//   when it started; `walstream cleanup` (the all-zero %r: no WAL removed) leaves none either;
// - a live writer's temp file is never removed: every writer not killed exits 0 (a put whose temp
//   file vanished fails), and a temp file held for a live process (ten hours old) survives every
//   writer and cleanup until that process ends, then cleanup removes it;
// - two writers racing on one name still end with one file per name, identical to the server's WAL;
//   the final receiver run and pushes complete, and the archive verifies.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PgCluster } from '../harness/pg.js';
import { runCli, startCli, type CliProcess, type CliResult } from '../support/cli.js';
import { THIS_WRITER, parseTempName, processStart, scanDirectory, tempName } from '../../src/storage/leftovers.js';
import { LocalStore, META_DIR, TEMP_DIR } from '../../src/storage/local.js';
import { WalWriter, createSlot, faultSuite, flushLsn, receiverArgs, sleep, startReceiver, tail } from './helpers.js';
import { iterations, recordRow, type Rng } from './report.js';
import { formatLsn } from './verify.js';

const PUSH_ROUNDS = iterations(3, 30);
const RECEIVE_ROUNDS = iterations(1, 12);
const WAL_RE = /^[0-9A-F]{24}$/;
const SLOT = 'leftovers';

describe('fault: writers killed mid-write leave no temp files for good', () => {
  const suite = faultSuite('leftovers', { primary: { name: 'fault-leftovers' } });
  const { cleanup } = suite;
  let primary: PgCluster;
  let rng: Rng;
  let archive: string;
  let tmpDir: string;
  let src: string;
  let segments: string[];
  /** A process that stays alive: the temp file named for it must survive everything. */
  let holder: ChildProcess;
  let held: string;

  beforeAll(async () => {
    ({ primary, rng } = suite);
    archive = cleanup.dir('leftovers-archive');
    tmpDir = join(archive, META_DIR, TEMP_DIR);
    src = cleanup.dir('leftovers-src');
    // The receivers' slot first: it keeps all the WAL from here on, the pushed segments' too.
    await createSlot(primary, SLOT);
    // Complete segments to push: written, switched, copied out of pg_wal (older than the current one).
    for (let i = 0; i < 4; i++) {
      await primary.generateWal(rng.int(64 * 1024, 600 * 1024));
      await primary.switchWal();
    }
    const [row] = await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f');
    segments = readdirSync(primary.walDir)
      .filter((f) => WAL_RE.test(f) && f < row!.f && f.startsWith('00000001'))
      .sort()
      .slice(-4);
    for (const s of segments) copyFileSync(join(primary.walDir, s), join(src, s));
    holder = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    await once(holder, 'spawn');
    held = tempName(segments[0]!, { pid: holder.pid!, start: processStart(holder.pid!), host: THIS_WRITER.host, space: THIS_WRITER.space });
    mkdirSync(tmpDir, { recursive: true, mode: 0o700 });
    writeFileSync(join(tmpDir, held), Buffer.alloc(4096));
    const old = new Date(Date.now() - 10 * 3600_000);
    utimesSync(join(tmpDir, held), old, old);
  });
  afterAll(async () => {
    holder?.kill('SIGKILL');
  });

  /** The writer a temp file in the archive names (pid), or undefined. */
  const tempsOf = (): { file: string; pid: number | undefined }[] => (existsSync(tmpDir) ? readdirSync(tmpDir).map((file) => ({ file, pid: parseTempName(file)?.writer?.pid })) : []);

  /** Kill `p` with SIGKILL the moment a temp file of its own appears (or when it ends by itself). */
  const killOnTemp = async (p: CliProcess): Promise<void> => {
    const pid = p.child.pid;
    while (p.child.exitCode === null && p.child.signalCode === null) {
      if (tempsOf().some((t) => t.pid === pid)) {
        p.kill('SIGKILL');
        return;
      }
      await new Promise((r) => setImmediate(r));
    }
  };

  /** Start `p`'s fate: let it run, kill it after a random delay, or the moment its temp file appears. */
  const fate = (p: CliProcess, rngPick: Rng, forced?: 'on-temp' | 'finish'): { killed: () => boolean; done: Promise<unknown> } => {
    const how = forced ?? rngPick.pick(['finish', 'delay', 'on-temp', 'on-temp'] as const);
    let killed = false;
    const done =
      how === 'finish'
        ? Promise.resolve()
        : how === 'delay'
          ? sleep(rngPick.int(0, 600)).then(() => {
              if (p.child.exitCode === null) {
                killed = true;
                p.kill('SIGKILL');
              }
            })
          : killOnTemp(p).then(() => {
              killed = p.child.signalCode !== null || p.child.exitCode === null;
            });
    return { killed: () => killed || p.child.signalCode === 'SIGKILL', done };
  };

  const push = (name: string): CliProcess => cleanup.track(startCli(['push', join(src, name), '--archive', archive, '-Z', rng.pick(['none', 'gzip']), '-v'], { timeoutMs: 60_000 }));

  /** Temp files of writers that are gone now (their pid no longer runs). */
  const deadTemps = (): Set<string> =>
    new Set(
      tempsOf()
        .filter((t) => t.pid !== undefined && !alive(t.pid))
        .map((t) => t.file),
    );
  /** How many temp files of dead writers there are now that were not there `before` (left by this round's kills). */
  const newDead = (before: Set<string>): number => [...deadTemps()].filter((f) => !before.has(f)).length;

  it(
    'pushes, two at once, and receivers beside them, killed at random',
    async () => {
      const losses: string[] = [];
      let leftoversMade = 0;
      let checks = 0;
      let checksWithWork = 0;

      /** After a round whose writer `stored` something: no temp file of a writer dead before it started remains. */
      const expectSwept = (before: Set<string>, what: string): void => {
        checks++;
        if (before.size > 0) checksWithWork++;
        const still = tempsOf().filter((t) => before.has(t.file));
        if (still.length > 0) losses.push(`${what}: temp files of dead writers left: ${still.map((t) => t.file).join(', ')}`);
      };
      const expectHeld = (what: string): void => {
        if (!existsSync(join(tmpDir, held))) losses.push(`${what}: the live writer's temp file was removed`);
      };

      for (let round = 1; round <= PUSH_ROUNDS; round++) {
        const before = deadTemps();
        const a = rng.pick(segments);
        const b = rng() < 1 / 3 ? a : rng.pick(segments);
        const procs = [push(a), push(b)];
        // Every run makes leftovers and checks they are removed: both pushes of the first round are
        // killed on their temp files, and the next round's first push runs to its end.
        const fates = procs.map((p, i) => fate(p, rng, round === 1 ? 'on-temp' : round === 2 && i === 0 ? 'finish' : undefined));
        await Promise.all(fates.map((f) => f.done));
        const results = await Promise.all(procs.map((p) => p.done));
        results.forEach((r, i) => {
          if (!fates[i]!.killed() && r.code !== 0) losses.push(`push round ${round} (${i === 0 ? a : b}): a writer not killed exited ${r.code}:\n${tail(r.stderr)}`);
        });
        leftoversMade += newDead(before);
        if (results.some((r) => r.code === 0)) expectSwept(before, `push round ${round}`);
        expectHeld(`push round ${round}`);
      }

      const slot = SLOT;
      const spool = cleanup.dir('leftovers-spool');
      const args = { dir: spool, conn: primary.connectionString(), slot, archive, extra: ['-s', '1', '--partial-interval', '1'] };
      const writer = new WalWriter(() => primary, rng).start();
      try {
        for (let round = 1; round <= RECEIVE_ROUNDS; round++) {
          const before = deadTemps();
          const receiver = startReceiver(cleanup, args, 120_000);
          const beside = push(rng.pick(segments));
          const besideFate = fate(beside, rng);
          // Killed on its first temp file, or after a random while (start-up, streaming, uploading).
          const onTemp = rng() < 0.5;
          if (onTemp) await Promise.race([killOnTemp(receiver), sleep(3000)]);
          else await sleep(rng.int(300, 2500));
          if (receiver.child.exitCode !== null) losses.push(`receive round ${round}: the receiver exited by itself (${receiver.child.exitCode}):\n${tail(receiver.stderr)}`);
          receiver.kill('SIGKILL');
          const r = await receiver.done;
          await besideFate.done;
          const p = await beside.done;
          if (!besideFate.killed() && p.code !== 0) losses.push(`receive round ${round}: the push beside it exited ${p.code}:\n${tail(p.stderr)}`);
          leftoversMade += newDead(before);
          // Each put first removes dead writers' temp files: once the receiver (or the push) archived something.
          if (/archived /.test(r.stderr) || p.code === 0) expectSwept(before, `receive round ${round}`);
          expectHeld(`receive round ${round}`);
        }
      } finally {
        await writer.stop();
      }

      // The final, clean runs: the receiver up to the primary's position, then every segment pushed again.
      const before = deadTemps();
      const endpos = await flushLsn(primary);
      const fin = await runCli(receiverArgs({ ...args, extra: ['-s', '1', '-E', formatLsn(endpos), '-n'] }), { timeoutMs: 180_000 });
      if (fin.code !== 0) losses.push(`final receiver run to ${formatLsn(endpos)} exited ${fin.code}:\n${tail(fin.stderr)}`);
      const finals: CliResult[] = await Promise.all(segments.map((s) => push(s).done));
      finals.forEach((r, i) => {
        if (r.code !== 0) losses.push(`final push of ${segments[i]} exited ${r.code}:\n${tail(r.stderr)}`);
      });
      expectSwept(before, 'final runs');
      expectHeld('final runs');
      // Nothing of a dead writer anywhere in the archive, nor in the receiver's spool.
      const store = new LocalStore(archive);
      const scan = await store.scanLeftovers();
      const notLive = scan.leftovers.filter((l) => l.state !== 'live');
      if (notLive.length > 0) losses.push(`after the final runs: ${notLive.map((l) => `${l.name} (${l.state})`).join(', ')}`);
      const spoolLeft = (await scanDirectory(spool)).filter((l) => l.state !== 'live');
      if (spoolLeft.length > 0) losses.push(`the spool holds ${spoolLeft.map((l) => l.name).join(', ')}`);

      // One file per name, each the server's bytes (two writers raced on names all along).
      let bytesVerified = 0;
      const files = readdirSync(archive).filter((f) => !f.startsWith('.') && f !== 'walstream.json' && f !== 'quarantine');
      const bases = files.map((f) => f.replace(/\.(gz|zst)$/, ''));
      const twice = bases.filter((b, i) => bases.indexOf(b) !== i);
      if (twice.length > 0) losses.push(`more than one file for ${twice.join(', ')}`);
      if (existsSync(join(archive, 'quarantine'))) losses.push(`quarantine holds ${readdirSync(join(archive, 'quarantine')).join(', ')}`);
      for (const name of bases.filter((b) => WAL_RE.test(b))) {
        const got = (await store.get(name)).data;
        const ref = readFileSync(join(primary.walDir, name));
        if (got.equals(ref)) bytesVerified += got.length;
        else losses.push(`${name} differs from the server's`);
      }
      for (const s of segments) if (!bases.includes(s)) losses.push(`${s} was pushed but is not in the archive`);

      // cleanup (the all-zero %r: no WAL goes) finds nothing of a dead writer left; the live one's stays,
      // until its process ends.
      const c1 = await runCli(['cleanup', '000000000000000000000000', '--archive', archive, '--json']);
      const j1 = JSON.parse(c1.stdout) as { count: number; leftovers: { removed: string[]; kept: number } };
      if (c1.code !== 0 || j1.count !== 0 || j1.leftovers.removed.length !== 0 || j1.leftovers.kept !== 1) losses.push(`cleanup after the final runs: ${c1.stdout}${c1.stderr}`);
      const exited = once(holder, 'exit');
      holder.kill('SIGKILL');
      await exited;
      const c2 = await runCli(['cleanup', '000000000000000000000000', '--archive', archive, '--json']);
      const j2 = JSON.parse(c2.stdout) as { leftovers: { removed: string[] } };
      if (c2.code !== 0 || JSON.stringify(j2.leftovers.removed) !== JSON.stringify([`${META_DIR}/${TEMP_DIR}/${held}`])) losses.push(`cleanup once the live writer ended: ${c2.stdout}${c2.stderr}`);
      const verify = await runCli(['verify', '--archive', archive]);
      if (verify.code !== 0) losses.push(`verify:\n${verify.stdout}`);

      const rounds = PUSH_ROUNDS + RECEIVE_ROUNDS;
      console.log(
        `[faults] leftovers: ${rounds} rounds, ${leftoversMade} temp files left for the next writer, ${checks} sweeps checked (${checksWithWork} with temp files to remove), ${bytesVerified} bytes verified`,
      );
      recordRow({ fault: 'writers SIGKILLed: leftover temp files (local)', iterations: rounds, bytesVerified, losses: losses.length });
      expect(losses).toEqual([]);
      // The loop did make leftovers, and a later writer did have them to remove.
      expect(leftoversMade).toBeGreaterThan(0);
      expect(checksWithWork).toBeGreaterThan(0);
      // The receivers archived WAL of their own, past the pushed segments.
      expect(bases.filter((b) => WAL_RE.test(b)).length).toBeGreaterThan(segments.length);
    },
    180_000 + (PUSH_ROUNDS + RECEIVE_ROUNDS) * 15_000,
  );
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
