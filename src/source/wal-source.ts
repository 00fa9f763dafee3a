// The one WAL source (types.ts): timelines and the end of WAL across a receiver's directory, the
// archive and a running receiver's durable tail, and cursors that read WAL from a position on a
// timeline the way a walsender reads its pg_wal (walsender.c StartReplication, XLogSendPhysical,
// WalSndSegmentOpen): a historic timeline ends at its switch point and the segment holding the
// switch point is read from the next timeline's file; the current timeline is followed as it
// grows; a missing segment with later WAL behind it is "already been removed". Every byte handed
// out was verified first (store-reader.ts). Segments read from stores are kept in a small shared
// cache, so clients reading the same WAL fetch it once, and read ahead from remote archives.
import type { Logger } from '../util/log.js';
import type { Lsn } from '../wal/lsn.js';
import { historyFileName, walFileName } from '../wal/segment.js';
import { magicForServerVersion, PAGE_MAGIC_BY_MAJOR } from '../wal/page.js';
import { checkHistoryForTimeline, HistoryParseError, parseHistory, type TimelineHistoryEntry } from '../wal/timeline.js';
import { buildInventory, geometryOf } from '../ops/inventory.js';
import { readIdentity } from '../archive/identity.js';
import { StorageError } from '../storage/types.js';
import type { LiveTail } from './live-tail.js';
import type { PartialSegment, StoreReader } from './store-reader.js';
import { segmentRemoved, WalSourceError, type ReadResult, type SourceIdentity, type TimelinePlan, type TimelineState } from './types.js';

export interface WalSourceOptions {
  /** Where WAL is read, in order of preference: a receiver's directory first, then the archive. */
  stores: StoreReader[];
  /** A running receiver's durable tail (receive --serve). */
  tail?: LiveTail;
  /** The system the WAL belongs to when known beforehand (receive --serve: the server said); else read from the stores. */
  identity?: SourceIdentity;
  log: Logger;
  /** How often stores are looked at again for new WAL while a client waits for it (default 1000 ms). */
  pollIntervalMs?: number;
  /** Segments read ahead of a client from an archive (default 2; never from a directory). */
  readAhead?: number;
  /** Segments kept in memory for clients reading the same WAL (default 4). */
  cacheSegments?: number;
}

interface History {
  raw: Buffer;
  entries: TimelineHistoryEntry[];
}

/** The major version an XLOG_PAGE_MAGIC stands for. */
export function majorOfMagic(magic: number): number | undefined {
  for (const [major, m] of Object.entries(PAGE_MAGIC_BY_MAJOR)) if (m === magic) return Number(major);
  return undefined;
}

/** Identity from a server's answers (receive --serve). */
export function identityOfServer(systemId: bigint, segSize: number, blockSize: number, serverVersionNum: number): SourceIdentity {
  const magic = magicForServerVersion(serverVersionNum);
  return { systemId, segSize, blockSize, magic, major: Math.floor(serverVersionNum / 10000) };
}

/** Transient store failures are tried this many times before a client is told. */
const READ_ATTEMPTS = 3;

export class WalSource {
  private id: SourceIdentity | undefined;
  private readonly histories = new Map<number, History>();
  /** Highest complete segment seen per timeline. */
  private readonly segMax = new Map<number, bigint>();
  private current = 0;
  /** End of the segment in progress on the current timeline, as the stores show it. */
  private partialEnd: { tli: number; end: Lsn } | undefined;
  private lastRefresh = 0;
  private refreshing: Promise<void> | undefined;
  private readonly listeners = new Set<() => void>();
  private readonly cache = new Map<string, Buffer>();
  private readonly inFlight = new Map<string, Promise<Buffer | undefined>>();
  private readonly pollMs: number;
  private readonly readAhead: number;
  private readonly cacheSegments: number;
  private detachTail: (() => void) | undefined;
  private closed = false;

  private constructor(private readonly o: WalSourceOptions) {
    this.pollMs = o.pollIntervalMs ?? 1000;
    this.readAhead = o.readAhead ?? 2;
    this.cacheSegments = Math.max(1, o.cacheSegments ?? 4);
    this.id = o.identity;
  }

  /** Look at every store once: identity, timelines, the newest segments. */
  static async open(o: WalSourceOptions): Promise<WalSource> {
    const s = new WalSource(o);
    await s.scan();
    if (o.tail) {
      s.detachTail = o.tail.onChange(() => {
        if (o.tail!.timeline > s.current) void s.refresh().catch((err: Error) => s.o.log.warn(`cannot look for new timelines: ${err.message}`));
        s.emit();
      });
    }
    return s;
  }

