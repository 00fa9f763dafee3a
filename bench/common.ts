// Shared pieces of the benchmarks: timing a command with GNU time, medians, table output.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Measurement {
  wallS: number;
  cpuS: number;
  maxRssMb: number;
}

export const TIME_BIN = '/usr/bin/time';

export function requireGnuTime(): void {
  if (!existsSync(TIME_BIN)) throw new Error('benchmarks need GNU time: apt-get install time');
}

/** Run argv under GNU time; reject on a non-zero exit. */
export async function measure(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<Measurement> {
  const dir = mkdtempSync(join(tmpdir(), 'walstream-bench-time-'));
  const out = join(dir, 'time.txt');
  try {
    const code = await new Promise<number | null>((resolve) => {
      const child = spawn(TIME_BIN, ['-f', '%e %U %S %M', '-o', out, ...argv], { env, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr.on('data', (b: Buffer) => (err += b.toString()));
      child.on('close', (c) => {
        if (c !== 0) process.stderr.write(err);
        resolve(c);
      });
    });
    if (code !== 0) throw new Error(`${argv.join(' ')} exited with ${code}`);
    const [wall, user, sys, rssKb] = readFileSync(out, 'utf8').trim().split('\n').pop()!.split(' ').map(Number);
    return { wallS: wall!, cpuS: user! + sys!, maxRssMb: rssKb! / 1024 };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function summarize(name: string, runs: Measurement[]): { name: string; wall: number; cpu: number; rss: number } {
  return {
    name,
    wall: median(runs.map((r) => r.wallS)),
    cpu: median(runs.map((r) => r.cpuS)),
    rss: Math.max(...runs.map((r) => r.maxRssMb)),
  };
}

export function printTable(rows: { name: string; wall: number; cpu: number; rss: number }[], extra: Record<string, string> = {}): void {
  const pad = (s: string, n: number): string => s.padEnd(n);
  console.log(`${pad('tool', 28)}${pad('median wall s', 15)}${pad('median CPU s', 15)}peak RSS MB`);
  for (const r of rows) console.log(`${pad(r.name, 28)}${pad(r.wall.toFixed(2), 15)}${pad(r.cpu.toFixed(2), 15)}${r.rss.toFixed(1)}`);
  for (const [k, v] of Object.entries(extra)) console.log(`${k}: ${v}`);
}
