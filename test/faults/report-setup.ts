// vitest globalSetup for the fault suite: picks the run's seed (WALSTREAM_FAULT_SEED or a random
// one), gives the test files a directory to write their result rows to, and prints one table of
// what the suite survived when the run ends. The table only reports: every fault test fails by
// itself when it finds a loss.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { faultMode, formatFaultTable, parseSeed, type FaultRow } from './table.js';

export default function setup(project: TestProject): () => void {
  const dir = mkdtempSync(join(tmpdir(), 'walstream-faults-'));
  const seed = parseSeed(process.env['WALSTREAM_FAULT_SEED']) ?? Math.floor(Math.random() * 0x1_0000_0000);
  const started = Date.now();
  project.provide('walstreamFaultReportDir', dir);
  project.provide('walstreamFaultSeed', seed);
  return () => {
    let rows: FaultRow[] = [];
    try {
      rows = readFileSync(join(dir, 'rows.jsonl'), 'utf8')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as FaultRow);
    } catch {
      // no fault test ran (e.g. `vitest run test/unit`)
    }
    rmSync(dir, { recursive: true, force: true });
    if (rows.length === 0) return;
    const seconds = Math.round((Date.now() - started) / 1000);
    process.stdout.write(`\n${formatFaultTable(rows, { mode: faultMode(), seed, seconds })}\n`);
  };
}
