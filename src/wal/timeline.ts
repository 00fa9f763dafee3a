// Timeline history files (timeline.c readTimeLineHistory): lines "parentTLI<TAB>switchLSN<TAB>reason",
// '#' comments and blank lines ignored, entries in increasing TLI order. Pure.
import { parseLsn, type Lsn } from './lsn.js';

export interface TimelineHistoryEntry {
  tli: number;
  /** First LSN that is no longer on `tli` (the switch point to the next timeline). */
  end: Lsn;
  reason: string;
}

export class HistoryParseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HistoryParseError';
  }
}

export function parseHistory(content: string): TimelineHistoryEntry[] {
  const entries: TimelineHistoryEntry[] = [];
  const lines = content.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    const trimmed = line.trim();
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const m = /^\s*(\d+)\s+([0-9A-Fa-f]+\/[0-9A-Fa-f]+)(?:\s+(.*))?$/.exec(line);
    // JSON quoting keeps the message on one line whatever bytes the line holds.
    if (!m) throw new HistoryParseError(`timeline history line ${i + 1} is malformed: ${JSON.stringify(trimmed.slice(0, 80))}`);
    const tli = Number(m[1]);
    if (!Number.isSafeInteger(tli) || tli < 1 || tli > 0xffffffff) {
      throw new HistoryParseError(`timeline history line ${i + 1} has an invalid timeline ${m[1]}`);
    }
    const prev = entries[entries.length - 1];
    if (prev && tli <= prev.tli) {
      throw new HistoryParseError(`timeline history line ${i + 1}: timeline ${tli} does not increase`);
    }
    let end: Lsn;
    try {
      end = parseLsn(m[2]!);
    } catch {
      throw new HistoryParseError(`timeline history line ${i + 1} has an invalid switch point "${m[2]}"`);
    }
    if (prev && end < prev.end) {
      throw new HistoryParseError(`timeline history line ${i + 1}: switch point goes backwards`);
    }
    entries.push({ tli, end, reason: (m[3] ?? '').trim() });
  }
  return entries;
}

/** Validate that a history file fetched for `childTli` describes the ancestry of that timeline. */
export function checkHistoryForTimeline(entries: TimelineHistoryEntry[], childTli: number): void {
  if (entries.length === 0) throw new HistoryParseError(`history file for timeline ${childTli} has no entries`);
  const last = entries[entries.length - 1]!;
  if (last.tli >= childTli) {
    throw new HistoryParseError(`history file for timeline ${childTli} names timeline ${last.tli} as a parent`);
  }
}

/** The timeline that holds `lsn` according to the history of `currentTli` (tliOfPointInHistory). */
export function timelineOfPoint(entries: TimelineHistoryEntry[], currentTli: number, lsn: Lsn): number {
  for (const e of entries) {
    if (lsn < e.end) return e.tli;
  }
  return currentTli;
}
