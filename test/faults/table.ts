// The fault suite's mode, seed parsing and result table: plain functions, usable from the
// global setup (main process) and from the test files alike.

export type FaultMode = 'bounded' | 'full';

export function faultMode(): FaultMode {
  return process.env['WALSTREAM_FAULT_MODE'] === 'full' ? 'full' : 'bounded';
}

export function parseSeed(text: string | undefined): number | undefined {
  if (text === undefined || text.trim() === '') return undefined;
  const n = Number(text.trim());
  if (!Number.isInteger(n) || n < 0 || n > 0xffff_ffff) throw new Error(`WALSTREAM_FAULT_SEED must be an integer 0-4294967295, not "${text}"`);
  return n;
}

export interface FaultRow {
  fault: string;
  iterations: number;
  bytesVerified: number;
  losses: number;
}

function thousands(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

export function formatFaultTable(rows: readonly FaultRow[], run: { mode: FaultMode; seed: number; seconds: number }): string {
  const sorted = [...rows].sort((a, b) => (a.fault < b.fault ? -1 : a.fault > b.fault ? 1 : 0));
  const head = ['fault', 'iterations', 'WAL bytes verified', 'losses'];
  const body = sorted.map((r) => [r.fault, String(r.iterations), thousands(r.bytesVerified), String(r.losses)]);
  const total = ['total', String(rows.reduce((s, r) => s + r.iterations, 0)), thousands(rows.reduce((s, r) => s + r.bytesVerified, 0)), String(rows.reduce((s, r) => s + r.losses, 0))];
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length), total[i]!.length));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [`walstream fault suite: mode ${run.mode}, seed ${run.seed} (WALSTREAM_FAULT_SEED=${run.seed} repeats it), ${run.seconds} s`, line(head), rule, ...body.map(line), rule, line(total)].join('\n');
}