  close(): void {
    this.closed = true;
    this.detachTail?.();
    this.listeners.clear();
    this.cache.clear();
  }

  /**
   * The system becomes known from elsewhere (receive --serve: the server identified itself).
   * A source that learned another system from its stores refuses it.
   */
  async adoptIdentity(id: SourceIdentity): Promise<void> {
    if (this.id) {
      if (this.id.systemId !== id.systemId || this.id.segSize !== id.segSize) {
        throw new Error(`the WAL served is of database system ${this.id.systemId} (${this.id.segSize}-byte segments), the server is system ${id.systemId} (${id.segSize}-byte segments)`);
      }
      if (this.id.major === undefined) this.id = { ...this.id, magic: id.magic, major: id.major };
      return;
    }
    this.id = id;
    this.segMax.clear();
    await this.refresh(true);
    this.emit();
  }

  /** The system served, once known (undefined while no store holds any WAL). */
  get identity(): SourceIdentity | undefined {
    return this.id;
  }

  /** The whole listing of every store: identity (when not given), timelines, highest segments. */
  private async scan(): Promise<void> {
    const listed = [];
    for (const store of this.o.stores) listed.push({ store, inv: buildInventory(await store.list()) });
    if (!this.id) this.id = await this.identityFrom(listed);
    for (const { store, inv } of listed) {
      if (this.id) {
        for (const [tli, list] of inv.segments) {
          const last = list[list.length - 1];
          if (!last) continue;
          const segNo = this.segNoOfName(last.name);
          const held = this.segMax.get(tli);
          if (held === undefined || segNo > held) this.segMax.set(tli, segNo);
        }
      }
      for (const tli of inv.histories.keys()) await this.loadHistory(tli, store);
      for (const t of [...inv.segments.keys(), ...inv.histories.keys(), ...inv.partials.map((p) => p.tli), ...inv.pieces.map((p) => p.tli)]) {
        if (t > this.current) this.current = t;
      }
    }
    if (this.o.tail && this.o.tail.timeline > this.current) this.current = this.o.tail.timeline;
    await this.probePartial();
    this.lastRefresh = Date.now();
  }

  /**
   * The system the stores hold: the long page header of each store's newest segment (system,
   * sizes, page magic), checked against its identity record and against the other stores.
   */
  private async identityFrom(listed: { store: StoreReader; inv: ReturnType<typeof buildInventory> }[]): Promise<SourceIdentity | undefined> {
    const found: { from: string; id: SourceIdentity }[] = [];
    for (const { store, inv } of listed) {
      const candidates = [...inv.segments.values()].flat().sort((a, b) => (a.position! < b.position! ? 1 : -1));
      let here: { from: string; id: SourceIdentity } | undefined;
      for (const c of [...candidates.slice(0, 3), ...inv.partials.slice(-1)]) {
        let data: Buffer;
        try {
          data = (await store.store.get(c.name)).data;
        } catch (err) {
          if (err instanceof StorageError && err.transient) throw err;
          continue; // damaged or locked: another segment may tell
        }
        const g = geometryOf(data, c.name);
        if (!g) continue;
        const magic = data.readUInt16LE(0);
        here = { from: `${store.description} (${c.name})`, id: { systemId: g.systemId, segSize: g.segSize, blockSize: g.blockSize, magic, major: majorOfMagic(magic) } };
        break;
      }
      if (!here) continue;
      const recorded = await readIdentity(store.store).catch(() => undefined);
      if (recorded && (recorded.systemIdentifier !== here.id.systemId || recorded.segmentSize !== here.id.segSize)) {
        throw new Error(
          `${store.description}: its identity record names system ${recorded.systemIdentifier} with ${recorded.segmentSize}-byte segments, but ${here.from} is of system ${here.id.systemId} with ${here.id.segSize}-byte segments`,
        );
      }
      found.push(here);
    }
    const first = found[0];
    for (const f of found.slice(1)) {
      if (f.id.systemId !== first!.id.systemId || f.id.segSize !== first!.id.segSize) {
        throw new Error(
          `${first!.from} holds WAL of system ${first!.id.systemId} (${first!.id.segSize}-byte segments), ${f.from} of system ${f.id.systemId} (${f.id.segSize}-byte segments): they cannot be served together`,
        );
      }
    }
    return first?.id;
  }

  private segNoOfName(name: string): bigint {
    const per = 0x100000000n / BigInt(this.id!.segSize);
    return BigInt(`0x${name.slice(8, 16)}`) * per + BigInt(`0x${name.slice(16)}`);
  }

