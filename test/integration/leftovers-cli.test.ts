// The CLI on a local archive holding leftovers of writers (temp files named for real processes,
// alive and gone, and an older version's): status and verify report them (text and --json),
// every form of cleanup removes the gone writers' ones and never a live writer's, and push (a
// writer) removes them before it writes. Runs bin/walstream (npm run build first).
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { THIS_WRITER, processStart, tempName, type WriterId } from '../../src/storage/leftovers.js';
import { LocalStore, META_DIR, TEMP_DIR } from '../../src/storage/local.js';
import { runCli } from '../support/cli.js';
import { makeSegment, seg } from '../unit/ops-walgen.js';

const HOUR = 3600_000;
const children = new Set<ChildProcess>();
const dirs: string[] = [];
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function child(): Promise<{ writer: WriterId; stop: () => Promise<void> }> {
  const c = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  children.add(c);
  await once(c, 'spawn');
  return {
    writer: { pid: c.pid!, start: processStart(c.pid!), host: THIS_WRITER.host, space: THIS_WRITER.space },
    stop: async () => {
      const exited = once(c, 'exit');
      c.kill('SIGKILL');
      await exited;
      children.delete(c);
    },
  };
}

describe('leftovers on the command line (local archive)', () => {
  let dir: string;
  let tmp: string;
  let live: Awaited<ReturnType<typeof child>>;
  let liveName: string;

  /** Segments 1-4; a killed put's segment (dead writer), a live writer's file, an older version's file (two hours old). */
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'walstream-leftovers-cli-'));
    dirs.push(dir);
    const store = new LocalStore(dir);
    for (let n = 1; n <= 4; n++) await store.put(seg(1, n), makeSegment({ tli: 1, segNo: n }));
    tmp = join(dir, META_DIR, TEMP_DIR);
    mkdirSync(tmp, { recursive: true });
    live = await child();
    const dead = await child();
    await dead.stop();
    writeFileSync(join(tmp, tempName(seg(1, 5), dead.writer)), makeSegment({ tli: 1, segNo: 5 }));
    liveName = tempName(seg(1, 6), live.writer);
    writeFileSync(join(tmp, liveName), Buffer.alloc(100));
    const old = join(dir, `.${seg(1, 7)}.4242.deadbeef.tmp`);
    writeFileSync(old, Buffer.alloc(1000));
    const t = new Date(Date.now() - 2 * HOUR);
    utimesSync(old, t, t);
  });

  it('status and verify report them, in text and JSON', async () => {
    const text = await runCli(['status', '--archive', dir]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^leftovers {3}3 temp files, 1\.0 MB: 2 of writers that are gone \(1\.0 MB; walstream cleanup removes them\), 1 kept \(a writer may still be at work\)$/m);
    const json = await runCli(['status', '--archive', dir, '--json']);
    const s = JSON.parse(json.stdout) as { leftovers: { count: number; bytes: number; removable: number; inUse: number; items: { name: string; state: string; writer: { pid: number } | null }[] } };
    expect(s.leftovers).toMatchObject({ count: 3, bytes: 1024 * 1024 + 1100, removable: 2, inUse: 1 });
    expect(s.leftovers.items.find((i) => i.state === 'live')).toMatchObject({ name: `${META_DIR}/${TEMP_DIR}/${liveName}`, writer: { pid: live.writer.pid } });
    const verify = await runCli(['verify', '--archive', dir, '--json']);
    expect(verify.code, verify.stdout).toBe(0);
    const v = JSON.parse(verify.stdout) as { ok: boolean; leftovers: { count: number }; notes: string[] };
    expect(v.ok).toBe(true);
    expect(v.leftovers.count).toBe(3);
    expect(v.notes.some((n) => n.startsWith('3 temp files (1.0 MB) left by writers'))).toBe(true);
    await live.stop();
  });

  it("cleanup as archive_cleanup_command (%r): silent, the WAL before %r and the gone writers' leftovers removed", async () => {
    const res = await runCli(['cleanup', seg(1, 3), '--archive', dir]);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toBe('');
    expect(
      readdirSync(dir)
        .filter((f) => !f.startsWith('.'))
        .sort(),
    ).toEqual([seg(1, 3), seg(1, 4)]);
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    expect(readdirSync(tmp)).toEqual([liveName]);
    await live.stop();
  });

  it('the all-zero %r removes no WAL, still the leftovers; --dry-run and -v name them', async () => {
    const dry = await runCli(['cleanup', '000000000000000000000000', '--archive', dir, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/^would remove leftover \.walstream-meta\/tmp\/\.000000010000000000000005\./m);
    expect(dry.stdout).toMatch(/^would remove leftover \.000000010000000000000007\.4242\.deadbeef\.tmp$/m);
    expect(dry.stdout).toMatch(/^dry run: 2 temp files of writers that are gone \(1\.0 MB\) would be removed$/m);
    expect(readdirSync(tmp)).toHaveLength(2);
    const res = await runCli(['cleanup', '000000000000000000000000', '--archive', dir, '-v']);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout.match(/^removed leftover /gm)).toHaveLength(2);
    expect(res.stdout).toMatch(/^kept 1 leftover a writer may still be at work on$/m);
    expect(readdirSync(dir).filter((f) => !f.startsWith('.'))).toHaveLength(4);
    expect(readdirSync(tmp)).toEqual([liveName]);
    await live.stop();
  });

  it('--before and --older-than with --json and --leftover-age', async () => {
    const before = await runCli(['cleanup', '--before', seg(1, 2), '--archive', dir, '--json', '--leftover-age', '3h']);
    expect(before.code, before.stderr).toBe(0);
    const b = JSON.parse(before.stdout) as { removed: string[]; leftovers: { removed: string[]; count: number; bytes: number; kept: number; failed: unknown[]; unavailable: null } };
    expect(b.removed).toEqual([seg(1, 1)]);
    // A three-hour age keeps the older version's two-hour-old file.
    expect(b.leftovers).toMatchObject({ count: 1, bytes: 1024 * 1024, kept: 2, failed: [], unavailable: null });
    const older = await runCli(['cleanup', '--older-than', '7d', '--archive', dir, '--json']);
    const o = JSON.parse(older.stdout) as { count: number; leftovers: { removed: string[] } };
    expect(o.count).toBe(0);
    expect(o.leftovers.removed).toEqual([`.${seg(1, 7)}.4242.deadbeef.tmp`]);
    const bad = await runCli(['cleanup', '--older-than', '7d', '--archive', dir, '--leftover-age', 'soon']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/invalid duration "soon"/);
    await live.stop();
  });

  it("push, a writer, removes them before it writes, never the live writer's", async () => {
    const src = mkdtempSync(join(tmpdir(), 'walstream-leftovers-src-'));
    dirs.push(src);
    writeFileSync(join(src, seg(1, 5)), makeSegment({ tli: 1, segNo: 5 }));
    const res = await runCli(['push', join(src, seg(1, 5)), '--archive', dir]);
    expect(res.code, res.stderr).toBe(0);
    expect(readdirSync(tmp)).toEqual([liveName]);
    expect(readdirSync(dir)).toContain(seg(1, 5));
    // (An older version's temp file beside the data is cleanup's: a writer looks in its own directory only.)
    expect(readdirSync(dir)).toContain(`.${seg(1, 7)}.4242.deadbeef.tmp`);
    await live.stop();
  });
});
