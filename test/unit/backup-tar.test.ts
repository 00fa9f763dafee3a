// The streaming tar reader (backup/tar.ts): PostgreSQL 15's BASE_BACKUP output byte for byte
// (fixtures/backup: the head of a real base.tar and a whole tablespace tar), what GNU tar writes
// (ustar prefix, GNU long names, pax), hand-built headers, damage of every kind.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { headerChecksums, parseNumber, readAll, readTar, TarError, type TarEntry } from '../../src/backup/tar.js';
import { rng } from './fixture.js';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'fixtures', 'backup');
const PG15_BASE_HEAD = readFileSync(join(FIXTURES, 'pg15-base-head.tar'));
const PG15_TABLESPACE = readFileSync(join(FIXTURES, 'pg15-tablespace-16384.tar'));

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'walstream-tar-'));
  dirs.push(d);
  return d;
}

/** Feed `data` in chunks of the sizes `sizes` cycles through (copies, so the reader cannot rely on one buffer). */
async function* chunks(data: Buffer, sizes: number[] = [64 * 1024]): AsyncGenerator<Buffer> {
  let i = 0;
  let k = 0;
  while (i < data.length) {
    const n = Math.max(1, sizes[k++ % sizes.length]!);
    yield Buffer.from(data.subarray(i, i + n));
    i += n;
  }
}

interface Read {
  name: string;
  type: string;
  mode: number;
  size: number;
  mtime: number;
  linkTarget?: string;
  data?: string;
}

async function readEverything(data: Buffer, sizes?: number[], opts?: Parameters<typeof readTar>[1]): Promise<Read[]> {
  const out: Read[] = [];
  for await (const e of readTar(chunks(data, sizes), opts)) {
    const r: Read = { name: e.name, type: e.type, mode: e.mode, size: e.size, mtime: e.mtime.getTime() / 1000 };
    if (e.linkTarget !== undefined) r.linkTarget = e.linkTarget;
    if (e.type === 'file') r.data = (await readAll(e.content)).toString('latin1');
    out.push(r);
  }
  return out;
}

/** A header as PostgreSQL's tarCreateHeader writes it (octal fields ending in a space), with overrides. */
function header(o: { name: string; size?: number; type?: string; link?: string; mode?: number; mtime?: number; prefix?: string; sizeField?: Buffer; magic?: string }): Buffer {
  const h = Buffer.alloc(512);
  const num = (off: number, len: number, v: number): void => {
    h.write(`${v.toString(8).padStart(len - 1, '0')} `, off, len, 'latin1');
  };
  h.write(o.name, 0, 100, 'utf8');
  num(100, 8, o.mode ?? 0o600);
  num(108, 8, 26);
  num(116, 8, 26);
  if (o.sizeField) o.sizeField.copy(h, 124);
  else num(124, 12, o.size ?? 0);
  num(136, 12, o.mtime ?? 1_700_000_000);
  h.write(o.type ?? '0', 156, 1, 'latin1');
  if (o.link) h.write(o.link, 157, 100, 'utf8');
  h.write(o.magic ?? 'ustar\u000000', 257, 8, 'latin1');
  h.write('postgres', 265, 32, 'latin1');
  h.write('postgres', 297, 32, 'latin1');
  if (o.prefix) h.write(o.prefix, 345, 155, 'utf8');
  num(148, 8, headerChecksums(h).unsigned);
  return h;
}

function pad(b: Buffer): Buffer {
  const n = (512 - (b.length % 512)) % 512;
  return Buffer.concat([b, Buffer.alloc(n)]);
}

const END = Buffer.alloc(1024);