  private async loadHistory(tli: number, store?: StoreReader): Promise<boolean> {
    if (this.histories.has(tli) || tli < 2) return this.histories.has(tli);
    for (const s of store ? [store] : this.o.stores) {
      const raw = await s.history(tli);
      if (!raw) continue;
      try {
        const entries = parseHistory(raw.toString('utf8'));
        checkHistoryForTimeline(entries, tli);
        this.histories.set(tli, { raw, entries });
        return true;
      } catch (err) {
        if (err instanceof HistoryParseError) {
          this.o.log.warn(`${s.description}: ${historyFileName(tli)} cannot be used: ${err.message}`);
          continue;
        }
        throw err;
      }
    }
    return false;
  }

  /** Look again (at most once per poll interval, one look at a time) for new timelines and WAL. */
  async refresh(force = false): Promise<void> {
    if (this.refreshing) return this.refreshing;
    if (!force && Date.now() - this.lastRefresh < this.pollMs) return;
    this.refreshing = (async () => {
      try {
        const before = `${this.current} ${this.end()}`;
        if (!this.id || this.segMax.size === 0) {
          this.segMax.clear();
          await this.scan();
        } else {
          await this.probeTimelines();
          // The receiver's tail tells where the current timeline ends: no need to ask the stores.
          const tail = this.o.tail;
          if (!(tail && tail.timeline === this.current && tail.first !== undefined)) {
            await this.probeSegments();
            await this.probePartial();
          }
        }
        this.lastRefresh = Date.now();
        if (`${this.current} ${this.end()}` !== before) this.emit();
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  private async anyStoreHas(name: string): Promise<boolean> {
    for (const s of this.o.stores) if (await s.has(name)) return true;
    return false;
  }

  /** A new timeline announces itself by its history file, as findNewestTimeLine probes for it. */
  private async probeTimelines(): Promise<void> {
    const target = Math.max(this.current, this.o.tail?.timeline ?? 0);
    for (let t = this.current + 1; t <= target || (await this.anyStoreHas(historyFileName(t))); t++) {
      if (!(await this.loadHistory(t))) {
        if (t > target) break;
        continue; // the receiver's timeline without its history file yet: look again later
      }
      this.current = t;
    }
    if (target > this.current) this.current = target;
  }

  /** Complete segments that appeared after the highest one known on the current timeline. */
  private async probeSegments(): Promise<void> {
    if (!this.id) return;
    const tli = this.current;
    let next = (this.segMax.get(tli) ?? this.startSegNo(tli) - 1n) + 1n;
    for (let i = 0; i < 1024; i++, next++) {
      if (!(await this.anyStoreHas(walFileName(tli, next, this.id.segSize)))) break;
      this.segMax.set(tli, next);
    }
  }

  /** How far the segment in progress on the current timeline reaches in the stores. */
  private async probePartial(): Promise<void> {
    if (!this.id) return;
    const tli = this.current;
    const segNo = (this.segMax.get(tli) ?? this.startSegNo(tli) - 1n) + 1n;
    this.partialEnd = undefined;
    for (const s of this.o.stores) {
      const p = await s.partial(tli, segNo, this.id).catch((err: Error) => {
        this.o.log.warn(`cannot read the segment in progress from ${s.description}: ${err.message}`);
        return undefined;
      });
      if (p && p.valid > 0) {
        const end = segNo * BigInt(this.id.segSize) + BigInt(p.valid);
        if (!this.partialEnd || end > this.partialEnd.end) this.partialEnd = { tli, end };
      }
    }
  }

  /** The first segment of a timeline: where its parent ended (0 for timeline 1 or unknown). */
  private startSegNo(tli: number): bigint {
    const h = this.histories.get(tli);
    const last = h?.entries[h.entries.length - 1];
    return last && this.id ? last.end / BigInt(this.id.segSize) : 0n;
  }

  /** End of WAL held on the current timeline. */
  private end(): Lsn {
    const tli = this.current;
    const segSize = BigInt(this.id?.segSize ?? 0);
    let end = 0n;
    const h = this.histories.get(tli);
    const begin = h?.entries[h.entries.length - 1]?.end;
    if (begin !== undefined) end = begin;
    const max = this.segMax.get(tli);
    if (max !== undefined && this.id) end = bigMax(end, (max + 1n) * segSize);
    if (this.partialEnd?.tli === tli) end = bigMax(end, this.partialEnd.end);
    const tail = this.o.tail;
    if (tail && tail.timeline === tli) end = bigMax(end, tail.durable);
    return end;
  }

  /** The current timeline as last looked at (no new look). */
  timelineNow(): number {
    return this.current;
  }

  /** End of WAL on the current timeline as last looked at (no new look). */
  endOfCurrent(): Lsn {
    return this.end();
  }

  /** The timelines and the end of WAL, looked at again when the last look is older than the poll interval. */
  async timelines(): Promise<TimelineState> {
    await this.refresh();
    return { current: this.current, history: this.histories.get(this.current)?.entries ?? [], end: this.end() };
  }

  /** The raw bytes of a timeline's history file, or undefined. */
  async historyFile(tli: number): Promise<Buffer | undefined> {
    if (!this.histories.has(tli)) await this.loadHistory(tli);
    return this.histories.get(tli)?.raw;
  }

  /** How a timeline may be read: the current one, a historic one up to its switch point, or unknown. */
  plan(tli: number): TimelinePlan {
    if (tli === this.current) return { kind: 'current' };
    const entries = this.histories.get(this.current)?.entries ?? [];
    const i = entries.findIndex((e) => e.tli === tli);
    if (i < 0) return { kind: 'unknown' };
    return { kind: 'historic', switchpoint: entries[i]!.end, nextTli: entries[i + 1]?.tli ?? this.current };
  }

  /** Wait until the source may hold more (a store grew, the receiver made WAL durable) or `ms` passed. */
  waitForChange(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.listeners.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.listeners.add(done);
    });
  }

  private emit(): void {
    for (const fn of [...this.listeners]) fn();
  }

  /** A complete, verified segment from the first store that holds it (shared cache, read-ahead). */
  async segment(tli: number, segNo: bigint): Promise<Buffer | undefined> {
    const id = this.requireIdentity();
    const name = walFileName(tli, segNo, id.segSize);
    const cached = this.cache.get(name);
    if (cached) {
      this.cache.delete(name);
      this.cache.set(name, cached); // most recently used last
      return cached;
    }
    let p = this.inFlight.get(name);
    if (!p) {
      p = this.fetchSegment(tli, segNo, name).finally(() => this.inFlight.delete(name));
      this.inFlight.set(name, p);
    }
    return p;
  }

  private async fetchSegment(tli: number, segNo: bigint, name: string, ahead = true): Promise<Buffer | undefined> {
    const id = this.requireIdentity();
    for (const store of this.o.stores) {
      const data = await withRetries(() => store.segment(tli, segNo, id));
      if (!data) continue;
      this.remember(name, data);
      if (ahead && store.role === 'archive') this.readAheadFrom(tli, segNo);
      return data;
    }
    return undefined;
  }

  private remember(name: string, data: Buffer): void {
    if (this.closed) return;
    this.cache.set(name, data);
    while (this.cache.size > this.cacheSegments) this.cache.delete(this.cache.keys().next().value!);
  }

  /** Fetch the next segments of a timeline into the cache, as far as they are known to exist. */
  private readAheadFrom(tli: number, segNo: bigint): void {
    const id = this.requireIdentity();
    const max = this.segMax.get(tli);
    const n = Math.min(this.readAhead, this.cacheSegments - 1);
    for (let i = 1n; i <= BigInt(n); i++) {
      const s = segNo + i;
      if (max === undefined || s > max) break;
      const name = walFileName(tli, s, id.segSize);
      if (this.cache.has(name) || this.inFlight.has(name)) continue;
      // A client asking for the segment meanwhile shares this fetch, and its failure: a damaged
      // segment must reach it as an error, never as "not there".
      const p = this.fetchSegment(tli, s, name, false).finally(() => this.inFlight.delete(name));
      p.catch(() => undefined);
      this.inFlight.set(name, p);
    }
  }

  /** The segment in progress from the first store that has some of it. */
  async partial(tli: number, segNo: bigint): Promise<PartialSegment | undefined> {
    const id = this.requireIdentity();
    let best: PartialSegment | undefined;
    for (const store of this.o.stores) {
      const p = await withRetries(() => store.partial(tli, segNo, id));
      if (p && (!best || p.valid > best.valid)) best = p;
    }
    return best;
  }

  /** Whether a complete segment after `segNo` is known on `tli` (a missing one is then "removed", not "not yet"). */
  laterSegmentKnown(tli: number, segNo: bigint): boolean {
    const max = this.segMax.get(tli);
    if (max !== undefined && max > segNo) return true;
    const tail = this.o.tail;
    const first = tail?.first;
    return tail !== undefined && tail.timeline === tli && first !== undefined && this.id !== undefined && first >= (segNo + 1n) * BigInt(this.id.segSize);
  }

  get tail(): LiveTail | undefined {
    return this.o.tail;
  }

  requireIdentity(): SourceIdentity {
    if (!this.id) throw new WalSourceError('57P03', 'walstream holds no WAL yet');
    return this.id;
  }

  /** A reader of `tli` from `start` (already checked against plan() and the end of WAL by the caller). */
  cursor(tli: number, start: Lsn): WalCursor {
    return new WalCursor(this, tli, start, this.pollMs);
  }
}

function bigMax(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

async function withRetries<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof WalSourceError && err.transient) || attempt >= READ_ATTEMPTS) throw err;
      await new Promise((r) => setTimeout(r, 200 * attempt));
    }
  }
}

