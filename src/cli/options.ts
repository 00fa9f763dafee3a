// Option parsers shared by the commands of the command line.
import { InvalidArgumentError } from 'commander';

/** A port, or a comma-separated list of them (one per host of a multi-host -h; an empty entry is the default). */
export function parsePort(v: string): string {
  for (const p of v.split(',')) {
    if (p === '' && v.includes(',')) continue;
    if (!/^\d+$/.test(p) || Number(p) < 1 || Number(p) > 65535) throw new InvalidArgumentError(`invalid port number "${v}"`);
  }
  return v;
}
