// `walstream fetch %f %p --prefetch` for a segment the prefetch worker has already downloaded:
// restore_command's most frequent call in a catch-up, served before the command line is built.
// PostgreSQL starts one process per segment, so what such a call loads is most of what it costs:
// this path loads neither commander (nor the child_process, net and stream modules it pulls in)
// nor any storage code, and does what the full command would (commands/fetch.ts fetch, with
// spoolOnly). It takes only a command line it reads exactly as commander does (test/unit/
// fetch-spool.test.ts compares the two): `fetch`, two arguments, and the fetch options below
// with their WALSTREAM_* variables; anything else (another option, --help, --log-format json, a
// repeated option, a value that looks like an option) goes to the full command line, and so
// does every call the spool cannot answer. The worker is started as the full command starts it.
import { closeSync, openSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { type Logger, stderrLogger } from '../util/log.js';
import { builtin } from '../util/lazy.js';

const childProcess = builtin<typeof import('node:child_process')>('node:child_process');

/** The prefetch worker's log in its spool (archive/prefetch.ts PREFETCH_LOG; not imported, to keep startup light). */
const PREFETCH_LOG_NAME = 'prefetch.log';

/** What fetch's options say about the prefetch worker (a subset of the command's options). */
export interface PrefetchCliOptions {
  archive?: string;
  s3Endpoint?: string;
  encryptionKeyFile?: string;
  encryptionRequired?: boolean;
  spool?: string;
}

/**
 * fetch --prefetch: the spool, and how to start the background worker: this program again,
 * detached, with its messages in the spool's prefetch.log.
 */
export function prefetchSettings(opts: PrefetchCliOptions, count: number, log: Logger): { count: number; spool: string; startWorker: () => number | undefined } {
  const spool = resolve(opts.spool ?? '.walstream-prefetch');
  const startWorker = (): number | undefined => {
    const args = [...process.execArgv, process.argv[1]!, 'fetch-prefetch', '--spool', spool, '--archive', opts.archive!, '--verbose'];
    if (opts.s3Endpoint) args.push('--s3-endpoint', opts.s3Endpoint);
    // The key file's path only; a key in WALSTREAM_ENCRYPTION_KEY reaches the worker through its environment.
    if (opts.encryptionKeyFile) args.push('--encryption-key-file', resolve(opts.encryptionKeyFile));
    if (opts.encryptionRequired) args.push('--encryption-required');
    let logFd: number | undefined;
    try {
      // Appended to, and started afresh once it passes 1 MB.
      const logPath = join(spool, PREFETCH_LOG_NAME);
      let size = 0;
      try {
        size = statSync(logPath).size;
      } catch {
        // not there yet
      }
      logFd = openSync(logPath, size > 1024 * 1024 ? 'w' : 'a', 0o600);
      const child = childProcess().spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'ignore', logFd] });
      child.unref();
      return child.pid;
    } catch (err) {
      log.warn(`cannot start the prefetch worker: ${(err as Error).message}`);
      return undefined;
    } finally {
      if (logFd !== undefined) closeSync(logFd);
    }
  };
  return { count, spool, startWorker };
}

/** A fetch command line the fast path takes, as commander would parse it. */
export interface SpoolFetchArgs extends PrefetchCliOptions {
  name: string;
  dest: string;
  archive: string;
  prefetch: number;
  partial: boolean;
  verbose: boolean;
}

const VALUE_OPTIONS: Record<string, 'archive' | 's3Endpoint' | 'encryptionKeyFile' | 'spool'> = {
  '--archive': 'archive',
  '--s3-endpoint': 's3Endpoint',
  '--encryption-key-file': 'encryptionKeyFile',
  '--spool': 'spool',
};
const FLAG_OPTIONS: Record<string, 'encryptionRequired' | 'partial' | 'verbose'> = {
  '--encryption-required': 'encryptionRequired',
  '--partial': 'partial',
  '-v': 'verbose',
  '--verbose': 'verbose',
};

/** A flag from its variable, as cli/main.ts optionsFromEnvironment reads it: on unless "", 0, false, no or off. */
function envFlag(v: string | undefined): boolean {
  return v !== undefined && !/^(?:|0|false|no|off)$/i.test(v.trim());
}

/** --prefetch's count (cli/options.ts parsePositiveInt), or undefined when commander would refuse it. */
function prefetchCount(v: string): number | undefined {
  return /^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 64 ? Number(v) : undefined;
}