describe('readTar on PostgreSQL 15 output', () => {
  it('reads the head of a real base.tar exactly (ustar, space-terminated octal, directories with a trailing slash)', async () => {
    const entries = await readEverything(PG15_BASE_HEAD);
    expect(entries.map((e) => [e.name, e.type, e.mode.toString(8), e.size])).toEqual([
      ['backup_label', 'file', '600', 225],
      ['tablespace_map', 'file', '600', 18],
      ['pg_stat', 'dir', '700', 0],
      ['pg_notify', 'dir', '700', 0],
      ['PG_VERSION', 'file', '600', 3],
    ]);
    expect(entries[0]!.data).toMatch(/^START WAL LOCATION: 0\/2000028 \(file 000000010000000000000002\)\n/);
    expect(entries[1]!.data).toBe('16384 /tmp/pgt/ts\n');
    expect(entries[4]!.data).toBe('15\n');
    expect(new Date(entries[0]!.mtime * 1000).toISOString()).toBe('2026-12-04T08:51:36.000Z');
  });

  it('reads a whole tablespace tar, whatever the chunking', async () => {
    const whole = await readEverything(PG15_TABLESPACE);
    expect(whole.map((e) => [e.name, e.type, e.size])).toEqual([
      ['PG_15_202209061', 'dir', 0],
      ['PG_15_202209061/5', 'dir', 0],
      ['PG_15_202209061/5/16385', 'file', 8192],
    ]);
    for (const sizes of [[1], [511, 513], [7, 1024, 3], [100_000]]) expect(await readEverything(PG15_TABLESPACE, sizes)).toEqual(whole);
  });

  it('skips content the consumer does not read, and refuses reading it after the next entry', async () => {
    const names: string[] = [];
    let first: TarEntry | undefined;
    for await (const e of readTar(chunks(PG15_BASE_HEAD, [100]))) {
      names.push(e.name);
      first ??= e;
    }
    expect(names).toEqual(['backup_label', 'tablespace_map', 'pg_stat', 'pg_notify', 'PG_VERSION']);
    await expect(readAll(first!.content)).rejects.toThrow(/read after the next entry/);
  });
});

describe('readTar on what GNU tar writes', () => {
  const longDir = 'd'.repeat(60) + '/' + 'e'.repeat(60);
  const longName = `${longDir}/${'f'.repeat(90)}`;
  const longTarget = `../${'t'.repeat(120)}`;

  function makeTree(): string {
    const d = tempDir();
    mkdirSync(join(d, 'src', longDir), { recursive: true });
    writeFileSync(join(d, 'src', longName), 'long\n');
    writeFileSync(join(d, 'src', 'small'), Buffer.alloc(1000, 7));
    writeFileSync(join(d, 'src', 'empty'), '');
    symlinkSync(longTarget, join(d, 'src', 'link'));
    symlinkSync('small', join(d, 'src', 'short-link'));
    return d;
  }

  for (const format of ['gnu', 'pax', 'ustar']) {
    it(`reads --format=${format}: long names, symlinks, empty files`, async () => {
      const d = makeTree();
      const tarFile = join(d, 'out.tar');
      const members = ['small', 'empty', 'short-link', longName, ...(format === 'ustar' ? [] : ['link'])];
      execFileSync('tar', [`--format=${format}`, '-C', join(d, 'src'), '-cf', tarFile, ...members]);
      const entries = await readEverything(readFileSync(tarFile), [333]);
      const byName = new Map(entries.map((e) => [e.name, e]));
      expect(byName.get('small')).toMatchObject({ type: 'file', size: 1000, data: Buffer.alloc(1000, 7).toString('latin1') });
      expect(byName.get('empty')).toMatchObject({ type: 'file', size: 0, data: '' });
      expect(byName.get('short-link')).toMatchObject({ type: 'symlink', linkTarget: 'small' });
      expect(byName.get(longName)).toMatchObject({ type: 'file', data: 'long\n' });
      if (format !== 'ustar') expect(byName.get('link')).toMatchObject({ type: 'symlink', linkTarget: longTarget });
    });
  }

  it('reads directories and the record padding after the end (tar pads to 10240 bytes)', async () => {
    const d = makeTree();
    const tarFile = join(d, 'out.tar');
    execFileSync('tar', ['-C', join(d, 'src'), '-cf', tarFile, '.']);
    const data = readFileSync(tarFile);
    expect(data.length % 10240).toBe(0);
    const entries = await readEverything(data);
    expect(entries.find((e) => e.name === '.')?.type).toBe('dir');
    expect(entries.find((e) => e.name === `./${longDir}`)?.type).toBe('dir');
    expect(entries.filter((e) => e.type === 'file')).toHaveLength(3);
  });
});

