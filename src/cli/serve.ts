// The command line of walstream serve, and the server options receive --serve shares with it.
import { Option, InvalidArgumentError, type Command } from 'commander';
import type { ListenAddress } from '../observe/listen.js';
import type { ServerSettings } from '../commands/serve.js';
import { addArchiveOptions, helpExamples, metricsListenOption, parseListen, type ArchiveCliOptions } from './options.js';
import { collectOldGarbage } from '../util/heap.js';

export interface ServerCliOptions {
  passwordFile?: string;
  trust?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  tlsRequired?: boolean;
  slotFile?: string;
  clientSlot?: string[];
  maxClients?: number;
}

function parseMaxClients(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 1000) throw new InvalidArgumentError(`invalid number "${v}" (1-1000)`);
  return Number(v);
}

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

/** The options of the server side, on `serve` and on `receive` (with --serve). */
export function addServerOptions(cmd: Command, prefix: string): Command {
  return cmd
    .option(
      '--password-file <file>',
      `${prefix}check clients' passwords against this file: lines "user:secret", the secret a SCRAM verifier as pg_authid holds it, an md5 hash or a password ("*" as user for any); must be private (chmod 600)`,
    )
    .option('--trust', `${prefix}let every client that can connect stream, without a password`)
    .option('--tls-cert <file>', `${prefix}TLS certificate (PEM): clients asking for SSL get TLS; without it walstream answers that SSL is not supported`)
    .option('--tls-key <file>', `${prefix}the certificate's private key (PEM)`)
    .option('--tls-required', `${prefix}refuse clients that do not use TLS`)
    .option('--slot-file <file>', `${prefix}keep replication slots created by clients in this file, so they last across restarts and cleanup --keep-slots can honour them`)
    .addOption(new Option('--client-slot <name>', `${prefix}create this physical replication slot for clients if missing (repeatable); kept with --slot-file`).argParser(collect))
    .option('--max-clients <n>', `${prefix}clients at once (max_wal_senders; default 64)`, parseMaxClients);
}

/** The ServerSettings the options give (listen address from the caller). */
export function serverSettings(listen: ListenAddress, o: ServerCliOptions, env: NodeJS.ProcessEnv = process.env): ServerSettings {
  if ((o.tlsCert === undefined) !== (o.tlsKey === undefined)) throw new Error('--tls-cert and --tls-key go together');
  if (o.tlsRequired && o.tlsCert === undefined) throw new Error('--tls-required needs --tls-cert and --tls-key');
  return {
    listen,
    auth: { trust: o.trust === true, ...(o.passwordFile !== undefined ? { passwordFile: o.passwordFile } : {}), ...(env['WALSTREAM_SERVE_PASSWORD'] ? { password: env['WALSTREAM_SERVE_PASSWORD'] } : {}) },
    ...(o.tlsCert !== undefined && o.tlsKey !== undefined ? { tls: { certFile: o.tlsCert, keyFile: o.tlsKey, required: o.tlsRequired === true } } : {}),
    ...(o.slotFile !== undefined ? { slotFile: o.slotFile } : {}),
    ...(o.clientSlot ? { slots: o.clientSlot } : {}),
    ...(o.maxClients !== undefined ? { maxClients: o.maxClients } : {}),
  };
}

function parsePollInterval(v: string): number {
  if (!/^\d+(\.\d+)?$/.test(v) || Number(v) < 0.05 || Number(v) > 3600) throw new InvalidArgumentError(`invalid interval "${v}" (seconds, 0.05 to 3600)`);
  return Math.round(Number(v) * 1000);
}

interface ServeCliOptions extends ServerCliOptions, ArchiveCliOptions {
  listen: ListenAddress;
  directory?: string;
  pollInterval?: number;
  metricsListen?: ListenAddress;
  verbose?: boolean;
}

export function registerServeCommand(
  program: Command,
  deps: {
    logger: (verbose: boolean) => import('../util/log.js').Logger;
    stop: () => Promise<void>;
  },
): void {
  const cmd = addArchiveOptions(
    program
      .command('serve')
      .description("serve WAL from the archive and/or a receiver's directory to standbys and pg_receivewal over the replication protocol, as a primary would")
      .requiredOption('--listen <[host:]port>', 'where to listen for replication connections (host defaults to 127.0.0.1)', parseListen),
    'serve WAL from this archive',
  ).option('-D, --directory <dir>', 'serve WAL from this directory that walstream receive or pg_receivewal writes (its .partial too)');
  addServerOptions(cmd, '')
    .option('--poll-interval <secs>', 'while clients wait for new WAL, look at the archive and directory this often (default 1)', parsePollInterval)
    .addOption(metricsListenOption())
    .option('-v, --verbose', 'report each connection and command')
    .addHelpText(
      'after',
      "\nClients connect with replication=true as to a primary: primary_conninfo = 'host=... port=... user=...' on a standby,\n" +
        "pg_receivewal -d 'host=... port=...'. Passwords: --password-file or WALSTREAM_SERVE_PASSWORD (any user name), or --trust.\n" +
        'Exit status: 0 when stopped by SIGINT or SIGTERM; 1 on any error.',
    )
    .addHelpText(
      'after',
      helpExamples([
        ['serve the archive on port 5433 to clients with a password from the file', 'walstream serve --listen 5433 --archive /mnt/wal-archive --password-file /etc/walstream/passwords'],
        [
          "serve a receiver's directory and its S3 archive to other hosts, over TLS only",
          'walstream serve --listen 0.0.0.0:5433 -D /var/lib/walstream/spool --archive s3://wal-bucket/db1 --password-file /etc/walstream/passwords --tls-cert server.crt --tls-key server.key --tls-required',
        ],
      ]),
    )
    .action(async (opts: ServeCliOptions) => {
      const [{ serve }, { openReadArchive }] = await Promise.all([import('../commands/serve.js'), import('./keys.js')]);
      const log = deps.logger(opts.verbose === true);
      const settings = serverSettings(opts.listen, opts);
      const archive = opts.archive !== undefined ? await openReadArchive(opts.archive, opts, 'with-key') : undefined;
      const stop = deps.stop();
      const stopCollecting = collectOldGarbage();
      let observe: { stop(): Promise<void> } | undefined;
      try {
        await serve({
          ...settings,
          ...(opts.directory !== undefined ? { directory: opts.directory } : {}),
          ...(archive ? { archive } : {}),
          ...(opts.pollInterval !== undefined ? { pollIntervalMs: opts.pollInterval } : {}),
          log,
          stop,
          onListening: (running) => {
            if (!opts.metricsListen) return;
            const listen = opts.metricsListen;
            void import('../observe/serve.js').then(async ({ observeServer }) => {
              observe = await observeServer({ listen, running, log });
            });
          },
        });
      } finally {
        stopCollecting();
        await observe?.stop();
        await archive?.close();
      }
    });
}
