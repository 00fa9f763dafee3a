// A streaming tar reader: the archives BASE_BACKUP sends (PostgreSQL's src/port/tar.c
// tarCreateHeader: ustar, names of at most 99 bytes, directories named with a trailing "/",
// pg_tblspc/<oid> symlinks before 15 or without TABLESPACE_MAP, GNU base-256 numbers for sizes
// past 8 GiB) and what other tars write (the ustar prefix field, GNU 'L'/'K' long names and links,
// pax 'x'/'g' headers).
//
// Guarantees: memory is bounded by one source chunk plus a header (long names and pax records are
// capped at MAX_META_BYTES); every header's checksum is verified; an archive must end with its two
// zero blocks (anything after them must be zeros too, as tar's record padding is) unless
// `requireEnd: false`; a truncated or damaged archive is a TarError naming the byte offset, never
// a crash or a hang. A file's content is a stream the consumer reads before asking for the next
// entry; what it leaves unread is skipped then, and reading it after that is an error. A piece of
// the source is not used once the next one is asked for (the source may read into one buffer
// again and again); the content pieces handed out are views of it, valid as long.

/** Bytes in a tar block. */
export const BLOCK = 512;

/** The most bytes a GNU long name or link, or a pax header, may hold here. */
export const MAX_META_BYTES = 1 << 20;

export type TarEntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'other';

export interface TarEntry {
  /** The path as stored (pax or GNU long name, else ustar prefix + "/" + name); a directory's without its trailing "/". */
  name: string;
  type: TarEntryType;
  /** The typeflag byte as a character ('0', '5', '2', ...; '' for an old-style NUL). */
  typeflag: string;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of content (0 for all but files). */
  size: number;
  mtime: Date;
  /** A symlink's or hard link's target. */
  linkTarget?: string;
  /** Byte offset of the entry's (first) header in the archive. */
  offset: number;
  /** The content: read it before asking for the next entry. Empty for all but files. */
  content: AsyncIterable<Buffer>;
}

export interface TarReadOptions {
  /** Require the two zero blocks that end an archive (default true). False: a clean end of input at an entry boundary also ends it. */
  requireEnd?: boolean;
  /** Shown in errors (e.g. the archive object's name). */
  label?: string;
}

export class TarError extends Error {
  constructor(
    message: string,
    /** Byte offset in the archive where the problem was found. */
    readonly offset: number,
  ) {
    super(message);
    this.name = 'TarError';
  }
}

/** Reads exact byte counts from chunks as they come, holding at most one chunk. */
class ByteSource {
  private readonly it: AsyncIterator<Buffer>;
  private chunk: Buffer = Buffer.alloc(0);
  private pos = 0;
  private done = false;
  /** Bytes handed out so far. */
  offset = 0;

  constructor(source: AsyncIterable<Buffer>) {
    this.it = source[Symbol.asyncIterator]();
  }

  /** Make bytes available; false at the end of input. */
  private async fill(): Promise<boolean> {
    while (this.pos >= this.chunk.length) {
      if (this.done) return false;
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        return false;
      }
      if (!Buffer.isBuffer(r.value)) throw new TypeError('tar source yielded something other than a Buffer');
      this.chunk = r.value;
      this.pos = 0;
    }
    return true;
  }

  /** Exactly n bytes (n ≤ a few blocks), or how many were there when input ended (possibly 0). */
  async take(n: number): Promise<Buffer> {
    if (!(await this.fill())) return Buffer.alloc(0);
    if (this.chunk.length - this.pos >= n) {
      const b = this.chunk.subarray(this.pos, this.pos + n);
      this.pos += n;
      this.offset += n;
      return b;
    }
    const out = Buffer.alloc(n);
    let got = 0;
    while (got < n && (await this.fill())) {
      const k = Math.min(n - got, this.chunk.length - this.pos);
      this.chunk.copy(out, got, this.pos, this.pos + k);
      this.pos += k;
      got += k;
      this.offset += k;
    }
    return got === n ? out : out.subarray(0, got);
  }

  /** Between 1 and max bytes, as a view of the current chunk; empty at the end of input. */
  async some(max: number): Promise<Buffer> {
    if (!(await this.fill())) return Buffer.alloc(0);
    const k = Math.min(max, this.chunk.length - this.pos);
    const b = this.chunk.subarray(this.pos, this.pos + k);
    this.pos += k;
    this.offset += k;
    return b;
  }

  async close(): Promise<void> {
    if (!this.done) {
      this.done = true;
      await this.it.return?.();
    }
  }
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** The bytes of a NUL-terminated (or full-width) field. */
function field(h: Buffer, off: number, len: number): Buffer {
  const f = h.subarray(off, off + len);
  const nul = f.indexOf(0);
  return nul < 0 ? f : f.subarray(0, nul);
}

