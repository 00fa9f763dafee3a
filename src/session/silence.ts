// The receiver's side of a dead-connection check, as PostgreSQL's walreceiver does it with
// wal_receiver_timeout (walreceiver.c WalReceiverMain, WalRcvComputeNextWakeup): after half the
// timeout without any message from the server, ask it for a reply once; after the whole timeout,
// give the connection up. Pure: the caller passes the time.
//
// Two things are not the server's silence and do not count: time with reading paused on purpose
// (the sink or the upload spool is full: the clock restarts when reading resumes), and time this
// process itself did not run (a tick that comes late: the event loop was blocked, so messages may
// be waiting unread).

export type SilenceVerdict = 'ok' | 'ping' | 'dead';

export class SilenceClock {
  /** Start of the current silence. */
  private since: number;
  private lastTick: number;
  private pinged = false;
  private paused = false;

  /**
   * `timeoutMs` > 0; `tickMs` is how often tick() is called (a later tick means the process
   * itself stalled).
   */
  constructor(
    readonly timeoutMs: number,
    readonly tickMs: number,
    now: number,
  ) {
    this.since = now;
    this.lastTick = now;
  }

  /** How often to call tick() for a timeout: a tenth of it, within [50 ms, 1 s]. */
  static tickFor(timeoutMs: number): number {
    return Math.max(50, Math.min(1000, Math.floor(timeoutMs / 10)));
  }

  /** A message arrived from the server. */
  heard(now: number): void {
    this.since = now;
    this.pinged = false;
  }

  /** Reading stopped on purpose: silence does not count from now on. */
  pause(): void {
    this.paused = true;
  }

  /** Reading again: the silence starts anew. */
  resume(now: number): void {
    if (!this.paused) return;
    this.paused = false;
    this.since = now;
    this.pinged = false;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** How long the server has been silent, as counted. */
  silentFor(now: number): number {
    return Math.max(0, now - this.since);
  }

  /** Called every `tickMs`: 'ping' once at half the timeout, 'dead' at the whole of it. */
  tick(now: number): SilenceVerdict {
    const gap = now - this.lastTick;
    this.lastTick = now;
    // A late tick: this process did not run for a while, so it could not read either.
    if (gap > 2 * this.tickMs) this.since = Math.min(now, this.since + (gap - this.tickMs));
    if (this.paused) return 'ok';
    const quiet = now - this.since;
    if (quiet >= this.timeoutMs) return 'dead';
    if (!this.pinged && quiet >= this.timeoutMs / 2) {
      this.pinged = true;
      return 'ping';
    }
    return 'ok';
  }
}
