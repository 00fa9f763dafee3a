// A receiver or a server runs for days under a steady stream of short-lived objects. V8 collects
// its young generation every few hundred kilobytes, but some objects live just long enough to be
// moved into the old generation (a message waiting for its write, a segment's bookkeeping), and
// V8 leaves the old generation alone until it reaches a limit it first sets well above what a
// receiver keeps alive: at 4 MB/s of WAL, 6-7 MB of dead objects build up over the first ten
// minutes, and the memory they filled stays with the process (docs/benchmarks.md). A full
// collection once a minute keeps the old generation at what is alive: 10-20 ms of CPU a minute
// at that rate.

/** V8's gc(), present when node runs with --expose-gc (bin/walstream.sh gives it to receive and serve). */
type ExposedGc = (options: { type: 'major'; execution: 'async' }) => unknown;

/**
 * Ask V8 for a full collection every `intervalMs` (as a task of its own, not inside this call)
 * while the process runs; returns what stops it. Nothing happens without --expose-gc.
 */
export function collectOldGarbage(intervalMs = 60_000): () => void {
  const gc = (globalThis as { gc?: unknown }).gc;
  if (typeof gc !== 'function') return () => undefined;
  const timer = setInterval(() => void (gc as ExposedGc)({ type: 'major', execution: 'async' }), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
