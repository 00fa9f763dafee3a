// The catch-up progress line of `walstream receive` on a terminal: while the receiver is behind
// the server by a backlog, one line shows the received and the server's position, the rate and
// an estimate of the time left; it disappears once caught up. Nothing is shown when stderr is not
// a terminal (the logger's status line is a no-op there).
import { formatLsn } from '../wal/lsn.js';
import type { Logger } from '../util/log.js';
import type { ReceiverSnapshot } from './metrics.js';

/** Show the line only when at least this much is outstanding. */
const MIN_BACKLOG = 1024n * 1024n;

export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(v)} ${units[i]}` : `${v.toFixed(1)} ${units[i]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** The progress line for a snapshot and a rate in bytes per second (undefined while unknown). */
export function progressLine(s: ReceiverSnapshot, rate: number | undefined): string {
  const parts = [`catching up: received ${formatLsn(s.received)} of ${formatLsn(s.serverEnd)}`, `${formatBytes(Number(s.lagBytes))} behind`];
  if (rate !== undefined && rate > 0) parts.push(`${formatBytes(rate)}/s`, `ETA ${formatDuration(Number(s.lagBytes) / rate)}`);
  return parts.join(', ');
}

export interface ProgressOptions {
  snapshot: () => ReceiverSnapshot;
  log: Logger;
  intervalMs?: number;
  /** Terminal width: the line is cut to fit (default: stderr's columns). */
  columns?: () => number | undefined;
  now?: () => number;
}

/** Starts the periodic progress line; stop() removes it. */
export function startProgress(o: ProgressOptions): { stop(): void } {
  const now = o.now ?? (() => Date.now());
  const columns = o.columns ?? (() => process.stderr.columns);
  // Rate over a window of recent samples.
  const samples: { t: number; bytes: bigint }[] = [];
  let shown = false;
  const tick = (): void => {
    const s = o.snapshot();
    const t = now();
    samples.push({ t, bytes: s.receivedBytesTotal });
    while (samples.length > 1 && t - samples[0]!.t > 5000) samples.shift();
    if (!s.streaming || s.lagBytes < MIN_BACKLOG) {
      if (shown) o.log.status?.(undefined);
      shown = false;
      return;
    }
    const first = samples[0]!;
    const rate = t > first.t ? (Number(s.receivedBytesTotal - first.bytes) * 1000) / (t - first.t) : undefined;
    let line = progressLine(s, rate);
    const width = columns();
    if (width !== undefined && width > 10 && line.length > width - 12) line = line.slice(0, width - 12);
    o.log.status?.(line);
    shown = true;
  };
  const timer = setInterval(tick, o.intervalMs ?? 500);
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      if (shown) o.log.status?.(undefined);
      shown = false;
    },
  };
}
