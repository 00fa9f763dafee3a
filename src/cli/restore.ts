// `walstream restore`: options and output of the restore command (commands/restore.ts). Errors
// are thrown as one-line Errors for main() to print (exit status 1).
import { existsSync, realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { ArchiveStore } from '../storage/types.js';
import type { Logger } from '../util/log.js';
import { encryptionConfigured, KEY_VARIABLE, openReadArchive } from './keys.js';
import { addArchiveOptions, helpExamples, type ArchiveCliOptions } from './options.js';

interface RestoreCliOptions extends ArchiveCliOptions {
  pgdata?: string;
  backup: string;
  targetTime?: string;
  targetLsn?: string;
  targetName?: string;
  targetAction?: 'pause' | 'promote' | 'shutdown';
  targetTimeline?: string;
  standby?: boolean;
  primaryConninfo?: string;
  tablespaceMapping: Map<string, string>;
  fetchOptions?: string;
  sync: boolean;
  verbose?: boolean;
}

function parseMapping(v: string, previous: Map<string, string>): Map<string, string> {
  // OLD=NEW; "\=" for an "=" inside a path, as pg_basebackup takes it.
  const m = /^((?:[^=\\]|\\.)+)=((?:[^=\\]|\\.)+)$/.exec(v);
  if (!m) throw new InvalidArgumentError(`invalid tablespace mapping "${v}" (OLD=NEW, both absolute paths)`);
  const unquote = (s: string): string => s.replace(/\\(.)/g, '$1');
  const out = new Map(previous);
  out.set(unquote(m[1]!), unquote(m[2]!));
  return out;
}

/**
 * The walstream program as restore_command runs it, absolute: the installed command
 * (bin/walstream.sh, which serves a prefetched segment without starting Node) told to run this
 * Node, or this Node and this bin script where the shell script is not beside it.
 */
function programPath(): string[] {
  const script = process.argv[1];
  if (!script) throw new Error('cannot tell where the walstream program is');
  let bin = resolve(script);
  try {
    bin = realpathSync(bin);
  } catch {
    // keep the path as given
  }
  if (existsSync(`${bin}.sh`)) return ['env', `WALSTREAM_NODE=${process.execPath}`, `${bin}.sh`];
  return [process.execPath, bin];
}

export function registerRestoreCommand(program: Command, o: { logger: (verbose: boolean) => Logger }): void {
  addArchiveOptions(program.command('restore').description('make a new data directory from a base backup in the archive, set up to recover from the archive: then pg_ctl start'), 'the archive to restore from')
    .addOption(new Option('-D, --pgdata <dir>', 'the new data directory (created mode 0700, or an existing empty one)'))
    .addOption(new Option('--backup <name>', 'the backup to restore: its name (YYYYMMDDTHHMMSSZ) or latest').default('latest'))
    .addOption(new Option('--target-time <time>', 'recover up to this time (recovery_target_time), e.g. "2026-12-04 08:51:36+00"').conflicts(['targetLsn', 'targetName', 'standby']))
    .addOption(new Option('--target-lsn <lsn>', 'recover up to this LSN (recovery_target_lsn)').conflicts(['targetTime', 'targetName', 'standby']))
    .addOption(new Option('--target-name <name>', 'recover up to this restore point, made with pg_create_restore_point() (recovery_target_name)').conflicts(['targetTime', 'targetLsn', 'standby']))
    .addOption(new Option('--target-action <action>', "at the target: pause, promote or shutdown (recovery_target_action; PostgreSQL's default: pause)").choices(['pause', 'promote', 'shutdown']))
    .addOption(new Option('--target-timeline <tli>', "recover along this timeline: latest (PostgreSQL's default), current, or a number (recovery_target_timeline)"))
    .option('--standby', 'set it up as a standby (standby.signal): it replays the archive, then streams from --primary-conninfo')
    .option('--primary-conninfo <conninfo>', "with --standby: the primary's connection string (primary_conninfo)")
    .addOption(new Option('-T, --tablespace-mapping <OLD=NEW>', 'restore the tablespace at OLD (its location on the server backed up) to NEW; repeatable').argParser(parseMapping).default(new Map(), 'none'))
    .option('--fetch-options <args>', 'more options for walstream fetch in restore_command, e.g. "--prefetch 8"')
    .option('--no-sync', 'do not fsync what is written (testing only)')
    .option('-v, --verbose', 'output verbose messages')
    .addHelpText(
      'after',
      '\nrestore_command runs walstream fetch with this archive and its --s3-endpoint, --encryption-key-file (its absolute path) and\n' +
        `--encryption-required; credentials, AWS_REGION and ${KEY_VARIABLE} are never written: PostgreSQL's environment must have them.\n` +
        'Exit status: 0 when restored; 1 on any error (the directory is then left unable to start: delete it).',
    )
    .addHelpText(
      'after',
      helpExamples([
        ['a new server from the newest backup, recovering to the end of the archived WAL once started (then: pg_ctl -D /srv/pg/db1 start)', 'walstream restore --archive s3://wal-bucket/db1 -D /srv/pg/db1'],
        ['point-in-time recovery: the state of 08:00 UTC, then promoted', "walstream restore --archive s3://wal-bucket/db1 -D /srv/pg/db1-0800 --target-time '2026-12-04 08:00:00+00' --target-action promote"],
      ]),
    )
    .action(async (opts: RestoreCliOptions) => {
      const { restore } = await import('../commands/restore.js');
      if (!opts.archive) throw new Error('no archive given: use --archive URL or WALSTREAM_ARCHIVE');
      if (!opts.pgdata) throw new Error('no data directory given: use -D DIR');
      if (opts.primaryConninfo !== undefined && !opts.standby) throw new Error('--primary-conninfo applies to --standby only');
      if (opts.standby && opts.targetAction !== undefined) throw new Error('--target-action applies to a recovery to a target, not to --standby');
      const archive = opts.archive;
      const target =
        opts.targetTime !== undefined
          ? { kind: 'time' as const, value: opts.targetTime }
          : opts.targetLsn !== undefined
            ? { kind: 'lsn' as const, value: opts.targetLsn }
            : opts.targetName !== undefined
              ? { kind: 'name' as const, value: opts.targetName }
              : undefined;
      let store: ArchiveStore | undefined;
      try {
        await restore({
          archive,
          ...(opts.s3Endpoint !== undefined ? { s3Endpoint: opts.s3Endpoint } : {}),
          ...(opts.encryptionKeyFile !== undefined ? { encryptionKeyFile: opts.encryptionKeyFile } : {}),
          encryptionRequired: opts.encryptionRequired === true,
          keyFromEnvironment: opts.encryptionKeyFile === undefined && encryptionConfigured(opts),
          openStore: async () => {
            store = await openReadArchive(archive, opts, 'always');
            return store;
          },
          directory: opts.pgdata,
          backup: opts.backup,
          ...(target ? { target } : {}),
          ...(opts.targetAction ? { targetAction: opts.targetAction } : {}),
          ...(opts.targetTimeline !== undefined ? { targetTimeline: opts.targetTimeline } : {}),
          standby: opts.standby === true,
          ...(opts.primaryConninfo !== undefined ? { primaryConninfo: opts.primaryConninfo } : {}),
          tablespaceMapping: opts.tablespaceMapping,
          fetchOptions: opts.fetchOptions?.split(/\s+/).filter((a) => a !== '') ?? [],
          program: programPath(),
          noSync: opts.sync === false,
          log: o.logger(opts.verbose === true),
          out: (line) => process.stdout.write(`${line}\n`),
        });
      } finally {
        await store?.close();
      }
    });
}
