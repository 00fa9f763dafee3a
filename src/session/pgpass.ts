// The password file, as libpq reads it (fe-connect.c passwordFromFile, pwdfMatchesString,
// pgpassfileWarning): lines host:port:database:username:password, "*" matching anything, "\"
// escaping ":" and "\", "#" comment lines, first match wins. A file that is not a plain file or
// that group or others can access is ignored with a warning. The password itself is never logged.
//
// Why not the `pgpass` package that pg depends on: it differs from libpq where a user's file
// would give another answer (test/unit/pgpass.test.ts shows each). It returns the last matching
// line of those read in one chunk, not the first (a specific line followed by "*:*:*:*:fallback"
// gives the fallback); skips lines shorter than 11 characters ("*:*:*:u:pw" is a valid line);
// skips a matching line with an empty password and goes on (libpq stops there); reads "\\:" as
// an escaped ":" (libpq: an escaped "\", then the end of the field); compares ports as numbers
// ("05432" matches 5432); and reads no file at all while PGPASSWORD is set, even to "" (libpq
// then reads it). It also knows no passfile= connection option, and writes its warnings straight
// to process.stderr, past --log-format json. This file is small, synchronous and follows libpq.
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface PassfileKey {
  host: string;
  port: string;
  database: string;
  user: string;
}

export interface PassfileResult {
  password: string | undefined;
  /** The file read (for the "password retrieved from file" hint). */
  file: string;
  /** A warning to print (file ignored), never containing a password. */
  warning?: string;
}

/** The file to read: passfile=, else PGPASSFILE, else ~/.pgpass. */
export function passfilePath(passfile: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (passfile) return passfile;
  if (env['PGPASSFILE']) return env['PGPASSFILE'];
  let h: string;
  try {
    h = homedir();
  } catch {
    return undefined;
  }
  return h ? join(h, '.pgpass') : undefined;
}

/** Does this field of a password-file line match `token`? Returns the rest of the line after its ":" or undefined. */
function matchField(line: string, pos: number, token: string): number | undefined {
  if (pos >= line.length) return undefined;
  if (line[pos] === '*' && line[pos + 1] === ':') return pos + 2;
  let t = 0;
  let i = pos;
  while (i < line.length) {
    let escaped = false;
    if (line[i] === '\\' && i + 1 < line.length) {
      i++;
      escaped = true;
    }
    if (line[i] === ':' && !escaped) return t === token.length ? i + 1 : undefined;
    if (t >= token.length || line[i] !== token[t]) return undefined;
    i++;
    t++;
  }
  return undefined;
}

/** The password of the first line matching `key`, or undefined. Pure. */
export function findPassword(text: string, key: PassfileKey): string | undefined {
  const wanted = [key.host, key.port, key.database, key.user];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    if (line === '' || line.startsWith('#')) continue;
    let pos: number | undefined = 0;
    for (const token of wanted) {
      pos = matchField(line, pos, token);
      if (pos === undefined) break;
    }
    if (pos === undefined) continue;
    // The password: up to the first unescaped ":", with escapes removed.
    let out = '';
    for (let i = pos; i < line.length && line[i] !== ':'; i++) {
      if (line[i] === '\\' && i + 1 < line.length) i++;
      out += line[i];
    }
    return out;
  }
  return undefined;
}

/**
 * Unix socket directories that libpq builds use as their default (DEFAULT_PGSOCKET_DIR: /tmp
 * upstream, /var/run/postgresql on Debian and Red Hat): libpq matches "localhost" lines for them.
 */
const DEFAULT_SOCKET_DIRS = new Set(['/tmp', '/var/run/postgresql', '/run/postgresql']);

/** The host a password-file line must name: libpq's "localhost" for no host or the default socket directory. */
export function passfileHost(host: string): string {
  if (host === '' || DEFAULT_SOCKET_DIRS.has(host)) return 'localhost';
  return host;
}

/** Look `key` up in the password file. Missing or unreadable files give no password and no warning. */
export function passwordFromFile(file: string, key: PassfileKey): PassfileResult {
  if (!key.database || !key.user) return { password: undefined, file };
  key = { ...key, host: passfileHost(key.host), port: key.port || '5432' };
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return { password: undefined, file };
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return { password: undefined, file, warning: `password file "${file}" is not a plain file` };
    if ((st.mode & 0o077) !== 0) {
      return {
        password: undefined,
        file,
        warning: `password file "${file}" has group or world access; permissions should be u=rw (0600) or less`,
      };
    }
    // A matching line with an empty password ends the search with no password (libpq then says
    // "no password supplied"); it does not go on to later lines.
    const password = findPassword(readFileSync(fd, 'utf8'), key);
    return { password: password === '' ? undefined : password, file };
  } catch {
    return { password: undefined, file };
  } finally {
    closeSync(fd);
  }
}
