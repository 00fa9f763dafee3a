// The replication command language as a walsender reads it (repl_scanner.l, repl_gram.y,
// walsender.c exec_replication_command): which query texts are replication commands at all, and
// the physical-replication commands parsed into values. Pure: a string in, a command or a
// ReplSyntaxError (SQLSTATE 42601, the server's wording) out.
import type { Lsn } from '../wal/lsn.js';

/** A query that is a replication command but not one walstream can parse: 42601 syntax error. */
export class ReplSyntaxError extends Error {
  readonly code = '42601';
  constructor(message: string) {
    super(message);
    this.name = 'ReplSyntaxError';
  }
}

export type ReplCommand =
  | { kind: 'identify_system' }
  | { kind: 'show'; name: string }
  | { kind: 'timeline_history'; tli: number }
  | { kind: 'read_replication_slot'; slot: string }
  | { kind: 'create_replication_slot'; slot: string; temporary: boolean; logical: boolean; reserveWal: boolean }
  | { kind: 'drop_replication_slot'; slot: string; wait: boolean }
  | { kind: 'start_replication'; slot: string | undefined; logical: boolean; start: Lsn; timeline: number | undefined }
  | { kind: 'base_backup' }
  | { kind: 'alter_replication_slot' }
  | { kind: 'upload_manifest' };

/** Keywords of repl_scanner.l (13-18), matched case-sensitively as flex does. */
const KEYWORDS = new Set([
  'BASE_BACKUP',
  'IDENTIFY_SYSTEM',
  'READ_REPLICATION_SLOT',
  'SHOW',
  'TIMELINE',
  'START_REPLICATION',
  'CREATE_REPLICATION_SLOT',
  'DROP_REPLICATION_SLOT',
  'ALTER_REPLICATION_SLOT',
  'TIMELINE_HISTORY',
  'UPLOAD_MANIFEST',
  'WAIT',
  'TEMPORARY',
  'TWO_PHASE',
  'EXPORT_SNAPSHOT',
  'NOEXPORT_SNAPSHOT',
  'USE_SNAPSHOT',
  'PHYSICAL',
  'LOGICAL',
  'SLOT',
  'RESERVE_WAL',
]);

/** First tokens that make a query a replication command (walsender.c replication_scanner_is_replication_command). */
const COMMAND_KEYWORDS = new Set([
  'IDENTIFY_SYSTEM',
  'BASE_BACKUP',
  'START_REPLICATION',
  'CREATE_REPLICATION_SLOT',
  'DROP_REPLICATION_SLOT',
  'ALTER_REPLICATION_SLOT',
  'READ_REPLICATION_SLOT',
  'TIMELINE_HISTORY',
  'UPLOAD_MANIFEST',
  'SHOW',
]);

type Token =
  | { t: 'kw'; v: string }
  | { t: 'ident'; v: string }
  | { t: 'sconst'; v: string }
  | { t: 'uconst'; v: string }
  | { t: 'recptr'; v: Lsn }
  | { t: 'punct'; v: ',' | ';' | '(' | ')' | '.' }
  /** Any other character: returned as itself (15+), so a query starting with one is SQL. */
  | { t: 'char'; v: string }
  | { t: 'eof' };

const IDENT_START = /[A-Za-z_\u0080-\uffff]/;
const IDENT_CONT = /[A-Za-z0-9_$\u0080-\uffff]/;

/** NAMEDATALEN - 1: identifiers are cut to this many bytes, at a character boundary (scansup.c truncate_identifier). */
const MAX_IDENTIFIER_BYTES = 63;

function truncateIdentifier(id: string): string {
  if (Buffer.byteLength(id) <= MAX_IDENTIFIER_BYTES) return id;
  let out = '';
  for (const ch of id) {
    if (Buffer.byteLength(out + ch) > MAX_IDENTIFIER_BYTES) break;
    out += ch;
  }
  return out;
}

/** repl_scanner.l: whitespace, keywords, identifiers (downcased unless quoted), literals, LSNs. */
class Scanner {
  private pos = 0;
  constructor(private readonly s: string) {}

