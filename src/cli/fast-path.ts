// The calls PostgreSQL makes once per WAL file, run before the command line is built: `walstream
// fetch %f %p` and `walstream push %p` on a local, unencrypted archive, and a fetch whose segment
// the prefetch worker has already downloaded (any archive). PostgreSQL starts one process per
// file, so what such a call loads is most of what it costs: this path loads neither commander (nor
// the child_process, net and stream modules it pulls in) nor the rest of the command line, and it
// comes bundled into dist/cli/run-bundle.js (npm run build). It runs the same commands
// (commands/fetch.ts, commands/push.ts) with the same options, and reports a failure as the full
// command line does (util/log.ts reportFailure). It takes only command lines it reads exactly as
// commander does (test/unit/fast-path.test.ts compares the two): `fetch` or `push`, their
// arguments, and the options below with their WALSTREAM_* variables. Anything else (another
// option such as -Z or --log-format, --help, a repeated option, a value that looks like an option,
// an S3 or Azure archive, an encryption key) goes to the full command line, as does a fetch the
// spool cannot answer when the archive is not a plain local one (then nothing was written or
// printed). Only built-in modules may be imported from here down (a bundled module's imports are
// all loaded when the bundle is; test/unit/fast-path.test.ts checks the bundle).
import { join, resolve } from 'node:path';
import { parseArchiveUrl } from '../storage/location.js';
import { type Logger, reportFailure, stderrLogger } from '../util/log.js';
import { builtin, fs } from '../util/lazy.js';

const { closeSync, openSync, statSync } = fs;

const childProcess = builtin<typeof import('node:child_process')>('node:child_process');

/** The prefetch worker's log in its spool (archive/prefetch.ts PREFETCH_LOG; not imported, to keep startup light). */
const PREFETCH_LOG_NAME = 'prefetch.log';

/**
 * The variable holding an encryption key (cli/keys.ts KEY_VARIABLE; not imported: keys.ts opens
 * archives, which would bring the S3 and Azure backends into the bundle).
 */
export const KEY_VARIABLE_NAME = 'WALSTREAM_ENCRYPTION_KEY';

/** What fetch's options say about the prefetch worker (a subset of the command's options). */
export interface PrefetchCliOptions {
  archive?: string;
  s3Endpoint?: string;
  encryptionKeyFile?: string;
  encryptionRequired?: boolean;
  spool?: string;
  verifyRecords?: boolean;
}

/**
 * How a prefetch spool or a push marker directory names the archive it serves (its .archive
 * record, which bin/walstream.sh compares as text): the location as given and the S3 endpoint.
 */
