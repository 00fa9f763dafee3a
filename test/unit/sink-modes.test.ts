// Files the sink creates are 0600 whatever the umask; a spool others can write to is refused.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkSpoolDirectory, UnsafeDirectoryError, writeFileAtomic } from '../../src/sink/fsutil.js';
import { CompressedSegmentFile, PlainSegmentFile } from '../../src/sink/segment-file.js';

const mode = (p: string): string => (statSync(p).mode & 0o7777).toString(8);

describe('sink file modes under umask 000', () => {
  let dir: string;
  let saved: number;
  beforeAll(() => {
    saved = process.umask(0);
    dir = mkdtempSync(join(tmpdir(), 'walstream-modes-'));
  });
  afterAll(() => {
    process.umask(saved);
    rmSync(dir, { recursive: true, force: true });
  });

  it('history files (atomic writes), even over a stale temp file of another mode', async () => {
    writeFileSync(join(dir, '.00000002.history.tmp'), 'stale', { mode: 0o666 });
    chmodSync(join(dir, '.00000002.history.tmp'), 0o666);
    await writeFileAtomic(join(dir, '00000002.history'), Buffer.from('1\t0/3000000\tno recovery target specified\n'));
    expect(mode(join(dir, '00000002.history'))).toBe('600');
  });

  it('segments: new .partial files (padded to their size with zeros), compressed .partial files', async () => {
    const plain = PlainSegmentFile.open(join(dir, '000000010000000000000001.partial'), 8192);
    await plain.file.close();
    expect(plain.created).toBe(true);
    expect(mode(join(dir, '000000010000000000000001.partial'))).toBe('600');
    expect(readFileSync(join(dir, '000000010000000000000001.partial'))).toEqual(Buffer.alloc(8192));
    const gz = CompressedSegmentFile.open(join(dir, '000000010000000000000002.gz.partial'), 'gzip', undefined);
    await gz.close();
    expect(mode(join(dir, '000000010000000000000002.gz.partial'))).toBe('600');
  });
});

describe('spool directory check', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const withMode = (m: number): string => {
    const d = mkdtempSync(join(tmpdir(), 'walstream-spool-'));
    dirs.push(d);
    chmodSync(d, m);
    return d;
  };

  it.each([0o700, 0o750, 0o755, 0o711])('accepts mode %s', async (m) => {
    await expect(checkSpoolDirectory(withMode(m))).resolves.toBeUndefined();
  });

  it.each([
    [0o770, /writable by its group \(mode 0770\)/],
    [0o777, /writable by all users \(mode 0777\)/],
    [0o1777, /writable by all users \(mode 1777\)/],
    [0o702, /writable by all users \(mode 0702\)/],
  ])('refuses mode %s', async (m, message) => {
    const d = withMode(m);
    await expect(checkSpoolDirectory(d)).rejects.toThrow(UnsafeDirectoryError);
    await expect(checkSpoolDirectory(d)).rejects.toThrow(message);
  });
});
