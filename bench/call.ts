// npm run bench:call — the fixed cost of one restore_command / archive_command call, as
// PostgreSQL pays it once per 16 MB segment: `walstream fetch %f %p` from a local archive, the same
// call for a segment already prefetched into its spool (fetch --prefetch finds it there), and
// `walstream push %p` into a local archive, against `node -e 0` on the same Node, `cp`, and
// pgBackRest's archive-get / archive-push (synchronous, uncompressed, local repository), and
// fetch and push with --verify-records, to show what the record check adds to a call, and the
// three calls the installed command (bin/walstream.sh) answers without Node: a plain fetch from a
// local archive, a prefetched fetch and a push --parallel of a file an earlier call's look-ahead
// archived.
// Every Node binary in BENCH_NODES (colon-separated paths; default: the one running this) runs
// its own walstream and `node -e 0` cases; BENCH_COMPARE_BIN (another build's bin/walstream)
// adds that build's walstream cases, marked "(compare)". The cases alternate within each round (the order
// reversed every other round), after one warm-up round; BENCH_RUNS rounds (default 21). Printed:
// the median wall time of each case with its spread (quartiles, min and max), the mean CPU time
// (user + system, from the children's rusage in /proc), and the ratios the targets of issue 13
// are stated in.
// How each call finds things: the archive holds the segment (fetch) or not yet (push: the object
// is deleted after each call, the archive and its identity record stay, as in a running
// archiver's steady state). For the prefetched case the segment is copied into the spool before
// the call, and the spool's lock names this (live) process, so the call sees a running prefetch
// worker and starts none, as in a catch-up. Everything runs as the current user.
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PgCluster } from '../test/harness/pg.js';
import { BIN } from '../test/support/cli.js';
import { LocalStore } from '../src/storage/local.js';
import { median } from './common.js';
import { havePgBackRest, pgBackRestRepo, pgDir, PGBACKREST, type PgBackRestRepo } from './peers.js';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 21);
const NODES = (process.env['BENCH_NODES'] ?? process.execPath).split(':').filter((p) => p !== '');
const COMPARE_BIN = process.env['BENCH_COMPARE_BIN'];
const SEG_RE = /^[0-9A-F]{24}$/;

interface Case {
  name: string;
  argv: string[];
  /** Added to the environment. */
  env?: Record<string, string>;
  /** Before the call, untimed. */
  before?: () => void;
  /** After the call, untimed. */
  after?: () => void | Promise<void>;
}

/** Children's CPU time (user + system, reaped children) of this process so far, in clock ticks. */
function childTicks(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[13]) + Number(fields[14]);
}

const TICK_MS = 10; // USER_HZ is 100 on Linux

function nodeVersion(node: string): string {
  return spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim();
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const i = (s.length - 1) * q;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return s[lo]! + (s[hi]! - s[lo]!) * (i - lo);
}