export function archiveKey(archive: string, s3Endpoint: string | undefined): string {
  return `${archive} ${s3Endpoint ?? ''}`;
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
    if (opts.verifyRecords) args.push('--verify-records');
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

interface ArchiveArgs {
  archive: string;
  s3Endpoint?: string;
  encryptionKeyFile?: string;
  encryptionRequired: boolean;
  spool?: string;
  verbose: boolean;
}

/** A fetch command line the fast path takes, with the values commander would give. */
export interface FastFetch extends ArchiveArgs {
  command: 'fetch';
  name: string;
  dest: string;
  prefetch?: number;
  partial: boolean;
}

/** A push command line the fast path takes, with the values commander would give. */
export interface FastPush extends ArchiveArgs {
  command: 'push';
  path: string;
  sync: boolean;
  parallel: number;
}

type ValueKey = 'archive' | 's3Endpoint' | 'encryptionKeyFile' | 'spool' | 'parallel';
type FlagKey = 'encryptionRequired' | 'partial' | 'verbose' | 'noSync';

/** Each command's arguments and options (the long name, or the short one, as typed). */
const COMMANDS = {
  fetch: {
    positional: 2,
    values: { '--archive': 'archive', '--s3-endpoint': 's3Endpoint', '--encryption-key-file': 'encryptionKeyFile', '--spool': 'spool' },
    flags: { '--encryption-required': 'encryptionRequired', '--partial': 'partial', '-v': 'verbose', '--verbose': 'verbose' },
    optional: '--prefetch',
  },
  push: {
    positional: 1,
    values: { '--archive': 'archive', '--s3-endpoint': 's3Endpoint', '--encryption-key-file': 'encryptionKeyFile', '--spool': 'spool', '--parallel': 'parallel' },
    flags: { '--encryption-required': 'encryptionRequired', '--no-sync': 'noSync', '-v': 'verbose', '--verbose': 'verbose' },
    optional: undefined,
  },
} as const satisfies Record<string, { positional: number; values: Record<string, ValueKey>; flags: Record<string, FlagKey>; optional: string | undefined }>;

/** A flag from its variable, as cli/main.ts optionsFromEnvironment reads it: on unless "", 0, false, no or off. */
function envFlag(v: string | undefined): boolean {
  return v !== undefined && !/^(?:|0|false|no|off)$/i.test(v.trim());
}

/** cli/options.ts parsePositiveInt (1-64), or undefined where it refuses the value. */
function positiveInt(v: string): number | undefined {
  return /^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 64 ? Number(v) : undefined;
}

/**
 * `args` (after node and the script) as a fetch or push, or undefined when the fast path does not
 * take them: then the full command line parses them (and reports what is wrong).
 */
export function parseFastCommand(args: readonly string[], env: NodeJS.ProcessEnv): FastFetch | FastPush | undefined {
  const command = args[0];
  if (command !== 'fetch' && command !== 'push') return undefined;
  const spec: { positional: number; values: Record<string, ValueKey>; flags: Record<string, FlagKey>; optional: string | undefined } = COMMANDS[command];
  const values: Partial<Record<ValueKey, string>> = {};
  const flags: Partial<Record<FlagKey, true>> = {};
  let optional: string | undefined;
  let optionalGiven = false;
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
    const value = spec.values[option];
    const flag = spec.flags[option];
    if (value !== undefined) {
      const v = inline ?? args[++i];
      if (v === undefined || values[value] !== undefined || (inline === undefined && v.startsWith('-'))) return undefined;
      values[value] = v;
    } else if (flag !== undefined) {
      if (inline !== undefined || flags[flag]) return undefined;
      flags[flag] = true;
    } else if (option === spec.optional) {
      if (optionalGiven) return undefined;
      optionalGiven = true;
      const next = args[i + 1];
      if (inline !== undefined) optional = inline;
      else if (next !== undefined && !next.startsWith('-')) optional = args[++i];
      else optional = '8'; // --prefetch's preset
    } else {
      return undefined;
    }
  }
  if (positional.length !== spec.positional) return undefined;
  // The command line wins over the environment; JSON messages are the full command line's.
  if (env['WALSTREAM_LOG_FORMAT'] !== undefined && env['WALSTREAM_LOG_FORMAT'] !== 'text') return undefined;
  // So is the record check (the option itself is not one the fast path takes).
  if (envFlag(env['WALSTREAM_VERIFY_RECORDS'])) return undefined;
  const archive = values.archive ?? env['WALSTREAM_ARCHIVE'];
  if (archive === undefined || archive === '') return undefined;
  const s3Endpoint = values.s3Endpoint ?? env['AWS_ENDPOINT_URL'];
  const encryptionKeyFile = values.encryptionKeyFile ?? env['WALSTREAM_ENCRYPTION_KEY_FILE'];
  const spool = values.spool ?? env['WALSTREAM_SPOOL'];
  const common: ArchiveArgs = {
    archive,
    ...(s3Endpoint !== undefined ? { s3Endpoint } : {}),
    ...(encryptionKeyFile !== undefined ? { encryptionKeyFile } : {}),
    encryptionRequired: flags.encryptionRequired === true || envFlag(env['WALSTREAM_ENCRYPTION_REQUIRED']),
    ...(spool !== undefined ? { spool } : {}),
    verbose: flags.verbose === true || envFlag(env['WALSTREAM_VERBOSE']),
  };
  if (command === 'fetch') {
    const prefetchText = optionalGiven ? optional : env['WALSTREAM_PREFETCH'];
    const prefetch = prefetchText === undefined ? undefined : positiveInt(prefetchText);
    if (prefetchText !== undefined && prefetch === undefined) return undefined;
    return {
      command,
      name: positional[0]!,
      dest: positional[1]!,
      ...common,
      ...(prefetch !== undefined ? { prefetch } : {}),
      partial: flags.partial === true || envFlag(env['WALSTREAM_PARTIAL']),
    };
  }
  // Compression needs the full command line's parser.
  if (env['WALSTREAM_COMPRESS'] !== undefined) return undefined;
  const parallelText = values.parallel ?? env['WALSTREAM_PARALLEL'];
  const parallel = parallelText === undefined ? 1 : positiveInt(parallelText);
  if (parallel === undefined) return undefined;
  return { command, path: positional[0]!, ...common, sync: !(flags.noSync === true || envFlag(env['WALSTREAM_NO_SYNC'])), parallel };
}