  next(): Token {
    const s = this.s;
    while (this.pos < s.length && /[ \t\n\r\f\v]/.test(s[this.pos]!)) this.pos++;
    if (this.pos >= s.length) return { t: 'eof' };
    const start = this.pos;
    const c = s[start]!;
    if (c === ',' || c === ';' || c === '(' || c === ')' || c === '.') {
      this.pos++;
      return { t: 'punct', v: c };
    }
    // {hexdigit}+\/{hexdigit}+ (longest match beats an identifier or a number)
    const rec = /^([0-9A-Fa-f]+)\/([0-9A-Fa-f]+)/.exec(s.slice(start));
    if (rec) {
      this.pos += rec[0].length;
      // sscanf("%X/%X"): any number of digits, each half a 32-bit value.
      const hi = BigInt(`0x${rec[1]}`);
      const lo = BigInt(`0x${rec[2]}`);
      if (hi > 0xffffffffn || lo > 0xffffffffn) throw new ReplSyntaxError('invalid streaming start location');
      return { t: 'recptr', v: (hi << 32n) | lo };
    }
    if (c >= '0' && c <= '9') {
      const m = /^[0-9]+/.exec(s.slice(start))!;
      this.pos += m[0].length;
      return { t: 'uconst', v: m[0] };
    }
    if (c === "'") return this.quoted("'", 'sconst');
    if (c === '"') return this.quoted('"', 'ident');
    if (IDENT_START.test(c)) {
      let end = start + 1;
      while (end < s.length && IDENT_CONT.test(s[end]!)) end++;
      this.pos = end;
      const word = s.slice(start, end);
      if (KEYWORDS.has(word)) return { t: 'kw', v: word };
      return { t: 'ident', v: truncateIdentifier(word.replace(/[A-Z]+/g, (x) => x.toLowerCase())) };
    }
    this.pos++;
    return { t: 'char', v: c };
  }

  private quoted(q: string, kind: 'sconst' | 'ident'): Token {
    let out = '';
    let i = this.pos + 1;
    for (;;) {
      const j = this.s.indexOf(q, i);
      if (j < 0) throw new ReplSyntaxError('unterminated quoted string');
      out += this.s.slice(i, j);
      if (this.s[j + 1] === q) {
        out += q;
        i = j + 2;
        continue;
      }
      this.pos = j + 1;
      break;
    }
    if (kind === 'ident' && out === '') throw new ReplSyntaxError('zero-length delimited identifier');
    return kind === 'sconst' ? { t: 'sconst', v: out } : { t: 'ident', v: truncateIdentifier(out) };
  }
}

/**
 * Whether a walsender treats `query` as a replication command (else it is SQL, which a physical
 * walsender refuses). A first token that cannot be scanned is a syntax error, as there.
 */
export function isReplicationCommand(query: string): boolean {
  const first = new Scanner(query).next();
  return first.t === 'kw' && COMMAND_KEYWORDS.has(first.v);
}

class Parser {
  private readonly scanner: Scanner;
  private tok: Token;

  constructor(text: string) {
    this.scanner = new Scanner(text);
    this.tok = this.scanner.next();
  }

  private advance(): Token {
    const t = this.tok;
    this.tok = this.scanner.next();
    return t;
  }

  private isKw(v: string): boolean {
    return this.tok.t === 'kw' && this.tok.v === v;
  }

  private acceptKw(v: string): boolean {
    if (!this.isKw(v)) return false;
    this.advance();
    return true;
  }

  private isPunct(v: string): boolean {
    return this.tok.t === 'punct' && this.tok.v === v;
  }

  private fail(): never {
    throw new ReplSyntaxError('syntax error');
  }

  /** An identifier (a slot name): IDENT in the grammar, quoted or not. */
  private ident(): string {
    if (this.tok.t !== 'ident') this.fail();
    return (this.advance() as { v: string }).v;
  }

  /** var_name: IDENT { '.' IDENT } (SHOW's setting, READ_REPLICATION_SLOT's slot). */
  private varName(): string {
    let name = this.ident();
    while (this.isPunct('.')) {
      this.advance();
      name += `.${this.ident()}`;
    }
    return name;
  }