interface HeldSegment {
  segNo: bigint;
  data: Buffer;
  /** Bytes that may be served. */
  valid: number;
  complete: boolean;
}

/**
 * One client's position in the WAL. read() returns the next bytes at the position (and the
 * caller advances it with consumed()), 'wait' at the end of what is held, or 'end' at the switch
 * point of a historic timeline.
 */
export class WalCursor {
  private held: HeldSegment | undefined;

  constructor(
    private readonly source: WalSource,
    readonly tli: number,
    private pos: Lsn,
    private readonly pollMs: number,
  ) {}

  get position(): Lsn {
    return this.pos;
  }

  /** The caller sent `n` bytes of what read() returned. */
  consumed(n: number): void {
    this.pos += BigInt(n);
  }

  /** Wait for more WAL (or the poll interval), after read() said 'wait'. */
  async waitForMore(): Promise<void> {
    await this.source.waitForChange(this.pollMs);
  }

  async read(max: number): Promise<ReadResult> {
    const first = await this.readOnce(max);
    if (first.kind !== 'wait') return first;
    // At the end of what is known: look at the stores again (shared, at most once a poll interval).
    await this.source.refresh();
    return this.readOnce(max);
  }

  private async readOnce(max: number): Promise<ReadResult> {
    const id = this.source.requireIdentity();
    const segSize = BigInt(id.segSize);
    const plan = this.source.plan(this.tli);
    if (plan.kind === 'unknown') throw new WalSourceError('XX000', `requested timeline ${this.tli} is not in this server's history`);
    const limit = plan.kind === 'historic' ? plan.switchpoint : undefined;
    if (limit !== undefined && this.pos >= limit) return { kind: 'end', switchpoint: limit, nextTli: plan.kind === 'historic' ? plan.nextTli : this.tli };
    const segNo = this.pos / segSize;
    const off = Number(this.pos % segSize);
    const cap = (avail: number): number => {
      let n = Math.min(avail - off, max);
      if (limit !== undefined) n = Math.min(n, Number(limit - this.pos));
      return n;
    };

    const held = this.held;
    if (held && held.segNo === segNo && off < held.valid) return { kind: 'data', data: held.data.subarray(off, off + cap(held.valid)) };

    // The receiver's durable tail (the current timeline at its head).
    const tail = this.source.tail;
    if (plan.kind === 'current' && tail) {
      const got = tail.read(this.tli, this.pos, max);
      if (got && got.length > 0) return { kind: 'data', data: got };
      if (got) return { kind: 'wait' };
    }

    // A historic timeline's last segment comes from the next timeline's file (walsender.c
    // WalSndSegmentOpen); its own file holds the same bytes up to the switch point.
    const fileTlis = plan.kind === 'historic' && segNo === plan.switchpoint / segSize && plan.nextTli !== this.tli ? [plan.nextTli, this.tli] : [this.tli];
    for (const ft of fileTlis) {
      const data = await this.source.segment(ft, segNo);
      if (data) {
        this.held = { segNo, data, valid: data.length, complete: true };
        return { kind: 'data', data: data.subarray(off, off + cap(data.length)) };
      }
    }
    for (const ft of fileTlis) {
      const p = await this.source.partial(ft, segNo);
      if (p && p.valid > off) {
        this.held = { segNo, data: p.data, valid: p.valid, complete: false };
        return { kind: 'data', data: p.data.subarray(off, off + cap(p.valid)) };
      }
      if (p && plan.kind === 'current') return { kind: 'wait' };
    }
    if (plan.kind === 'current' && !this.source.laterSegmentKnown(this.tli, segNo)) return { kind: 'wait' };
    throw segmentRemoved(walFileName(this.tli, segNo, id.segSize));
  }
}
