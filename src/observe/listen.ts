// Where receive --metrics-listen binds: parsed without loading node:http, so that every other
// command starts without it.
import { isIP } from 'node:net';

export interface ListenAddress {
  host: string;
  port: number;
}

/**
 * Parse "PORT", ":PORT", "HOST:PORT" or "[IPv6]:PORT"; the host defaults to 127.0.0.1 (only
 * this machine), port 0 picks a free port. Throws with a one-line message.
 */
export function parseListenAddress(text: string): ListenAddress {
  const v = text.trim();
  let host = '127.0.0.1';
  let port: string;
  const v6 = /^\[([^\]]+)\]:(\d+)$/.exec(v);
  if (v6) {
    host = v6[1]!;
    port = v6[2]!;
    if (isIP(host) !== 6) throw new Error(`invalid listen address "${text}": "${host}" is not an IPv6 address`);
  } else if (/^\d+$/.test(v)) {
    port = v;
  } else {
    const i = v.lastIndexOf(':');
    if (i < 0) throw new Error(`invalid listen address "${text}" (use PORT or HOST:PORT)`);
    port = v.slice(i + 1);
    if (i > 0) host = v.slice(0, i);
    if (host.includes(':')) throw new Error(`invalid listen address "${text}" (write an IPv6 address as [ADDR]:PORT)`);
    if (!/^[A-Za-z0-9.-]+$/.test(host)) throw new Error(`invalid listen address "${text}": bad host "${host}"`);
  }
  if (!/^\d+$/.test(port) || Number(port) > 65535) throw new Error(`invalid listen address "${text}": bad port "${port}"`);
  return { host, port: Number(port) };
}
