// The password prompt of the commands that connect to a server (receive, backup), as
// pg_receivewal's -W: asked for on the terminal (not echoed) before connecting, or read as one
// line from standard input when it is not a terminal. -w never prompts; a server that then asks
// for a password gets the one-line "no password supplied" error from the connection.
import type { ConnectionCliOptions } from './options.js';

export async function promptPassword(): Promise<string> {
  if (!process.stdin.isTTY) {
    const { createInterface } = await import('node:readline');
    const rl = createInterface({ input: process.stdin });
    for await (const line of rl) {
      rl.close();
      return line;
    }
    return '';
  }
  process.stderr.write('Password: ');
  const stdin = process.stdin;
  stdin.setRawMode(true);
  stdin.resume();
  return new Promise((resolve) => {
    let pw = '';
    const onData = (b: Buffer): void => {
      for (const ch of b.toString('utf8')) {
        if (ch === '\r' || ch === '\n') {
          stdin.setRawMode(false);
          stdin.pause();
          stdin.removeListener('data', onData);
          process.stderr.write('\n');
          resolve(pw);
          return;
        }
        if (ch === '\u0003') process.exit(1);
        if (ch === '\u007f') pw = pw.slice(0, -1);
        else pw += ch;
      }
    };
    stdin.on('data', onData);
  });
}

/** The password to connect with: prompted for with -W (--force-password), else none (libpq's sources: PGPASSWORD, the conninfo, ~/.pgpass). */
export async function passwordFromOptions(opts: Pick<ConnectionCliOptions, 'forcePassword'>): Promise<string | undefined> {
  return opts.forcePassword ? promptPassword() : undefined;
}
