// Shared pieces of the benchmarks: timing a command with GNU time, medians, table output, the
// S3 test server in a child process and the PUT rate it can take.
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import type { S3ServerInfo } from './s3-server.js';

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

/** CPU seconds (user + system) a live process has used so far, from /proc. */
export function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) start at field 3; utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

const CLOCK_TICKS = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

export interface S3Process extends S3ServerInfo {
  readonly pid: number;
  readonly credentials: { accessKeyId: string; secretAccessKey: string };
  /** CPU seconds the server process has used so far. */
  cpuSeconds(): number;
  /** Peak RSS of the server process so far, in MB. */
  peakRssMb(): number;
  stop(): Promise<void>;
}

/** The test S3 server (s3rver behind test/harness/s3.ts) in a child process: see s3-server.ts. */
export async function startS3Process(): Promise<S3Process> {
  const script = fileURLToPath(new URL('./s3-server.js', import.meta.url));
  const child = spawn(process.execPath, ['--enable-source-maps', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    child.once('exit', (code) => reject(new Error(`the S3 server process exited with ${code} before it was ready`)));
  });
  const info = JSON.parse(line) as S3ServerInfo;
  const pid = child.pid!;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    ...info,
    pid,
    credentials: { accessKeyId: info.accessKeyId, secretAccessKey: info.secretAccessKey },
    cpuSeconds: () => processCpuSeconds(pid),
    peakRssMb: () => {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      return m ? Number(m[1]) / 1024 : NaN;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/**
 * What the S3 endpoint takes at best from this machine: `count` PUTs of `bytes`-byte objects,
 * `parallel` at a time, through the SDK from this process with checksums computed beforehand
 * (SHA-256 transfer checksum and signed payload hash, as walstream sends them) and, as walstream's
 * PUTs do, If-None-Match: * (the test server's front end takes such a PUT's body whole before
 * s3rver sees it), so the time is the client's HTTP work and the server's. Returns MB/s (MB = 2^20
 * bytes).
 */
export async function rawPutCeiling(
  s3: { endpoint: string; bucket: string; region: string; credentials: { accessKeyId: string; secretAccessKey: string } },
  prefix: string,
  opts: { count: number; bytes: number; parallel: number },
): Promise<number> {
  const client = new S3Client({ endpoint: s3.endpoint, region: s3.region, forcePathStyle: true, credentials: s3.credentials });
  try {
    // Distinct bodies (s3rver hashes each one for its ETag either way): a different first 8 bytes.
    const base = randomBytes(opts.bytes);
    const bodies = Array.from({ length: opts.parallel }, (_, i) => {
      const b = Buffer.from(base);
      b.writeUInt32BE(i, 0);
      return b;
    });
    const sums = bodies.map((b) => createHash('sha256').update(b).digest());
    let next = 0;
    const t0 = process.hrtime.bigint();
    await Promise.all(
      bodies.map(async (body, w) => {
        while (next < opts.count) {
          const i = next++;
          const cmd = new PutObjectCommand({ Bucket: s3.bucket, Key: `${prefix}${i}`, Body: body, ContentLength: body.length, ChecksumSHA256: sums[w]!.toString('base64'), IfNoneMatch: '*' });
          cmd.middlewareStack.add(
            (nextMw) => (args) => {
              (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'] = sums[w]!.toString('hex');
              return nextMw(args);
            },
            { step: 'build' },
          );
          await client.send(cmd);
        }
      }),
    );
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    return (opts.count * opts.bytes) / 1048576 / s;
  } finally {
    client.destroy();
  }
}

/**
 * BENCH_CASES (a regular expression) keeps only the cases whose name it matches, plus the
 * baseline the table is relative to; unset, every case runs.
 */
export function selectCases<T extends { name: string }>(cases: T[], baseline: string): T[] {
  const pattern = process.env['BENCH_CASES'];
  if (!pattern) return cases;
  const re = new RegExp(pattern);
  const kept = cases.filter((c) => c.name === baseline || re.test(c.name));
  console.log(`BENCH_CASES=${pattern}: ${kept.map((c) => c.name).join(', ')}`);
  return kept;
}
