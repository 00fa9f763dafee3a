// Puts running at once into one archive directory share .walstream-meta/tmp/, which the last put
// out removes: a put making it again at that moment must retry, not fail (it stopped receivers).
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalStore } from '../../src/storage/local.js';
import { mapLimit } from '../../src/storage/common.js';
import { makeSegment, seg } from './ops-walgen.js';

describe('LocalStore puts at once', () => {
  it('all succeed while the shared temp directory comes and goes', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'walstream-temprace-'));
    try {
      const store = new LocalStore(dir);
      const segments = Array.from({ length: 24 }, (_, i) => ({ name: seg(1, 10 + i), data: makeSegment({ tli: 1, segNo: 10 + i, segSize: 64 * 1024 }) }));
      for (let round = 0; round < 20; round++) {
        const names = segments.map((s) => ({ ...s, name: seg(1 + round, 10 + segments.indexOf(s)) }));
        const results = await mapLimit(names, 12, (s) => store.put(s.name, Buffer.from(s.data)));
        expect(results.every((r) => r.status === 'created')).toBe(true);
      }
      expect(readdirSync(dir).filter((n) => /^[0-9A-F]{24}$/.test(n))).toHaveLength(480);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
