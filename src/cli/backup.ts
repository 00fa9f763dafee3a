// The command line of walstream backup (a base backup into the archive) and walstream backup list.
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { Logger } from '../util/log.js';
import { keyringFromOptions, openReadArchive } from './keys.js';
import { passwordFromOptions } from './password.js';
import { addArchiveOptions, addConnectionOptions, compressOption, helpExamples, type ArchiveCliOptions, type CompressSpec, type ConnectionCliOptions } from './options.js';

interface BackupCliOptions extends ArchiveCliOptions, ConnectionCliOptions {
  compress: CompressSpec;
  checkpoint: 'fast' | 'spread';
  maxRate?: number;
  label?: string;
  progress?: boolean;
  wal: 'none' | 'stream';
  walTimeout: number;
  leftoverAge: string;
  readBack?: boolean;
  verbose?: boolean;
}

/** pg_basebackup -r: kB/s, or with a suffix k (kB/s) or M (MB/s); 32 kB/s to 1 GB/s. */
export function parseMaxRate(v: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kM]?)\s*$/.exec(v);
  if (!m) throw new InvalidArgumentError(`invalid transfer rate "${v}" (kB/s, or a number with k or M)`);
  const kb = Math.round(Number(m[1]) * (m[2] === 'M' ? 1024 : 1));
  if (kb < 32 || kb > 1048576) throw new InvalidArgumentError(`transfer rate "${v}" is out of range (32 kB/s to 1024 MB/s)`);
  return kb;
}

function parseWalTimeout(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) > 86400) throw new InvalidArgumentError(`invalid timeout "${v}" (whole seconds, 0 to 86400)`);
  return Number(v) * 1000;
}