async function main(): Promise<void> {
  const primary = await PgCluster.create({ name: 'bench-call', walSegmentSizeMB: 16, conf: { archive_mode: 'on', max_wal_size: '1GB' } });
  const raw = pgDir('raw');
  const dirs = [raw];
  const repos: PgBackRestRepo[] = [];
  try {
    primary.configure({ archive_command: `cp %p ${raw}/%f` });
    await primary.reload();
    await primary.generateWal(3 * 16 * 1024 * 1024);
    await primary.switchWal();
    await primary.waitFor(async () => readdirSync(raw).filter((n) => SEG_RE.test(n)).length >= 3, 120_000, 'three segments archived');
    const segs = readdirSync(raw)
      .filter((n) => SEG_RE.test(n))
      .sort();
    const fetched = segs[1]!; // restored again and again
    const pushed = segs[2]!; // archived again and again
    const fetchPath = join(raw, fetched);
    const pushPath = join(raw, pushed);

    const archive = pgDir('archive');
    const pushArchive = pgDir('push-archive');
    const out = pgDir('out');
    dirs.push(archive, pushArchive, out);
    const dest = join(out, 'RECOVERYXLOG');
    const node0 = NODES[0]!;
    for (const a of [archive, pushArchive]) {
      const r = spawnSync(node0, [BIN, 'push', fetchPath, '--archive', a], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`walstream push: ${r.stderr}`);
    }
    const pushStore = new LocalStore(pushArchive);
    const removePushed = (): Promise<void> => pushStore.delete(pushed);

    const cases: Case[] = [{ name: 'cp', argv: ['cp', fetchPath, dest], after: () => rmSync(dest, { force: true }) }];
    let repo: PgBackRestRepo | undefined;
    if (havePgBackRest()) {
      repo = await pgBackRestRepo({ primary, processMax: 1 });
      repos.push(repo);
      const r = spawnSync(PGBACKREST, [`--config=${repo.config}`, `--stanza=${repo.stanza}`, 'archive-push', fetchPath], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`pgbackrest archive-push: ${r.stderr}`);
      const pgbr = [PGBACKREST, `--config=${repo.config}`, `--stanza=${repo.stanza}`, `--pg1-path=${primary.dataDir}`];
      const repoWalDir = join(repo.config, '..', 'repo', 'archive', repo.stanza);
      cases.push({ name: 'pgbackrest archive-get', argv: [...pgbr, 'archive-get', fetched, dest], after: () => rmSync(dest, { force: true }) });
      cases.push({
        name: 'pgbackrest archive-push',
        argv: [...pgbr, 'archive-push', pushPath],
        after: () => {
          // repo/archive/<stanza>/<pg version>-<n>/<first 16 characters>/<name>-<sha1>
          for (const v of readdirSync(repoWalDir).filter((d) => /^\d+-\d+$/.test(d))) {
            const d = join(repoWalDir, v, pushed.slice(0, 16));
            for (const f of readdirSync(d)) if (f.startsWith(`${pushed}-`)) rmSync(join(d, f));
          }
        },
      });
    } else {
      console.log('pgBackRest is not installed (apt-get install pgbackrest): its cases are left out');
    }
    await primary.stop();

    // The prefetch spool: what `walstream fetch --prefetch` leaves and finds, with a live "worker".
    const spool = join(pgDir('spool'), 'prefetch');
    dirs.push(join(spool, '..'));
    mkdirSync(spool, { mode: 0o700 });
    chmodSync(spool, 0o700);
    writeFileSync(join(spool, '.archive'), `${archive} `);
    writeFileSync(join(spool, '.lock'), `${process.pid}\n`);
    // push --parallel's markers: what an earlier call's look-ahead leaves for a file it archived.
    const markers = join(spool, '..', 'markers');
    mkdirSync(markers, { mode: 0o700 });
    writeFileSync(join(markers, '.archive'), `${pushArchive} `);

    const versions = new Map<string, string>();
    for (const node of NODES) {
      const v = nodeVersion(node);
      versions.set(node, v);
      cases.push({ name: `node -e 0 (${v})`, argv: [node, '-e', '0'] });
      for (const [bin, mark] of [[BIN, ''], ...(COMPARE_BIN ? [[COMPARE_BIN, ' (compare)']] : [])] as const) {
        cases.push({ name: `walstream fetch${mark} (${v})`, argv: [node, bin, 'fetch', fetched, dest, '--archive', archive], after: () => rmSync(dest, { force: true }) });
        cases.push({
          name: `walstream fetch, prefetched${mark} (${v})`,
          argv: [node, bin, 'fetch', fetched, dest, '--archive', archive, '--prefetch', '8', '--spool', spool],
          before: () => {
            copyFileSync(fetchPath, join(spool, fetched));
            writeFileSync(join(spool, '.lock'), `${process.pid}\n`);
          },
          after: () => rmSync(dest, { force: true }),
        });
        cases.push({ name: `walstream push${mark} (${v})`, argv: [node, bin, 'push', pushPath, '--archive', pushArchive], after: removePushed });
        // What PostgreSQL runs as `walstream ...`: bin/walstream.sh answers these three without Node.
        const installed = { WALSTREAM_NODE: node };
        if (existsSync(`${bin}.sh`))
          cases.push(
            {
              name: `walstream fetch, installed${mark} (${v})`,
              argv: [`${bin}.sh`, 'fetch', fetched, dest, '--archive', archive],
              env: installed,
              after: () => rmSync(dest, { force: true }),
            },
            {
              name: `walstream fetch, prefetched, installed${mark} (${v})`,
              argv: [`${bin}.sh`, 'fetch', fetched, dest, '--archive', archive, '--prefetch', '8', '--spool', spool],
              env: installed,
              before: () => copyFileSync(fetchPath, join(spool, fetched)),
              after: () => rmSync(dest, { force: true }),
            },
            {
              name: `walstream push --parallel 4, pushed, installed${mark} (${v})`,
              argv: [`${bin}.sh`, 'push', pushPath, '--archive', pushArchive, '--parallel', '4', '--spool', markers],
              env: installed,
              before: () => writeFileSync(join(markers, `${pushed}.pushed`), ''),
            },
          );
        if (!mark) {
          // What the record check costs a call (issue 15: on by default only if under 10%).
          cases.push({ name: `walstream fetch --verify-records (${v})`, argv: [node, bin, 'fetch', fetched, dest, '--archive', archive, '--verify-records'], after: () => rmSync(dest, { force: true }) });
          cases.push({ name: `walstream push --verify-records (${v})`, argv: [node, bin, 'push', pushPath, '--archive', pushArchive, '--verify-records'], after: removePushed });
        }
      }
    }

    const wall = new Map<string, number[]>();
    const ticks = new Map<string, number>();
    const one = async (c: Case, record: boolean): Promise<void> => {
      c.before?.();
      const t0 = childTicks();
      const start = performance.now();
      const r = spawnSync(c.argv[0]!, c.argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], ...(c.env ? { env: { ...process.env, ...c.env } } : {}) });
      const ms = performance.now() - start;
      const used = childTicks() - t0;
      if (r.status !== 0) throw new Error(`${c.name}: exit ${r.status ?? r.signal}: ${r.stderr.toString().trim()}`);
      await c.after?.();
      if (!record) return;
      wall.set(c.name, [...(wall.get(c.name) ?? []), ms]);
      ticks.set(c.name, (ticks.get(c.name) ?? 0) + used);
    };
    for (const c of cases) await one(c, false); // warm-up: page cache, the archive's directories
    for (let i = 0; i < RUNS; i++) {
      const order = i % 2 === 0 ? cases : [...cases].reverse();
      for (const c of order) await one(c, true);
    }

    const pad = (s: string, n: number): string => s.padEnd(n);
    const f = (x: number): string => x.toFixed(1);
    console.log(`\none call, one 16 MB segment, local archive and repository: ${RUNS} alternating rounds after a warm-up`);
    console.log(`${pad('case', 60)}${pad('median ms', 11)}${pad('p25-p75', 15)}${pad('min-max', 15)}mean CPU ms`);
    for (const c of cases) {
      const w = wall.get(c.name)!;
      console.log(
        `${pad(c.name, 60)}${pad(f(median(w)), 11)}${pad(`${f(quantile(w, 0.25))}-${f(quantile(w, 0.75))}`, 15)}${pad(`${f(Math.min(...w))}-${f(Math.max(...w))}`, 15)}${f((ticks.get(c.name)! * TICK_MS) / RUNS)}`,
      );
    }
    const m = (name: string): number | undefined => (wall.has(name) ? median(wall.get(name)!) : undefined);
    const ratio = (a: string, b: string): string => {
      const x = m(a);
      const y = m(b);
      return x !== undefined && y !== undefined ? `${(x / y).toFixed(2)}` : 'n/a';
    };
    console.log('\nratios of medians (targets, issue 13: fetch and push <= 2x pgBackRest on Node 24; prefetched <= 1.3x node -e 0)');
    for (const v of versions.values()) {
      for (const mark of ['', ...(COMPARE_BIN ? [' (compare)'] : [])]) {
        console.log(`${v}${mark}: walstream fetch, installed / pgbackrest archive-get ${ratio(`walstream fetch, installed${mark} (${v})`, 'pgbackrest archive-get')}`);
        console.log(`${v}${mark}: walstream fetch on Node / pgbackrest archive-get ${ratio(`walstream fetch${mark} (${v})`, 'pgbackrest archive-get')}`);
        console.log(`${v}${mark}: walstream push / pgbackrest archive-push ${ratio(`walstream push${mark} (${v})`, 'pgbackrest archive-push')}`);
        console.log(`${v}${mark}: walstream fetch, prefetched / node -e 0 ${ratio(`walstream fetch, prefetched${mark} (${v})`, `node -e 0 (${v})`)}`);
        console.log(`${v}${mark}: walstream fetch, prefetched, installed / node -e 0 ${ratio(`walstream fetch, prefetched, installed${mark} (${v})`, `node -e 0 (${v})`)}`);
        console.log(`${v}${mark}: walstream fetch / node -e 0 ${ratio(`walstream fetch${mark} (${v})`, `node -e 0 (${v})`)}`);
        console.log(`${v}${mark}: walstream push / node -e 0 ${ratio(`walstream push${mark} (${v})`, `node -e 0 (${v})`)}`);
      }
      console.log(`${v}: fetch --verify-records / fetch ${ratio(`walstream fetch --verify-records (${v})`, `walstream fetch (${v})`)} (issue 15: default on if <= 1.10)`);
      console.log(`${v}: push --verify-records / push ${ratio(`walstream push --verify-records (${v})`, `walstream push (${v})`)}`);
    }
    await pushStore.close();
  } finally {
    await primary.destroy();
    for (const r of repos) r.cleanup();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
