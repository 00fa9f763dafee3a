// Runs the real walstream CLI (bin/walstream, which loads dist/: the tests build it first) as a child process.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { existsSync, readFileSync } from 'node:fs';

/** The package root: the nearest directory above this file with walstream's package.json (works compiled too). */
function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'walstream') return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the walstream package root');
    dir = up;
  }
}

export const ROOT = findRoot();
export const BIN = join(ROOT, 'bin', 'walstream');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  env?: Record<string, string | undefined>;
  /** Working directory (restore_command runs in the data directory). */
  cwd?: string;
  timeoutMs?: number;
}

export class CliProcess {
  stdout = '';
  stderr = '';
  readonly done: Promise<CliResult>;
  constructor(
    readonly child: ChildProcess,
    timeoutMs: number,
  ) {
    child.stdout?.on('data', (b: Buffer) => (this.stdout += b.toString()));
    child.stderr?.on('data', (b: Buffer) => (this.stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    this.done = new Promise((resolve) => {
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stdout: this.stdout, stderr: this.stderr });
      });
    });
  }
  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    this.child.kill(signal);
  }
  /** Wait until stderr matches, or fail after `timeoutMs`. */
  async waitForOutput(re: RegExp, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!re.test(this.stderr)) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`walstream exited before printing ${re}:\n${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re} in walstream output:\n${this.stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export function startCli(args: string[], opts: CliOptions = {}): CliProcess {
  const env: NodeJS.ProcessEnv = { ...process.env, ...opts.env };
  for (const [k, v] of Object.entries(opts.env ?? {})) if (v === undefined) delete env[k];
  const child = spawn(process.execPath, [BIN, ...args], { env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  return new CliProcess(child, opts.timeoutMs ?? 120_000);
}

export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  return startCli(args, opts).done;
}