  private uconst(): number {
    if (this.tok.t !== 'uconst') this.fail();
    const v = (this.advance() as { v: string }).v;
    // strtoul into a uint32 TimeLineID: larger values do not name a timeline.
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n > 0xffffffff) throw new ReplSyntaxError(`invalid timeline ${v}`);
    return n;
  }

  private end<T>(cmd: T): T {
    if (this.isPunct(';')) this.advance();
    if (this.tok.t !== 'eof') this.fail();
    return cmd;
  }

  /** A generic option's value: a string, a number or a word (repl_gram.y generic_option_arg). */
  private optionValue(): string | undefined {
    const t = this.tok;
    if (t.t === 'sconst' || t.t === 'uconst' || t.t === 'ident' || t.t === 'kw') {
      this.advance();
      return t.v;
    }
    return undefined;
  }

  /** '(' name [value] {',' name [value]} ')' */
  private genericOptions(once = false): Map<string, string | undefined> {
    const out = new Map<string, string | undefined>();
    this.advance(); // '('
    for (;;) {
      const t = this.tok;
      if (t.t !== 'ident' && t.t !== 'kw') this.fail();
      this.advance();
      const name = t.v.toLowerCase();
      const value = this.isPunct(',') || this.isPunct(')') ? undefined : this.optionValue();
      if (once && out.has(name)) throw new ReplSyntaxError('conflicting or redundant options');
      out.set(name, value);
      if (this.isPunct(',')) {
        this.advance();
        continue;
      }
      if (this.isPunct(')')) {
        this.advance();
        return out;
      }
      this.fail();
    }
  }

  parse(): ReplCommand {
    const t = this.advance();
    if (t.t !== 'kw') this.fail();
    switch (t.v) {
      case 'IDENTIFY_SYSTEM':
        return this.end({ kind: 'identify_system' });
      case 'SHOW':
        return this.end({ kind: 'show', name: this.varName() });
      case 'TIMELINE_HISTORY': {
        const tli = this.uconst();
        if (tli <= 0) throw new ReplSyntaxError(`invalid timeline ${tli}`);
        return this.end({ kind: 'timeline_history', tli });
      }
      case 'READ_REPLICATION_SLOT':
        return this.end({ kind: 'read_replication_slot', slot: this.varName() });
      case 'DROP_REPLICATION_SLOT': {
        const slot = this.ident();
        const wait = this.acceptKw('WAIT');
        return this.end({ kind: 'drop_replication_slot', slot, wait });
      }
      case 'CREATE_REPLICATION_SLOT':
        return this.createSlot();
      case 'START_REPLICATION':
        return this.startReplication();
      case 'BASE_BACKUP':
        return { kind: 'base_backup' };
      case 'ALTER_REPLICATION_SLOT':
        return { kind: 'alter_replication_slot' };
      case 'UPLOAD_MANIFEST':
        return { kind: 'upload_manifest' };
      default:
        return this.fail();
    }
  }

  private createSlot(): ReplCommand {
    const slot = this.ident();
    const temporary = this.acceptKw('TEMPORARY');
    let logical = false;
    if (this.acceptKw('LOGICAL')) {
      logical = true;
      this.ident(); // the output plugin
    } else if (!this.acceptKw('PHYSICAL')) {
      this.fail();
    }
    let reserveWal = false;
    if (this.isPunct('(')) {
      // walsender.c parseCreateReplSlotOptions: each option once, and each only for its kind of slot.
      for (const [name, value] of this.genericOptions(true)) {
        if (name === 'reserve_wal' && !logical) reserveWal = parseBool(value, name);
        else if (name === 'snapshot' || name === 'two_phase' || name === 'failover' || name === 'reserve_wal') {
          if (!logical || name === 'reserve_wal') throw new ReplSyntaxError('conflicting or redundant options');
        } else throw new ReplSyntaxError(`unrecognized option: ${name}`);
      }
    } else {
      // Legacy options (13-18): RESERVE_WAL for a physical slot; the snapshot and two-phase words for a logical one.
      for (;;) {
        if (this.acceptKw('RESERVE_WAL')) reserveWal = true;
        else if (this.acceptKw('EXPORT_SNAPSHOT') || this.acceptKw('NOEXPORT_SNAPSHOT') || this.acceptKw('USE_SNAPSHOT') || this.acceptKw('TWO_PHASE')) continue;
        else break;
      }
    }
    return this.end({ kind: 'create_replication_slot', slot, temporary, logical, reserveWal });
  }

  private startReplication(): ReplCommand {
    let slot: string | undefined;
    if (this.acceptKw('SLOT')) slot = this.ident();
    if (this.acceptKw('LOGICAL')) {
      if (this.tok.t !== 'recptr') this.fail();
      const start = (this.advance() as { v: Lsn }).v;
      if (this.isPunct('(')) this.genericOptions();
      if (slot === undefined) this.fail();
      return this.end({ kind: 'start_replication', slot, logical: true, start, timeline: undefined });
    }
    this.acceptKw('PHYSICAL');
    if (this.tok.t !== 'recptr') this.fail();
    const start = (this.advance() as { v: Lsn }).v;
    let timeline: number | undefined;
    if (this.acceptKw('TIMELINE')) {
      timeline = this.uconst();
      if (timeline <= 0) throw new ReplSyntaxError(`invalid timeline ${timeline}`);
    }
    return this.end({ kind: 'start_replication', slot, logical: false, start, timeline });
  }
}

/** parse_bool as a generic option value is read (defGetBoolean): none means true. */
function parseBool(value: string | undefined, name: string): boolean {
  if (value === undefined) return true;
  const v = value.toLowerCase();
  if (['true', 'on', '1', 'yes'].includes(v)) return true;
  if (['false', 'off', '0', 'no'].includes(v)) return false;
  throw new ReplSyntaxError(`${name} requires a Boolean value`);
}

/** Parse a replication command (isReplicationCommand(text) must hold). */
export function parseReplicationCommand(text: string): ReplCommand {
  return new Parser(text).parse();
}