function text(h: Buffer, off: number, len: number): string {
  return field(h, off, len).toString('utf8');
}

/**
 * A numeric header field: octal digits, optionally led by spaces and ended by a space or NUL
 * (tar.c print_tar_number), or GNU base-256 (first byte 0x80, the rest big-endian). Undefined when
 * it is neither.
 */
export function parseNumber(h: Buffer, off: number, len: number): number | undefined {
  const f = h.subarray(off, off + len);
  if (f[0] === 0x80) {
    let v = 0n;
    for (let i = 1; i < f.length; i++) v = (v << 8n) | BigInt(f[i]!);
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
  }
  let i = 0;
  while (i < f.length && f[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (; i < f.length; i++) {
    const c = f[i]!;
    if (c >= 0x30 && c <= 0x37) {
      v = v * 8 + (c - 0x30);
      digits++;
      if (v > Number.MAX_SAFE_INTEGER) return undefined;
    } else break;
  }
  for (; i < f.length; i++) if (f[i] !== 0x20 && f[i] !== 0) return undefined;
  return digits > 0 ? v : undefined;
}

/** The header checksum: the unsigned sum of its bytes with the checksum field taken as spaces (and the signed sum some old tars wrote). */
export function headerChecksums(h: Buffer): { unsigned: number; signed: number } {
  let u = 0;
  let s = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : h[i]!;
    u += c;
    s += c >= 0x80 ? c - 0x100 : c;
  }
  return { unsigned: u, signed: s };
}

/** Parse pax extended header records ("<len> <key>=<value>\n"). */
function parsePax(data: Buffer, at: number, where: string): Map<string, string> {
  const out = new Map<string, string>();
  let p = 0;
  while (p < data.length) {
    if (data[p] === 0) break; // some writers pad with NULs
    const sp = data.indexOf(0x20, p);
    const lenText = sp > p ? data.subarray(p, sp).toString('latin1') : '';
    const len = /^[0-9]{1,8}$/.test(lenText) ? Number(lenText) : Number.NaN;
    if (!Number.isFinite(len) || len <= sp - p + 1 || p + len > data.length || data[p + len - 1] !== 0x0a) {
      throw new TarError(`${where}: pax header at byte ${at} has a malformed record`, at);
    }
    const rec = data.subarray(sp + 1, p + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new TarError(`${where}: pax header at byte ${at} has a record without "="`, at);
    out.set(rec.subarray(0, eq).toString('utf8'), rec.subarray(eq + 1).toString('utf8'));
    p += len;
  }
  return out;
}

const EMPTY: AsyncIterable<Buffer> = {
  async *[Symbol.asyncIterator]() {},
};

/**
 * The entries of a tar archive, in order. Each entry's `content` must be read (or left) before
 * the next entry is asked for; the reader skips what was left. Ending the iteration early closes
 * the source.
 */
export async function* readTar(source: AsyncIterable<Buffer>, opts: TarReadOptions = {}): AsyncGenerator<TarEntry> {
  const requireEnd = opts.requireEnd ?? true;
  const where = opts.label ? `tar archive ${opts.label}` : 'tar archive';
  const src = new ByteSource(source);
  const truncated = (what: string): TarError => new TarError(`${where} is truncated: it ends ${what} at byte ${src.offset}`, src.offset);

  /** Read `n` bytes of data plus padding to the block, into one buffer (metadata entries only). */
  const readMeta = async (n: number, at: number, kind: string): Promise<Buffer> => {
    if (n > MAX_META_BYTES) throw new TarError(`${where}: ${kind} at byte ${at} is ${n} bytes, more than the ${MAX_META_BYTES} accepted`, at);
    const padded = Math.ceil(n / BLOCK) * BLOCK;
    const b = await src.take(padded);
    if (b.length < padded) throw truncated(`inside a ${kind}`);
    return b.subarray(0, n);
  };

  // The content of the entry most recently yielded: what is left of it and its padding.
  let current: { left: number; pad: number; closed: boolean } | undefined;
  const finishCurrent = async (): Promise<void> => {
    const c = current;
    if (!c) return;
    c.closed = true;
    while (c.left > 0) {
      const b = await src.some(c.left);
      if (b.length === 0) throw truncated('inside a file');
      c.left -= b.length;
    }
    if (c.pad > 0) {
      const p = await src.take(c.pad);
      if (p.length < c.pad) throw truncated('inside the padding after a file');
    }
    current = undefined;
  };

  const globalPax = new Map<string, string>();
  try {
    let pax: Map<string, string> | undefined;
    let longName: string | undefined;
    let longLink: string | undefined;
    let entryStart: number | undefined;
    for (;;) {
      await finishCurrent();
      const at = src.offset;
      const h = await src.take(BLOCK);
      if (h.length === 0) {
        if (entryStart !== undefined) throw truncated('after an extended header, before the entry it describes');
        if (requireEnd) throw truncated('without the two zero blocks that end an archive');
        return;
      }
      if (h.length < BLOCK) throw truncated('inside a header');
      if (isZero(h)) {
        if (entryStart !== undefined) throw new TarError(`${where}: an extended header at byte ${entryStart} is followed by the end of the archive`, entryStart);
        const second = await src.take(BLOCK);
        if (second.length < BLOCK) {
          if (second.length === 0 && !requireEnd) return;
          throw truncated('after the first of its two closing zero blocks');
        }
        if (!isZero(second)) throw new TarError(`${where} is damaged: a zero block at byte ${at} is followed by data`, at);
        // Anything after the end (tar pads to its record size) must be zeros.
        for (;;) {
          const rest = await src.some(64 * 1024);
          if (rest.length === 0) return;
          if (!isZero(rest)) throw new TarError(`${where} is damaged: non-zero bytes after its end at byte ${at + 2 * BLOCK}`, src.offset - rest.length);
        }
      }
      const stored = parseNumber(h, 148, 8);
      const sums = headerChecksums(h);
      if (stored === undefined || (stored !== sums.unsigned && stored !== sums.signed)) {
        throw new TarError(`${where} is damaged: the header at byte ${at} fails its checksum`, at);
      }
      const flagByte = h[156]!;
      const typeflag = flagByte === 0 ? '' : String.fromCharCode(flagByte);
      const size = parseNumber(h, 124, 12);
      if (size === undefined) throw new TarError(`${where} is damaged: the header at byte ${at} has an invalid size`, at);
      entryStart ??= at;

      if (typeflag === 'x' || typeflag === 'g') {
        const data = await readMeta(size, at, 'pax header');
        const recs = parsePax(data, at, where);
        if (typeflag === 'g') for (const [k, v] of recs) globalPax.set(k, v);
        else pax = new Map([...(pax ?? []), ...recs]);
        if (typeflag === 'g') entryStart = undefined;
        continue;
      }
      if (typeflag === 'L' || typeflag === 'K') {
        const data = await readMeta(size, at, typeflag === 'L' ? 'GNU long name' : 'GNU long link');
        const nul = data.indexOf(0);
        const value = (nul < 0 ? data : data.subarray(0, nul)).toString('utf8');
        if (typeflag === 'L') longName = value;
        else longLink = value;
        continue;
      }

      const magic = h.subarray(257, 263).toString('latin1');
      const posix = magic === 'ustar\0';
      const ext = new Map([...globalPax, ...(pax ?? [])]);
      let name = ext.get('path') ?? longName;
      if (name === undefined) {
        name = text(h, 0, 100);
        const prefix = posix ? text(h, 345, 155) : '';
        if (prefix !== '') name = `${prefix}/${name}`;
      }
      let linkTarget: string | undefined = ext.get('linkpath') ?? longLink ?? text(h, 157, 100);
      const mode = parseNumber(h, 100, 8);
      const mtimeNum = parseNumber(h, 136, 12);
      if (mode === undefined || mtimeNum === undefined) throw new TarError(`${where} is damaged: the header at byte ${at} has an invalid mode or time`, at);
      let realSize = size;
      const paxSize = ext.get('size');
      if (paxSize !== undefined) {
        if (!/^[0-9]{1,16}$/.test(paxSize) || !Number.isSafeInteger(Number(paxSize))) throw new TarError(`${where}: pax header before byte ${at} has an invalid size`, at);
        realSize = Number(paxSize);
      }
      let mtime = new Date(mtimeNum * 1000);
      const paxTime = ext.get('mtime');
      if (paxTime !== undefined && /^-?[0-9]{1,15}(?:\.[0-9]*)?$/.test(paxTime)) mtime = new Date(Math.round(Number(paxTime) * 1000));
      const numOr = (key: string, off: number): number => {
        const v = ext.get(key);
        if (v !== undefined && /^[0-9]{1,15}$/.test(v)) return Number(v);
        return parseNumber(h, off, 8) ?? 0;
      };

      let type: TarEntryType;
      switch (typeflag) {
        case '0':
        case '7':
          type = 'file';
          break;
        case '':
          // Old-style: a directory is a name ending in "/".
          type = name.endsWith('/') ? 'dir' : 'file';
          break;
        case '5':
          type = 'dir';
          break;
        case '2':
          type = 'symlink';
          break;
        case '1':
          type = 'hardlink';
          break;
        case '3':
        case '4':
        case '6':
          type = 'other';
          break;
        default:
          throw new TarError(`${where}: the entry at byte ${at} has type ${JSON.stringify(typeflag)}, which this reader does not handle`, at);
      }
      if (name === '') throw new TarError(`${where} is damaged: the entry at byte ${at} has no name`, at);
      if (type === 'dir') name = name.replace(/\/+$/, '') || '/';
      if (type !== 'symlink' && type !== 'hardlink') linkTarget = undefined;
      // A hard link's size field may be non-zero in some writers, with no content following (POSIX: none is stored).
      const dataSize = type === 'hardlink' || type === 'dir' || type === 'symlink' ? 0 : realSize;
      const entry: TarEntry = {
        name,
        type,
        typeflag,
        mode: mode & 0o7777,
        uid: numOr('uid', 108),
        gid: numOr('gid', 116),
        size: dataSize,
        mtime,
        offset: entryStart,
        content: EMPTY,
      };
      if (linkTarget !== undefined) entry.linkTarget = linkTarget;
      pax = undefined;
      longName = undefined;
      longLink = undefined;
      entryStart = undefined;
      const state = { left: dataSize, pad: (BLOCK - (dataSize % BLOCK)) % BLOCK, closed: false };
      current = state;
      if (dataSize > 0) {
        const entryName = name;
        entry.content = {
          [Symbol.asyncIterator]: async function* () {
            if (state.closed) throw new TarError(`${where}: the content of "${entryName}" was read after the next entry was asked for`, at);
            while (state.left > 0) {
              const b = await src.some(state.left);
              if (b.length === 0) throw truncated(`inside "${entryName}"`);
              state.left -= b.length;
              yield b;
              if (state.closed) throw new TarError(`${where}: the content of "${entryName}" was read after the next entry was asked for`, at);
            }
          },
        };
      }
      yield entry;
    }
  } finally {
    await src.close();
  }
}

/** Read a whole content stream into one buffer (small files only). */
export async function readAll(content: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of content) parts.push(Buffer.from(b));
  return Buffer.concat(parts);
}
