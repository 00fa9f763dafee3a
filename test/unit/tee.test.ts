// util/tee.ts: one stream read by two, with the side's lag bounded and failures crossing over.
import { describe, expect, it } from 'vitest';
import { tee, TeeEndedError } from '../../src/util/tee.js';

async function* pieces(n: number, size: number, failAt?: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < n; i++) {
    if (i === failAt) throw new Error('source broke');
    yield Buffer.alloc(size, i & 0xff);
  }
}

async function collect(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of src) parts.push(b);
  return Buffer.concat(parts);
}

describe('tee', () => {
  it('gives both readers the same bytes in order', async () => {
    const t = tee(pieces(50, 1000), collect, 4096);
    const main = await collect(t.passed);
    const side = await t.result;
    expect(main.length).toBe(50_000);
    expect(side.equals(main)).toBe(true);
  });

  it('holds the main reader back while the side lags by more than the limit', async () => {
    let maxLag = 0;
    let sideBytes = 0;
    let mainBytes = 0;
    const t = tee(
      pieces(100, 1000),
      async (chunks) => {
        for await (const b of chunks) {
          await new Promise((r) => setTimeout(r, 1));
          sideBytes += b.length;
        }
      },
      5000,
    );
    for await (const b of t.passed) {
      mainBytes += b.length;
      maxLag = Math.max(maxLag, mainBytes - sideBytes);
    }
    await t.result;
    expect(sideBytes).toBe(100_000);
    // The limit plus the chunk just passed, plus the one the side holds.
    expect(maxLag).toBeLessThanOrEqual(5000 + 2000);
  });

  it("fails the main reader with the side's error", async () => {
    const t = tee(
      pieces(100, 1000),
      async (chunks) => {
        let n = 0;
        for await (const _ of chunks) if (++n === 10) throw new Error('damaged at 10');
      },
      2000,
    );
    await expect(collect(t.passed)).rejects.toThrow('damaged at 10');
    await expect(t.result).rejects.toThrow('damaged at 10');
  });

  it('ends the side with an error, not a clean end, when the source fails or the main reader stops early', async () => {
    const broken = tee(pieces(10, 100, 5), collect);
    await expect(collect(broken.passed)).rejects.toThrow('source broke');
    await expect(broken.result).rejects.toThrow('source broke');

    const early = tee(pieces(10, 100), collect);
    for await (const _ of early.passed) break;
    await expect(early.result).rejects.toBeInstanceOf(TeeEndedError);
  });

  it('lets the main reader go on when the side is done early', async () => {
    const t = tee(
      pieces(20, 1000),
      async (chunks) => {
        for await (const _ of chunks) return 'first only';
        return 'none';
      },
      1000,
    );
    expect((await collect(t.passed)).length).toBe(20_000);
    expect(await t.result).toBe('first only');
  });
});