describe('readTar on hand-built headers', () => {
  it('joins the ustar prefix and the name', async () => {
    const data = Buffer.concat([header({ name: 'file', prefix: 'a/b', size: 2 }), pad(Buffer.from('hi')), END]);
    expect(await readEverything(data)).toMatchObject([{ name: 'a/b/file', data: 'hi' }]);
  });

  it('ignores the prefix field of old GNU headers (magic "ustar  ")', async () => {
    const data = Buffer.concat([header({ name: 'file', prefix: 'junk', magic: 'ustar  \u0000', size: 1 }), pad(Buffer.from('x')), END]);
    expect(await readEverything(data)).toMatchObject([{ name: 'file' }]);
  });

  it('reads GNU base-256 numbers (tar.c print_tar_number past 8 GiB)', () => {
    const f = Buffer.alloc(12);
    f[0] = 0x80;
    f.writeUIntBE(9 * 1024 ** 3, 6, 6);
    expect(parseNumber(f, 0, 12)).toBe(9 * 1024 ** 3);
    expect(parseNumber(Buffer.from('0000000644 \u0000'), 0, 12)).toBe(0o644);
    expect(parseNumber(Buffer.from('  644\u0000\u0000\u0000\u0000\u0000\u0000\u0000'), 0, 12)).toBe(0o644);
    expect(parseNumber(Buffer.from('00006x4     '), 0, 12)).toBeUndefined();
    expect(parseNumber(Buffer.alloc(12), 0, 12)).toBeUndefined();
  });

  it('takes a base-256 size field for the content', async () => {
    const f = Buffer.alloc(12);
    f[0] = 0x80;
    f.writeUIntBE(3, 6, 6);
    const data = Buffer.concat([header({ name: 'big', sizeField: f }), pad(Buffer.from('abc')), END]);
    expect(await readEverything(data)).toMatchObject([{ name: 'big', size: 3, data: 'abc' }]);
  });

  it('applies pax path, linkpath, size and mtime, and GNU L/K records, to the next entry only', async () => {
    const rec = (k: string, v: string): string => {
      const body = ` ${k}=${v}\n`;
      let len = Buffer.byteLength(body) + 1;
      while (Buffer.byteLength(`${len}${body}`) !== len) len++;
      return `${len}${body}`;
    };
    const pax = Buffer.from(rec('path', 'p/ünïcode') + rec('mtime', '1700000000.5') + rec('linkpath', 'x'.repeat(150)));
    const longName = Buffer.from(`${'n'.repeat(200)}\u0000`);
    const data = Buffer.concat([
      header({ name: 'PaxHeader', type: 'x', size: pax.length }),
      pad(pax),
      header({ name: 'ignored', type: '2', link: 'ignored' }),
      header({ name: '././@LongLink', type: 'L', size: longName.length }),
      pad(longName),
      header({ name: 'short', size: 1 }),
      pad(Buffer.from('z')),
      header({ name: 'plain', size: 0 }),
      END,
    ]);
    const entries = await readEverything(data);
    expect(entries).toMatchObject([
      { name: 'p/ünïcode', type: 'symlink', linkTarget: 'x'.repeat(150), mtime: 1700000000.5 },
      { name: 'n'.repeat(200), data: 'z' },
      { name: 'plain', data: '' },
    ]);
  });

  it('refuses a header that fails its checksum, naming the byte offset', async () => {
    const h = header({ name: 'second', size: 0 });
    h[5] = 0x41;
    const data = Buffer.concat([header({ name: 'first', size: 1 }), pad(Buffer.from('a')), h, END]);
    await expect(readEverything(data)).rejects.toThrow(/header at byte 1024 fails its checksum/);
  });

  it('refuses a truncated archive at every cut, and one without its end blocks', async () => {
    const data = Buffer.concat([header({ name: 'a', size: 700 }), pad(Buffer.alloc(700, 1)), header({ name: 'b', type: '5' }), END]);
    for (let cut = 1; cut < data.length; cut += 37) {
      const err = await readEverything(data.subarray(0, cut)).catch((e: unknown) => e);
      expect(err, `cut at ${cut}`).toBeInstanceOf(TarError);
      expect((err as Error).message).toMatch(/truncated/);
    }
    await expect(readEverything(data.subarray(0, data.length - 1024))).rejects.toThrow(/without the two zero blocks/);
    await expect(readEverything(data.subarray(0, data.length - 512))).rejects.toThrow(/after the first of its two closing zero blocks/);
    // Unless told that the end blocks may be missing (an archive as BASE_BACKUP sends it, before pg_basebackup adds them).
    expect(await readEverything(data.subarray(0, data.length - 1024), undefined, { requireEnd: false })).toHaveLength(2);
    await expect(readEverything(data.subarray(0, 1000), undefined, { requireEnd: false })).rejects.toThrow(/truncated/);
  });

  it('refuses data after a zero block, and non-zero bytes after the end', async () => {
    const one = Buffer.concat([header({ name: 'a', size: 0 })]);
    await expect(readEverything(Buffer.concat([one, Buffer.alloc(512), header({ name: 'b' }), END]))).rejects.toThrow(/zero block at byte 512 is followed by data/);
    const trailing = Buffer.concat([one, END, Buffer.alloc(100), Buffer.from('x')]);
    await expect(readEverything(trailing)).rejects.toThrow(/non-zero bytes after its end/);
    expect(await readEverything(Buffer.concat([one, END, Buffer.alloc(9000)]))).toHaveLength(1);
  });

  it('refuses an extended header left without its entry, an oversized one, and unknown types', async () => {
    const longName = Buffer.from('name\u0000');
    await expect(readEverything(Buffer.concat([header({ name: 'L', type: 'L', size: longName.length }), pad(longName), END]))).rejects.toThrow(/followed by the end/);
    await expect(readEverything(Buffer.concat([header({ name: 'L', type: 'L', size: 2 ** 21 }), END]))).rejects.toThrow(/more than the .* accepted/);
    await expect(readEverything(Buffer.concat([header({ name: 's', type: 'S' }), END]))).rejects.toThrow(/type "S"/);
    const badPax = Buffer.from('99 path=x\n');
    await expect(readEverything(Buffer.concat([header({ name: 'x', type: 'x', size: badPax.length }), pad(badPax), header({ name: 'a' }), END]))).rejects.toThrow(/malformed record/);
  });

  it('closes the source when the consumer stops early', async () => {
    let closed = false;
    async function* src(): AsyncGenerator<Buffer> {
      try {
        yield Buffer.concat([header({ name: 'a', size: 1 }), pad(Buffer.from('a'))]);
        yield Buffer.concat([header({ name: 'b', size: 1 }), pad(Buffer.from('b')), END]);
      } finally {
        closed = true;
      }
    }
    for await (const e of readTar(src())) {
      expect(e.name).toBe('a');
      break;
    }
    expect(closed).toBe(true);
  });
});

