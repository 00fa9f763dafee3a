// One byte stream read by two: the main reader (e.g. a store writing an object) and a side reader
// (e.g. a check of the same bytes), without reading the source twice or holding it whole.
//
// Guarantees: the side reader sees exactly the chunks the main reader gets, in order; it may lag
// by at most `maxPendingBytes` (plus one chunk) before the main reader waits for it, so memory is
// bounded; a side reader that fails fails the main reader at its next chunk (a check that finds
// damage stops the write); a main reader that fails or stops early ends the side reader with an
// error, never with a clean end it did not reach. Chunks are passed as they are, never copied:
// neither reader may modify them.

export class TeeEndedError extends Error {
  constructor() {
    super('the stream was not read to its end');
    this.name = 'TeeEndedError';
  }
}

export interface Tee<T> {
  /** The source's chunks, for the main reader. Read it to the end for `result` to settle. */
  passed: AsyncIterable<Buffer>;
  /** What the side reader returned (or threw). */
  result: Promise<T>;
}

export function tee<T>(source: AsyncIterable<Buffer>, side: (chunks: AsyncIterable<Buffer>) => Promise<T>, maxPendingBytes = 4 * 1024 * 1024): Tee<T> {
  const queue: Buffer[] = [];
  let pending = 0;
  /** Set when the main side stops: undefined error is a clean end of the source. */
  let ended = false;
  let endError: Error | undefined;
  let sideDone = false;
  let sideError: unknown;
  let sideFailed = false;
  let wakeSide: (() => void) | undefined;
  let wakeMain: (() => void) | undefined;
  const notifySide = (): void => {
    const w = wakeSide;
    wakeSide = undefined;
    w?.();
  };
  const notifyMain = (): void => {
    const w = wakeMain;
    wakeMain = undefined;
    w?.();
  };

  const chunks: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]: async function* () {
      for (;;) {
        const b = queue.shift();
        if (b !== undefined) {
          pending -= b.length;
          notifyMain();
          yield b;
          continue;
        }
        if (ended) {
          if (endError) throw endError;
          return;
        }
        await new Promise<void>((r) => (wakeSide = r));
      }
    },
  };

  const result = side(chunks).then(
    (v) => {
      sideDone = true;
      queue.length = 0;
      pending = 0;
      notifyMain();
      return v;
    },
    (err: unknown) => {
      sideDone = true;
      sideFailed = true;
      sideError = err;
      queue.length = 0;
      pending = 0;
      notifyMain();
      throw err;
    },
  );
  // The caller awaits it; never an unhandled rejection meanwhile.
  result.catch(() => undefined);

  const passed: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]: async function* () {
      let clean = false;
      try {
        for await (const b of source) {
          if (sideFailed) throw sideError;
          if (!sideDone) {
            queue.push(b);
            pending += b.length;
            notifySide();
            while (pending > maxPendingBytes && !sideDone) await new Promise<void>((r) => (wakeMain = r));
            if (sideFailed) throw sideError;
          }
          yield b;
        }
        clean = true;
      } catch (err) {
        endError = err instanceof Error ? err : new Error(String(err));
        throw err;
      } finally {
        if (!clean && !endError) endError = new TeeEndedError();
        ended = true;
        notifySide();
      }
    },
  };
  return { passed, result };
}
