import { describe, it, expect } from 'vitest';
import { parseHistory, checkHistoryForTimeline, timelineOfPoint, HistoryParseError, type TimelineHistoryEntry } from '../../src/wal/timeline.js';
import { parseLsn } from '../../src/wal/lsn.js';

// 00000002.history as written by a server promoted at 0/B023F8.
const HISTORY_2 = '1\t0/B023F8\tno recovery target specified\n';
// 00000003.history: the parent's history copied, then a blank line and the new entry
// (timeline.c writeTimeLineHistory).
const HISTORY_3 = '1\t0/B023F8\tno recovery target specified\n\n2\t0/3000000\tat restore point "before_upgrade"\n';

describe('parseHistory', () => {
  it('parses the single entry of 00000002.history', () => {
    expect(parseHistory(HISTORY_2)).toEqual([{ tli: 1, end: 0xb023f8n, reason: 'no recovery target specified' }]);
  });

  it('parses a multi-entry history with the blank separator line', () => {
    expect(parseHistory(HISTORY_3)).toEqual([
      { tli: 1, end: 0xb023f8n, reason: 'no recovery target specified' },
      { tli: 2, end: 0x3000000n, reason: 'at restore point "before_upgrade"' },
    ]);
  });

  it('allows gaps in the timeline sequence (abandoned timelines)', () => {
    const h = parseHistory('1\t0/B023F8\tno recovery target specified\n\n3\t1/2C\tafter transaction 812\n');
    expect(h.map((e) => e.tli)).toEqual([1, 3]);
    expect(h[1]!.end).toBe(0x10000002cn);
  });

  it('ignores comments and blank lines anywhere', () => {
    const text = '# made by hand\n\n   \n1\t0/B023F8\tfirst\n# between\n\t\n2\t0/3000000\tsecond\n#trailing';
    expect(parseHistory(text)).toEqual([
      { tli: 1, end: 0xb023f8n, reason: 'first' },
      { tli: 2, end: 0x3000000n, reason: 'second' },
    ]);
  });

  it('accepts CRLF line ends', () => {
    const text = HISTORY_3.replace(/\n/g, '\r\n');
    expect(parseHistory(text)).toEqual(parseHistory(HISTORY_3));
    expect(parseHistory('1\t0/B023F8\tno recovery target specified\r\n')[0]!.reason).toBe('no recovery target specified');
  });

  it('accepts a missing reason, a missing final newline and lower-case LSNs', () => {
    expect(parseHistory('1\t0/b023f8')).toEqual([{ tli: 1, end: 0xb023f8n, reason: '' }]);
  });

  it('an empty file or one with only comments has no entries', () => {
    expect(parseHistory('')).toEqual([]);
    expect(parseHistory('# nothing\n\n')).toEqual([]);
  });

  it('allows two switches at the same LSN', () => {
    expect(parseHistory('1\t0/3000000\ta\n2\t0/3000000\tb\n').map((e) => e.end)).toEqual([0x3000000n, 0x3000000n]);
  });

  it.each([
    ['no LSN', '1\n'],
    ['no LSN, with reason-like text', '1\tno recovery target\n'],
    ['non-numeric timeline', 'x\t0/B023F8\treason\n'],
    ['negative timeline', '-1\t0/B023F8\treason\n'],
    ['LSN without slash', '1\tB023F8\treason\n'],
    ['LSN with three parts', '1\t0/1/2\treason\n'],
    ['non-hex LSN', '1\t0/XYZ\treason\n'],
    ['garbage line after a good one', '1\t0/B023F8\tok\nthis is not a history line\n'],
  ])('rejects a malformed line: %s', (_label, text) => {
    expect(() => parseHistory(text)).toThrow(HistoryParseError);
  });

  it('names the malformed line number', () => {
    expect(() => parseHistory('1\t0/B023F8\tok\n\nbogus\n')).toThrow(/line 3/);
  });

  it('rejects an LSN half wider than 32 bits with HistoryParseError', () => {
    expect(() => parseHistory('1\t123456789/0\treason\n')).toThrow(HistoryParseError);
  });

  it.each([
    ['timeline 0', '0\t0/B023F8\treason\n'],
    ['timeline above 32 bits', '4294967296\t0/B023F8\treason\n'],
  ])('rejects an invalid timeline: %s', (_label, text) => {
    expect(() => parseHistory(text)).toThrow(HistoryParseError);
  });

  it('rejects decreasing or repeated timelines', () => {
    expect(() => parseHistory('2\t0/1000000\ta\n1\t0/2000000\tb\n')).toThrow(HistoryParseError);
    expect(() => parseHistory('2\t0/1000000\ta\n2\t0/2000000\tb\n')).toThrow(/does not increase/);
  });

  it('rejects a switch point that goes backwards', () => {
    expect(() => parseHistory('1\t0/2000000\ta\n2\t0/1000000\tb\n')).toThrow(/backwards/);
  });
});

describe('checkHistoryForTimeline', () => {
  it('accepts the history of a child timeline', () => {
    expect(() => checkHistoryForTimeline(parseHistory(HISTORY_2), 2)).not.toThrow();
    expect(() => checkHistoryForTimeline(parseHistory(HISTORY_3), 3)).not.toThrow();
    expect(() => checkHistoryForTimeline(parseHistory(HISTORY_3), 7)).not.toThrow();
  });

  it('rejects an empty history', () => {
    expect(() => checkHistoryForTimeline([], 2)).toThrow(HistoryParseError);
  });

  it('rejects a history naming the timeline itself or a later one as parent', () => {
    expect(() => checkHistoryForTimeline(parseHistory(HISTORY_3), 2)).toThrow(/names timeline 2 as a parent/);
    expect(() => checkHistoryForTimeline(parseHistory(HISTORY_2), 1)).toThrow(HistoryParseError);
  });
});

describe('timelineOfPoint', () => {
  const h3: TimelineHistoryEntry[] = parseHistory(HISTORY_3);

  it.each<[string, number]>([
    ['0/0', 1],
    ['0/B023F7', 1],
    ['0/B023F8', 2],
    ['0/B023F9', 2],
    ['0/2FFFFFF', 2],
    ['0/3000000', 3],
    ['0/3000001', 3],
    ['FFFFFFFF/FFFFFFFF', 3],
  ])('history of timeline 3: %s is on timeline %i', (lsn, tli) => {
    expect(timelineOfPoint(h3, 3, parseLsn(lsn))).toBe(tli);
  });

  it('with a gap in the timelines', () => {
    const h = parseHistory('1\t0/B023F8\ta\n3\t0/3000000\tb\n');
    expect(timelineOfPoint(h, 5, 0xb023f7n)).toBe(1);
    expect(timelineOfPoint(h, 5, 0xb023f8n)).toBe(3);
    expect(timelineOfPoint(h, 5, 0x3000000n)).toBe(5);
  });

  it('with no history everything is on the current timeline', () => {
    expect(timelineOfPoint([], 1, 0n)).toBe(1);
    expect(timelineOfPoint([], 4, 0x123456789n)).toBe(4);
  });

  it('with two switches at one LSN the point belongs to the later timeline', () => {
    const h = parseHistory('1\t0/3000000\ta\n2\t0/3000000\tb\n');
    expect(timelineOfPoint(h, 3, 0x2ffffffn)).toBe(1);
    expect(timelineOfPoint(h, 3, 0x3000000n)).toBe(3);
  });
});