/**
 * `args` (after node and the script) as a fetch with --prefetch, or undefined when the fast
 * path does not take them: then the full command line parses them (and reports what is wrong).
 */
export function parseSpoolFetch(args: readonly string[], env: NodeJS.ProcessEnv): SpoolFetchArgs | undefined {
  if (args[0] !== 'fetch') return undefined;
  const values: Partial<Record<'archive' | 's3Endpoint' | 'encryptionKeyFile' | 'spool', string>> = {};
  const flags: Partial<Record<'encryptionRequired' | 'partial' | 'verbose', true>> = {};
  let prefetch: string | undefined;
  let prefetchGiven = false;
  const positional: string[] = [];
  for (let i = 1; i < args.length; i++) {
    const arg = args[i]!;
    if (!arg.startsWith('-') || arg === '-') {
      positional.push(arg);
      continue;
    }
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const option = eq > 0 ? arg.slice(0, eq) : arg;
    const inline = eq > 0 ? arg.slice(eq + 1) : undefined;
    const value = VALUE_OPTIONS[option];
    const flag = FLAG_OPTIONS[option];
    if (value !== undefined) {
      const v = inline ?? args[++i];
      if (v === undefined || values[value] !== undefined || (inline === undefined && v.startsWith('-'))) return undefined;
      values[value] = v;
    } else if (flag !== undefined) {
      if (inline !== undefined || flags[flag]) return undefined;
      flags[flag] = true;
    } else if (option === '--prefetch') {
      if (prefetchGiven) return undefined;
      prefetchGiven = true;
      const next = args[i + 1];
      if (inline !== undefined) prefetch = inline;
      else if (next !== undefined && !next.startsWith('-')) prefetch = args[++i];
      else prefetch = '8'; // the option's preset
    } else {
      return undefined;
    }
  }
  if (positional.length !== 2) return undefined;
  // The command line wins over the environment; JSON messages are the full command's.
  if (env['WALSTREAM_LOG_FORMAT'] !== undefined && env['WALSTREAM_LOG_FORMAT'] !== 'text') return undefined;
  if (!prefetchGiven) prefetch = env['WALSTREAM_PREFETCH'];
  const count = prefetch === undefined ? undefined : prefetchCount(prefetch);
  const archive = values.archive ?? env['WALSTREAM_ARCHIVE'];
  if (count === undefined || archive === undefined || archive === '') return undefined;
  const s3Endpoint = values.s3Endpoint ?? env['AWS_ENDPOINT_URL'];
  const encryptionKeyFile = values.encryptionKeyFile ?? env['WALSTREAM_ENCRYPTION_KEY_FILE'];
  const spool = values.spool ?? env['WALSTREAM_SPOOL'];
  return {
    name: positional[0]!,
    dest: positional[1]!,
    archive,
    ...(s3Endpoint !== undefined ? { s3Endpoint } : {}),
    ...(encryptionKeyFile !== undefined ? { encryptionKeyFile } : {}),
    encryptionRequired: flags.encryptionRequired === true || envFlag(env['WALSTREAM_ENCRYPTION_REQUIRED']),
    prefetch: count,
    ...(spool !== undefined ? { spool } : {}),
    partial: flags.partial === true || envFlag(env['WALSTREAM_PARTIAL']),
    verbose: flags.verbose === true || envFlag(env['WALSTREAM_VERBOSE']),
  };
}

/**
 * Serve `walstream fetch` from the prefetch spool if the command line and the spool allow it:
 * the exit status (0), or undefined for the full command line to run the call (nothing was
 * served or printed then).
 */
export async function fetchFromSpool(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<number | undefined> {
  const a = parseSpoolFetch(argv.slice(2), env);
  if (!a) return undefined;
  const { fetch } = await import('../commands/fetch.js');
  const log = stderrLogger(a.verbose, { format: 'text' });
  const served = await fetch({
    name: a.name,
    dest: a.dest,
    openStore: () => Promise.reject(new Error('the spool-only fetch opens no archive')),
    archiveKey: `${a.archive} ${a.s3Endpoint ?? ''}`,
    log,
    partial: a.partial,
    prefetch: prefetchSettings(a, a.prefetch, log),
    spoolOnly: true,
  });
  return served === 'spool' ? 0 : undefined;
}