export function registerBackupCommands(program: Command, deps: { logger: (verbose: boolean) => Logger; stop: () => Promise<void> }): void {
  const cmd = program.command('backup').description('take a base backup of a PostgreSQL server (BASE_BACKUP) straight into the archive, verified against its manifest; "backup list" lists them');
  addConnectionOptions(cmd, { password: true });
  addArchiveOptions(cmd, 'the archive to store the backup in (its WAL must be archived there too)')
    .addOption(compressOption("the backup's objects"))
    .addOption(new Option('-c, --checkpoint <mode>', 'set fast or spread checkpointing').choices(['fast', 'spread']).default('spread'))
    .addOption(new Option('-r, --max-rate <rate>', 'maximum transfer rate from the server (kB/s, or with k or M)').argParser(parseMaxRate))
    .option('-l, --label <label>', 'set the backup label (default "walstream backup <name>")')
    .option('-P, --progress', 'show progress information')
    .addOption(
      new Option('--wal <method>', "how the backup's WAL reaches the archive: none = archived by walstream receive or archive_command; stream = streamed by the backup itself over a second connection")
        .choices(['none', 'stream'])
        .default('none'),
    )
    .addOption(new Option('--wal-timeout <secs>', 'after the backup, wait this long for its WAL to be archived').argParser(parseWalTimeout).default(60_000, '60'))
    .option('--leftover-age <duration>', 'remove interrupted backups of earlier runs once their newest object is this old', '1h')
    .option('--read-back', 'read every stored object back and check it against the manifest (default: each file is checked as it is stored)')
    .option('-v, --verbose', 'output verbose messages')
    .addHelpText(
      'after',
      '\nThe backup counts only once its record is written, after every object is stored and checked against the\n' +
        "server's manifest and its WAL is in the archive. Connection settings also come from PGHOST, PGPORT, PGUSER,\n" +
        'PGPASSWORD and ~/.pgpass. Exit status: 0 when the backup is recorded; 1 on any error (nothing recorded).',
    )
    .addHelpText(
      'after',
      helpExamples([
        [
          'a base backup into the archive that walstream receive (or archive_command) fills with the WAL of db1, with a fast checkpoint, gzip-compressed',
          "walstream backup --archive s3://wal-bucket/db1 -d 'host=db1 user=replicator' -c fast -Z gzip",
        ],
        ['the backups in that archive, and whether the WAL to restore each is there', 'walstream backup list --archive s3://wal-bucket/db1'],
      ]),
    )
    .action(async (opts: BackupCliOptions) => {
      if (!opts.archive) throw new Error('no archive given: use --archive URL or WALSTREAM_ARCHIVE');
      const [{ backup }, { parseDuration }, { formatBytes }, { formatDuration }] = await Promise.all([
        import('../commands/backup.js'),
        import('../ops/cleanup.js'),
        import('../ops/format.js'),
        import('../observe/progress.js'),
      ]);
      const log = deps.logger(opts.verbose === true);
      const keyring = await keyringFromOptions(opts);
      const password = await passwordFromOptions(opts);
      const tty = process.stderr.isTTY === true;
      let last: { done: number; total: number | undefined } | undefined;
      let shownAt = 0;
      const progressLine = (p: { done: number; total: number | undefined }): string =>
        `backup: ${formatBytes(p.done)}${p.total ? ` of ${formatBytes(p.total)} (${Math.min(100, Math.floor((p.done * 100) / p.total))}%)` : ''} sent by the server`;
      const onProgress = opts.progress
        ? (done: number, total: number | undefined): void => {
            last = { done, total };
            if (!tty || Date.now() - shownAt < 250) return;
            shownAt = Date.now();
            log.status?.(progressLine(last));
          }
        : undefined;
      const result = await backup({
        connection: { dbname: opts.dbname, host: opts.host, port: opts.port, user: opts.username, password, applicationName: 'walstream backup' },
        archive: opts.archive,
        s3Endpoint: opts.s3Endpoint,
        ...(keyring ? { keyring } : {}),
        compression: opts.compress.method,
        fastCheckpoint: opts.checkpoint === 'fast',
        maxRateKb: opts.maxRate,
        label: opts.label,
        wal: opts.wal,
        walTimeoutMs: opts.walTimeout,
        leftoverAgeMs: parseDuration(opts.leftoverAge),
        readBack: opts.readBack === true,
        log,
        ...(onProgress ? { onProgress } : {}),
        stop: deps.stop(),
      }).finally(() => {
        if (opts.progress && tty) log.status?.(undefined);
      });
      if (opts.progress && last) log.info(progressLine(last));
      const r = result.record;
      const stored = r.objects.reduce((n, o) => n + o.storedSize, 0);
      process.stdout.write(
        `backup ${r.name}: start ${r.startLsn}, end ${r.endLsn}, timeline ${r.timeline}, ${formatBytes(r.size)} (${formatBytes(stored)} stored), ${formatDuration(result.durationMs / 1000)}\n`,
      );
    });

  addArchiveOptions(cmd.command('list').description('list the base backups in the archive: complete ones with their WAL, and interrupted ones'), 'the archive to list')
    .option('--json', 'print the list as JSON')
    .action(async (own: ArchiveCliOptions & { json?: boolean }, command: Command) => {
      // The archive options may come before "list" too (then they are the parent command's).
      const opts = { ...command.optsWithGlobals<ArchiveCliOptions>(), ...own };
      if (!opts.archive) throw new Error('no archive given: use --archive URL or WALSTREAM_ARCHIVE');
      const [{ listArchiveBackups }, { formatBytes }] = await Promise.all([import('../commands/backup.js'), import('../ops/format.js')]);
      const store = await openReadArchive(opts.archive, opts, 'always');
      try {
        const list = await listArchiveBackups(store);
        if (opts.json) {
          const out = list.map((b) =>
            b.complete
              ? {
                  name: b.name,
                  status: 'complete',
                  startLsn: b.record!.startLsn,
                  endLsn: b.record!.endLsn,
                  timeline: b.record!.timeline,
                  startTime: b.record!.startTime,
                  endTime: b.record!.endTime,
                  size: b.record!.size,
                  storedSize: b.record!.objects.reduce((n, o) => n + o.storedSize, 0),
                  startWal: b.record!.startWal,
                  endWal: b.record!.endWal,
                  walToConsistency: b.walToConsistency,
                  walToNow: b.walToNow,
                  ...(b.firstMissingWal !== undefined ? { firstMissingWal: b.firstMissingWal } : {}),
                  objects: b.record!.objects.map((o) => o.name),
                }
              : { name: b.name, status: 'interrupted', objects: b.objects },
          );
          process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
          return;
        }
        if (list.length === 0) {
          process.stdout.write(`no backups in ${store.description}\n`);
          return;
        }
        for (const b of list) {
          if (!b.complete) {
            process.stdout.write(`${b.name}  interrupted (${b.objects!.length} object${b.objects!.length === 1 ? '' : 's'}, no record): not usable\n`);
            continue;
          }
          const r = b.record!;
          const wal = b.walToNow ? 'WAL complete to now' : b.walToConsistency ? `WAL complete to consistency, gap at ${b.firstMissingWal}` : `WAL incomplete: ${b.firstMissingWal} missing`;
          process.stdout.write(`${b.name}  start ${r.startLsn}  end ${r.endLsn}  timeline ${r.timeline}  ${r.startTime}  ${formatBytes(r.size)}  ${wal}\n`);
        }
      } finally {
        await store.close();
      }
    });
}
