// A small logger passed down explicitly (no module globals): messages go to stderr, either as text
// prefixed with the program name as PostgreSQL's client programs do, or (--log-format json) as one
// JSON object per line: {"time","level","msg", ...fields}. On a terminal, text output can also
// carry one status line (receive's catch-up progress) that log messages are written around.

export type LogFormat = 'text' | 'json';
export const LOG_FORMATS: readonly LogFormat[] = ['text', 'json'];

/** Extra structured data for a message: printed as JSON fields, left out of text output. */
export type LogFields = Record<string, string | number | boolean | null | undefined>;

export interface Logger {
  info(msg: string, fields?: LogFields): void;
  verbose(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /**
   * Show (or with undefined, remove) a transient status line below the log messages. Only
   * loggers writing text to a terminal show it; others ignore it.
   */
  status?(line: string | undefined): void;
}

export interface StderrLoggerOptions {
  format?: LogFormat;
  prefix?: string;
  /** Where lines go (default process.stderr). */
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
  /** Clock for JSON "time" (tests). */
  now?: () => Date;
}

type Level = 'debug' | 'info' | 'warn' | 'error';

/** One JSON log line (without the newline). Fields never override time, level or msg. */
export function jsonLogLine(time: Date, level: string, msg: string, fields?: LogFields): string {
  const out: Record<string, unknown> = { time: time.toISOString(), level, msg };
  if (fields) {
    for (const [k, v] of Object.entries(fields)) {
      if (v !== undefined && !(k in out)) out[k] = v;
    }
  }
  return JSON.stringify(out);
}

/**
 * A logger writing to stderr. `verbose` enables the verbose messages (-v); in JSON they have
 * level "debug". The second argument may be the text prefix (older call form) or options.
 */
export function stderrLogger(verbose: boolean, options: StderrLoggerOptions | string = {}): Logger {
  const o: StderrLoggerOptions = typeof options === 'string' ? { prefix: options } : options;
  const prefix = o.prefix ?? 'walstream';
  const stream = o.stream ?? process.stderr;
  const now = o.now ?? (() => new Date());
  if (o.format === 'json') {
    const out = (level: Level, msg: string, fields?: LogFields): void => {
      stream.write(`${jsonLogLine(now(), level, msg, fields)}\n`);
    };
    return {
      info: (m, f) => out('info', m, f),
      verbose: (m, f) => {
        if (verbose) out('debug', m, f);
      },
      warn: (m, f) => out('warn', m, f),
      error: (m, f) => out('error', m, f),
      status: () => undefined,
    };
  }
  const tty = stream.isTTY === true;
  let statusLine: string | undefined;
  // "\r" + erase line: the status line is always the last thing on the terminal.
  const clearStatus = (): void => {
    if (statusLine !== undefined) stream.write('\r\x1b[2K');
  };
  const out = (level: string, msg: string): void => {
    clearStatus();
    stream.write(`${prefix}: ${level}${msg}\n`);
    if (statusLine !== undefined) stream.write(statusLine);
  };
  return {
    info: (m) => out('', m),
    verbose: (m) => {
      if (verbose) out('', m);
    },
    warn: (m) => out('warning: ', m),
    error: (m) => out('error: ', m),
    status: (line) => {
      if (!tty) return;
      clearStatus();
      statusLine = line === undefined ? undefined : `${prefix}: ${line}`;
      if (statusLine !== undefined) stream.write(statusLine);
    },
  };
}

/** The one-line error main() prints before exiting with a failure status. */
export function formatFatal(format: LogFormat, message: string, prefix = 'walstream'): string {
  return format === 'json' ? `${jsonLogLine(new Date(), 'error', message)}\n` : `${prefix}: error: ${message}\n`;
}

/**
 * A command's failure as the command line reports it: its message's first line on standard error,
 * and the exit status, the error's own `exitCode` when it names one from 1 to 127 (the commands
 * that follow PostgreSQL's exit-status contract say which they mean), else 1.
 */
export function reportFailure(err: unknown, format: LogFormat): number {
  const e = err as { exitCode?: number; message?: string } | undefined;
  const message = (e?.message ?? String(err)).split('\n')[0];
  process.stderr.write(formatFatal(format, message ?? ''));
  return typeof e?.exitCode === 'number' && e.exitCode > 0 && e.exitCode < 128 ? e.exitCode : 1;
}

export const silentLogger: Logger = { info() {}, verbose() {}, warn() {}, error() {} };
