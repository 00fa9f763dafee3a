// The operations commands on an archive: status, verify and cleanup (src/ops/). Option parsing
// and output only; errors are thrown as one-line Errors for main() to print (exit status 1).
import { type Command, InvalidArgumentError } from 'commander';
import type { ArchiveStore } from '../storage/types.js';
import { stderrLogger as formattedLogger, type LogFormat, type Logger } from '../util/log.js';
import { addArchiveOptions, addConnectionOptions, helpExamples, parsePositiveInt, type ArchiveCliOptions, type ConnectionCliOptions } from './options.js';
import { openReadArchive } from './keys.js';

function archiveOptions(cmd: Command): Command {
  return addArchiveOptions(cmd, 'the archive');
}

async function withArchive<T>(opts: ArchiveCliOptions, fn: (store: ArchiveStore) => Promise<T>): Promise<T> {
  if (!opts.archive) throw new Error('no archive given: use --archive URL or WALSTREAM_ARCHIVE');
  // Plain objects in an archive recorded as encrypted are refused, with or without a key.
  const store = await openReadArchive(opts.archive, opts, 'always');
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

function parseRetain(v: string): number {
  if (!/^\d{1,6}$/.test(v)) throw new InvalidArgumentError(`invalid number "${v}"`);
  return Number(v);
}

/** cleanup --retain-backups / --retain-days: old base backups, interrupted ones, the WAL only they needed, and leftovers. */
async function retainBackups(store: ArchiveStore, opts: CleanupCliOptions, log: Logger): Promise<void> {
  const { cleanupBackups, cleanupLeftovers, parseDuration } = await import('../ops/cleanup.js');
  const { formatBytes, plural } = await import('../ops/format.js');
  const dryRun = opts.dryRun === true;
  const say = (line: string): void => {
    if (!opts.json && (opts.verbose || dryRun)) process.stdout.write(`${line}\n`);
  };
  const wal: string[] = [];
  const r = await cleanupBackups({
    store,
    retain: { ...(opts.retainBackups !== undefined ? { backups: opts.retainBackups } : {}), ...(opts.retainDays !== undefined ? { days: opts.retainDays } : {}) },
    dryRun,
    log,
    interruptedAgeMs: parseDuration(opts.leftoverAge ?? '1h'),
    onRemoveBackup: (name, objects, why) => say(`${dryRun ? 'would remove' : 'removed'} ${why === 'interrupted' ? 'interrupted ' : ''}backup ${name} (${plural(objects.length, 'object')})`),
    onRemove: (f) => {
      wal.push(f.name);
      say(`${dryRun ? 'would remove' : 'removed'} ${f.name}`);
    },
  });
  const left = await cleanupLeftovers({ store, dryRun, leftoverAgeMs: parseDuration(opts.leftoverAge ?? '1h') }, log);
  if (opts.json) {
    const out = {
      archive: store.description,
      dryRun,
      backups: { removed: r.removed, interrupted: r.interrupted, kept: r.kept },
      walBefore: r.walBefore ?? null,
      removed: wal,
      count: wal.length,
      bytes: r.wal?.bytes ?? 0,
      leftovers: { removed: left.removed.map((l) => l.name), count: left.removed.length },
    };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return;
  }
  const verb = dryRun ? 'would remove' : 'removed';
  process.stdout.write(
    `${dryRun ? 'dry run: ' : ''}${verb} ${plural(r.removed.length, 'backup')}${r.interrupted.length ? ` and ${plural(r.interrupted.length, 'interrupted backup')}` : ''}, kept ${plural(r.kept.length, 'backup')}; ${verb} ${plural(wal.length, 'WAL object')} (${formatBytes(r.wal?.bytes ?? 0)})${r.walBefore ? ` before ${r.walBefore}, the first WAL file of the oldest backup kept` : ''}\n`,
  );
}

function parseSegmentName(v: string): string {
  if (!/^[0-9A-F]{24}$/.test(v)) throw new InvalidArgumentError(`"${v.slice(0, 80)}" is not a WAL segment name (24 upper-case hexadecimal digits)`);
  return v;
}

/** Thrown after a report was printed: the report said it all, the exit status carries the verdict. */
class VerdictError extends Error {
  readonly exitCode = 1;
  constructor(message: string) {
    super(message);
    this.name = 'VerdictError';
  }
}

interface StatusCliOptions extends ArchiveCliOptions, ConnectionCliOptions {
  slot?: string;
  receiverName: string;
  json?: boolean;
}

interface VerifyCliOptions extends ArchiveCliOptions {
  from?: string;
  records?: boolean;
  parallel: number;
  json?: boolean;
  verbose?: boolean;
}

interface CleanupCliOptions extends ArchiveCliOptions {
  before?: string;
  olderThan?: string;
  leftoverAge?: string;
  keepSlots?: string;
  retainBackups?: number;
  retainDays?: number;
  dryRun?: boolean;
  json?: boolean;
  verbose?: boolean;
}

export function registerOpsCommands(program: Command): void {
  // Messages on standard error follow the global --log-format; reports go to standard output.
  const stderrLogger = (verbose: boolean): Logger => formattedLogger(verbose, { format: program.opts<{ logFormat?: LogFormat }>().logFormat ?? 'text' });
  addConnectionOptions(archiveOptions(program.command('status').description('show what the archive holds per timeline, its gaps and segment in progress, and (given a server) how far it is behind')), {
    password: false,
  })
    .option('-S, --slot <slotname>', "also report this replication slot's restart_lsn")
    .option('--receiver-name <name>', 'the application_name of the walstream receive to report on (its lag in time)', 'walstream')
    .option('--json', 'print the status as JSON (fields described in the README)')
    .addHelpText(
      'after',
      '\nThe server is asked only when -d, -h, -p, -U or -S is given (other settings from PG* variables and ~/.pgpass).\n' +
        'Exit status: 0 when the status was printed; 1 when the archive cannot be listed or the server cannot be asked.',
    )
    .addHelpText(
      'after',
      helpExamples([
        ['what the archive holds', 'walstream status --archive /mnt/wal-archive'],
        ["how far the archive is behind the server and its receiver's slot, as JSON", "walstream status --archive s3://wal-bucket/db1 -d 'host=db1 user=replicator' -S walstream --json"],
      ]),
    )
    .action(async (opts: StatusCliOptions) => {
      const [{ archiveStatus, formatStatus, statusJson }, { probeServer }] = await Promise.all([import('../ops/status.js'), import('../ops/server.js')]);
      const wantsServer = [opts.dbname, opts.host, opts.port, opts.username, opts.slot].some((v) => v !== undefined);
      await withArchive(opts, async (store) => {
        const server = wantsServer
          ? await probeServer({ dbname: opts.dbname, host: opts.host, port: opts.port, user: opts.username, applicationName: 'walstream status' }, opts.slot, opts.receiverName)
          : undefined;
        const report = await archiveStatus({ store, server });
        process.stdout.write(opts.json ? statusJson(report) : formatStatus(report));
      });
    });

  archiveOptions(program.command('verify').description("prove the archive can be replayed: every object against its checksum, every segment's headers, no missing segment or history file"))
    .option('--from <segment>', 'start at this segment (e.g. the first segment of the oldest base backup you keep)', parseSegmentName)
    .option(
      '--records',
      'also decode every WAL record of the segments recovery reads, in order: record headers, CRC-32C, xl_prev links, segment switches, timeline switches (reads those segments a second time)',
    )
    .option('--parallel <n>', 'objects read at a time (1-64)', parsePositiveInt, 4)
    .option('--json', 'print the report as JSON (fields described in the README)')
    .option('-v, --verbose', 'report progress and each problem as it is found, on standard error')
    .addHelpText(
      'after',
      '\nExit status: 0 only when every needed segment and history file is there and intact (with --records: and every\n' +
        'record in them replays); 1 when any problem was found (each is listed with the object it concerns; a record\n' +
        'problem with its offset and LSN) or the archive cannot be read.',
    )
    .addHelpText(
      'after',
      helpExamples([
        ['check the whole archive, down to every WAL record', 'walstream verify --archive /mnt/wal-archive --records'],
        ['check from the first segment of the oldest base backup kept, 16 objects at a time', 'walstream verify --archive s3://wal-bucket/db1 --from 000000010000000A00000000 --parallel 16'],
      ]),
    )
    .action(async (opts: VerifyCliOptions) => {
      const { verifyArchive, formatVerify, verifyJson } = await import('../ops/verify.js');
      await withArchive(opts, async (store) => {
        const report = await verifyArchive({ store, from: opts.from, records: opts.records === true, parallel: opts.parallel, log: stderrLogger(opts.verbose === true) });
        process.stdout.write(opts.json ? verifyJson(report) : formatVerify(report));
        if (!report.ok) throw new VerdictError(`${store.description}: verification failed with ${report.problems.length} problem${report.problems.length === 1 ? '' : 's'}`);
      });
    });

  archiveOptions(
    program
      .command('cleanup')
      .description("remove WAL the archive no longer needs: use as archive_cleanup_command = 'walstream cleanup %r', or with --before / --older-than")
      .argument('[walfile]', 'remove what is older than this WAL file on its timeline and its ancestors (%r)'),
  )
    .option('--before <segment>', 'remove what is older than this segment on its timeline and its ancestors')
    .option('--older-than <duration>', 'remove what was last modified longer ago than this (e.g. 7d, 12h, 1w2d)')
    .option('--leftover-age <duration>', 'temp files and multipart uploads of writers that cannot be checked (another host) are removed once idle this long', '1h')
    .option('--keep-slots <file>', 'keep every segment the replication slots in this walstream serve --slot-file still need (from their oldest restart_lsn on)')
    .option('--retain-backups <n>', 'keep the newest n base backups, remove older ones and the WAL only they needed (instead of a WAL file, --before or --older-than)', parseRetain)
    .option('--retain-days <days>', 'keep the base backups that ended less than this many days ago (the newest always), remove older ones and the WAL only they needed', parseRetain)
    .option('-n, --dry-run', 'print what would be removed; remove nothing')
    .option('--json', 'print the result as JSON (fields described in the README)')
    .option('-v, --verbose', 'print each object removed')
    .addHelpText(
      'after',
      '\nHistory files and the newest segment are never removed. Nothing is removed from an archive that cannot be\n' +
        'listed completely. Every run also removes what killed writers left behind: temp files whose writer is gone\n' +
        '(on another host: idle for --leftover-age) and S3 multipart uploads idle for --leftover-age; never one a\n' +
        'live writer may still publish. As archive_cleanup_command (the WAL file argument) it prints nothing unless -v.\n' +
        'Exit status: 0 when done (also when there was nothing to remove); 1 on any error, with nothing or only\n' +
        'the oldest part of the plan removed.',
    )
    .addHelpText(
      'after',
      helpExamples([
        ['in postgresql.conf of a standby: remove what no restart point needs any more', "archive_cleanup_command = 'walstream cleanup --archive /mnt/wal-archive %r'"],
        ['show what a 14-day retention would remove, removing nothing', 'walstream cleanup --archive s3://wal-bucket/db1 --older-than 14d --dry-run'],
      ]),
    )
    .action(async (walfile: string | undefined, opts: CleanupCliOptions) => {
      const { cleanupArchive, cutoffSegment, parseDuration, CleanupError } = await import('../ops/cleanup.js');
      const { formatBytes, plural } = await import('../ops/format.js');
      const { leftoverWhat } = await import('../ops/inventory.js');
      const given = [walfile !== undefined, opts.before !== undefined, opts.olderThan !== undefined].filter(Boolean).length;
      if (opts.retainBackups !== undefined || opts.retainDays !== undefined) {
        if (given !== 0 || opts.keepSlots !== undefined) throw new CleanupError('--retain-backups and --retain-days decide which WAL goes: give no WAL file, --before, --older-than or --keep-slots with them');
        await withArchive(opts, (store) => retainBackups(store, opts, stderrLogger(opts.verbose === true)));
        return;
      }
      if (given !== 1) throw new CleanupError('give exactly one of: a WAL file name (%r), --before SEGMENT, --older-than DURATION');
      const leftoverAgeMs = parseDuration(opts.leftoverAge ?? '1h');
      let keepFrom: { lsn: bigint; why: string } | undefined;
      if (opts.keepSlots !== undefined) {
        const { readSlotState } = await import('../server/slots.js');
        let slots: ReturnType<typeof readSlotState>;
        try {
          slots = readSlotState(opts.keepSlots);
        } catch (err) {
          throw new CleanupError(`cannot read the slot file "${opts.keepSlots}": ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'it does not exist' : (err as Error).message}; nothing was removed`);
        }
        const holding = slots.filter((sl) => sl.restartLsn !== undefined).sort((a, b) => (a.restartLsn! < b.restartLsn! ? -1 : 1));
        const oldest = holding[0];
        if (oldest) keepFrom = { lsn: oldest.restartLsn!, why: `replication slot "${oldest.name}"${holding.length > 1 ? ` (the oldest of ${holding.length})` : ''}` };
      }
      let rule: import('../ops/cleanup.js').CleanupRule | undefined;
      if (opts.olderThan !== undefined) {
        rule = { kind: 'older-than', cutoff: new Date(Date.now() - parseDuration(opts.olderThan)) };
      } else {
        const name = (walfile ?? opts.before)!;
        if (opts.before !== undefined && !/^[0-9A-F]{24}$/.test(name)) throw new CleanupError(`--before: "${name.slice(0, 80)}" is not a WAL segment name`);
        const seg = cutoffSegment(name);
        // The all-zero name (PostgreSQL's %r before the first restart point): nothing may go.
        if (seg !== undefined) rule = { kind: 'before', segment: seg };
      }
      const quiet = walfile !== undefined && !opts.verbose && !opts.dryRun && !opts.json;
      const log = stderrLogger(opts.verbose === true);
      await withArchive(opts, async (store) => {
        const names: string[] = [];
        const onRemove = (f: { name: string }): void => {
          names.push(f.name);
          if (!opts.json && (opts.verbose || opts.dryRun)) process.stdout.write(`${opts.dryRun ? 'would remove' : 'removed'} ${f.name}\n`);
        };
        const onRemoveLeftover = (l: { name: string; kind: string }): void => {
          if (!opts.json && (opts.verbose || opts.dryRun)) {
            const upload = l.kind === 'multipart-upload';
            const verb = opts.dryRun ? (upload ? 'would abort the incomplete upload' : 'would remove leftover') : upload ? 'aborted the incomplete upload' : 'removed leftover';
            process.stdout.write(`${verb} ${l.name}\n`);
          }
        };
        const result = await cleanupArchive({ store, rule, dryRun: opts.dryRun === true, log, onRemove, leftoverAgeMs, onRemoveLeftover, ...(keepFrom ? { keepFrom } : {}) });
        const left = result.leftovers;
        if (opts.json) {
          const out = {
            archive: store.description,
            dryRun: opts.dryRun === true,
            removed: names,
            count: names.length,
            bytes: result.bytes,
            kept: rule ? result.plan.kept : null,
            warnings: [...result.plan.warnings, ...(left.unavailable !== undefined ? [left.unavailable] : []), ...left.failed.map((f) => `cannot remove ${f.name}: ${f.error}`)],
            leftovers: {
              removed: left.removed.map((l) => l.name),
              count: left.removed.length,
              bytes: left.bytes,
              kept: left.kept,
              failed: left.failed,
              unavailable: left.unavailable ?? null,
            },
          };
          process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
        } else if (!quiet) {
          const n = result.plan.remove.length;
          const what = `${plural(n, 'object')} (${formatBytes(result.bytes)})`;
          process.stdout.write(opts.dryRun ? `dry run: ${what} would be removed from ${store.description}; nothing was removed\n` : `removed ${what} from ${store.description}\n`);
          if (left.removed.length > 0) {
            const uploads = left.removed.filter((l) => l.kind === 'multipart-upload').length;
            const gone = `${leftoverWhat(left.removed.length, uploads)} of writers that are gone (${formatBytes(left.bytes)})`;
            process.stdout.write(opts.dryRun ? `dry run: ${gone} would be removed\n` : `removed ${gone}\n`);
          }
          if (left.kept > 0) process.stdout.write(`kept ${plural(left.kept, 'leftover')} a writer may still be at work on\n`);
        }
      });
    });
}