describe('readTar under random damage', () => {
  it('never crashes nor hangs: every damaged archive reads to an end or fails with TarError', async () => {
    const base = Buffer.concat([PG15_BASE_HEAD.subarray(0, 4096), PG15_TABLESPACE]);
    const rand = rng(20261204);
    let failures = 0;
    for (let i = 0; i < 400; i++) {
      const d = Buffer.from(base);
      const kind = i % 4;
      if (kind === 0) {
        for (let k = 0; k < 1 + Math.floor(rand() * 8); k++) d[Math.floor(rand() * d.length)] = Math.floor(rand() * 256);
      } else if (kind === 1) {
        // Damage inside a header, then fix its checksum: the reader must still cope with what the fields say.
        const h = Math.floor(rand() * (d.length / 512)) * 512;
        for (let k = 0; k < 4; k++) d[h + Math.floor(rand() * 500)] = Math.floor(rand() * 256);
        const sum = headerChecksums(d.subarray(h, h + 512)).unsigned;
        d.write(`${sum.toString(8).padStart(7, '0')} `, h + 148, 8, 'latin1');
      } else if (kind === 2) {
        const cut = Math.floor(rand() * d.length);
        d.fill(0, cut, Math.min(d.length, cut + Math.floor(rand() * 2000)));
      }
      const input = kind === 3 ? d.subarray(0, Math.floor(rand() * d.length)) : d;
      const sizes = [1 + Math.floor(rand() * 3000), 1 + Math.floor(rand() * 10)];
      try {
        let n = 0;
        for await (const e of readTar(chunks(input, sizes))) {
          if (rand() < 0.5) await readAll(e.content);
          if (++n > 10_000) throw new Error('too many entries');
        }
      } catch (err) {
        if (!(err instanceof TarError)) throw err;
        failures++;
      }
    }
    expect(failures).toBeGreaterThan(100);
  }, 60_000);
});