/**
 * Run a fetch or push the fast path takes: its exit status, or undefined for the full command
 * line to run the call (nothing was written or printed then).
 */
export async function runFastPath(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<number | undefined> {
  const c = parseFastCommand(argv.slice(2), env);
  if (!c) return undefined;
  let path: string;
  try {
    const loc = parseArchiveUrl(c.archive);
    if (loc.kind !== 'local') return c.command === 'fetch' ? fetchFromSpool(c) : undefined;
    path = loc.path;
  } catch {
    return undefined; // the full command line says what is wrong with it
  }
  const keyGiven = (c.encryptionKeyFile !== undefined && c.encryptionKeyFile !== '') || (env[KEY_VARIABLE_NAME] !== undefined && env[KEY_VARIABLE_NAME] !== '');
  if (keyGiven || c.encryptionRequired) return c.command === 'fetch' ? fetchFromSpool(c) : undefined;
  const log = stderrLogger(c.verbose, { format: 'text' });
  const { LocalStore } = await import('../storage/local.js');
  let store: InstanceType<typeof LocalStore> | undefined;
  try {
    try {
      if (c.command === 'push') {
        const { push } = await import('../commands/push.js');
        await push({
          path: c.path,
          openStore: async () => (store ??= new LocalStore(path, { description: c.archive })),
          compression: 'none',
          noSync: !c.sync,
          parallel: c.parallel,
          markers: resolve(c.spool ?? '.walstream-push'),
          archiveKey: archiveKey(c.archive, c.s3Endpoint),
          encryption: { encrypts: false, requireEncrypted: false },
          log,
        });
      } else {
        const { fetch, FetchError, failureExitCode } = await import('../commands/fetch.js');
        await fetch({
          name: c.name,
          dest: c.dest,
          openStore: async () => {
            try {
              store ??= new LocalStore(path, { description: c.archive });
              return store;
            } catch (err) {
              throw new FetchError((err as Error).message, failureExitCode());
            }
          },
          archiveKey: archiveKey(c.archive, c.s3Endpoint),
          log,
          partial: c.partial,
          prefetch: c.prefetch !== undefined ? prefetchSettings(c, c.prefetch, log) : undefined,
        });
      }
    } finally {
      await store?.close();
    }
    return 0;
  } catch (err) {
    return reportFailure(err, 'text');
  }
}

/**
 * A fetch of any archive whose segment the prefetch spool holds: served (0), or undefined, having
 * written and printed nothing, for the full command line to fetch it.
 */
async function fetchFromSpool(c: FastFetch): Promise<number | undefined> {
  if (c.prefetch === undefined) return undefined;
  try {
    const { fetch } = await import('../commands/fetch.js');
    const log = stderrLogger(c.verbose, { format: 'text' });
    const served = await fetch({
      name: c.name,
      dest: c.dest,
      openStore: () => Promise.reject(new Error('the spool-only fetch opens no archive')),
      archiveKey: archiveKey(c.archive, c.s3Endpoint),
      log,
      partial: c.partial,
      prefetch: prefetchSettings(c, c.prefetch, log),
      spoolOnly: true,
    });
    return served === 'spool' ? 0 : undefined;
  } catch {
    return undefined; // nothing was served: the full command line fetches it (and reports)
  }
}
