// A small logger passed down explicitly (no module globals): messages go to stderr, prefixed with
// the program name as PostgreSQL's client programs do.

export interface Logger {
  info(msg: string): void;
  verbose(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export function stderrLogger(verbose: boolean, prefix = 'walstream'): Logger {
  const out = (level: string, msg: string): void => {
    process.stderr.write(`${prefix}: ${level}${msg}\n`);
  };
  return {
    info: (m) => out('', m),
    verbose: (m) => {
      if (verbose) out('', m);
    },
    warn: (m) => out('warning: ', m),
    error: (m) => out('error: ', m),
  };
}

export const silentLogger: Logger = { info() {}, verbose() {}, warn() {}, error() {} };
