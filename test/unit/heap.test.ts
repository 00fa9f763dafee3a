// collectOldGarbage (src/util/heap.ts) in a node of its own: with --expose-gc (as bin/walstream.sh
// starts receive and serve) V8 runs a full collection at each interval, and stops when told to;
// without it nothing is scheduled.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../support/cli.js';

/** The full collections V8 reports (PerformanceObserver 'gc', kind major) in a child running collectOldGarbage(40) for 500 ms, stopped after 300. */
function majorCollections(nodeArgs: string[]): number {
  const heap = pathToFileURL(join(ROOT, 'dist', 'util', 'heap.js')).href;
  const script = `
    import { PerformanceObserver, constants } from 'node:perf_hooks';
    const { collectOldGarbage } = await import(${JSON.stringify(heap)});
    let major = 0;
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) if (e.detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) major++;
    }).observe({ entryTypes: ['gc'] });
    const stop = collectOldGarbage(40);
    setTimeout(() => { stop(); const at = major; setTimeout(() => console.log(JSON.stringify({ at, after: major })), 200); }, 300);
  `;
  const r = spawnSync(process.execPath, [...nodeArgs, '--input-type=module', '-e', script], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  const { at, after } = JSON.parse(r.stdout) as { at: number; after: number };
  // None once stopped (the last one asked for may still run as its own task).
  expect(after - at).toBeLessThanOrEqual(1);
  return at;
}

describe('collectOldGarbage', () => {
  it('has V8 run a full collection at each interval when gc() is exposed, and none without it', () => {
    expect(majorCollections(['--expose-gc'])).toBeGreaterThanOrEqual(4);
    expect(majorCollections([])).toBe(0);
  });
});
