// The replication command language as walstream serve reads it (src/protocol/repl-grammar.ts),
// against the exact texts the real clients send (walreceiver and pg_receivewal 13-18, see
// replication-protocol.md §9.4 and the PostgreSQL 15 wire logs), and against repl_scanner.l /
// repl_gram.y for what is SQL, what is a syntax error (SQLSTATE 42601, the server's wording), and
// how identifiers, strings and LSNs are scanned.
import { describe, expect, it } from 'vitest';
import { isReplicationCommand, parseReplicationCommand, ReplSyntaxError, type ReplCommand } from '../../src/protocol/repl-grammar.js';

/** Parse, insisting the text is a replication command first (as the connection does). */
function parse(text: string): ReplCommand {
  expect(isReplicationCommand(text), `isReplicationCommand(${JSON.stringify(text)})`).toBe(true);
  return parseReplicationCommand(text);
}

/** The ReplSyntaxError a text gives (fails the test when it parses or throws anything else). */
function syntaxError(text: string): ReplSyntaxError {
  let err: unknown;
  try {
    isReplicationCommand(text);
    parseReplicationCommand(text);
  } catch (e) {
    err = e;
  }
  expect(err, `${JSON.stringify(text)} should be a syntax error`).toBeInstanceOf(ReplSyntaxError);
  const e = err as ReplSyntaxError;
  expect(e.code).toBe('42601');
  return e;
}

const slot = (name: string | undefined, start: bigint, timeline: number | undefined): ReplCommand => ({ kind: 'start_replication', slot: name, logical: false, start, timeline });

describe('the texts real clients send', () => {
  it.each<[string, string, ReplCommand]>([
    // walreceiver 13-18 (walreceiver.c, libpqwalreceiver.c) [V15 wire logs]
    ['walreceiver', 'IDENTIFY_SYSTEM', { kind: 'identify_system' }],
    ['walreceiver', 'TIMELINE_HISTORY 2', { kind: 'timeline_history', tli: 2 }],
    ['walreceiver', 'TIMELINE_HISTORY 17', { kind: 'timeline_history', tli: 17 }],
    [
      'walreceiver >= 15 to server >= 15',
      'CREATE_REPLICATION_SLOT "pg_walreceiver_4743" TEMPORARY PHYSICAL (RESERVE_WAL)',
      { kind: 'create_replication_slot', slot: 'pg_walreceiver_4743', temporary: true, logical: false, reserveWal: true },
    ],
    [
      'walreceiver 13/14 or server < 15',
      'CREATE_REPLICATION_SLOT "pg_walreceiver_4743" TEMPORARY PHYSICAL RESERVE_WAL',
      { kind: 'create_replication_slot', slot: 'pg_walreceiver_4743', temporary: true, logical: false, reserveWal: true },
    ],
    ['walreceiver with a slot', 'START_REPLICATION SLOT "pg_walreceiver_4743" 0/900000 TIMELINE 1', slot('pg_walreceiver_4743', 0x900000n, 1)],
    ['walreceiver without a slot', 'START_REPLICATION 0/B00000 TIMELINE 1', slot(undefined, 0xb00000n, 1)],
    ['walreceiver after a switch', 'START_REPLICATION 0/B00000 TIMELINE 2', slot(undefined, 0xb00000n, 2)],
    ['walreceiver, 16 MB segments, high LSN', 'START_REPLICATION SLOT "standby_1" 1A/2C000000 TIMELINE 3', slot('standby_1', 0x1a2c000000n, 3)],
    // pg_receivewal 13-18 (pg_receivewal.c, streamutil.c, receivelog.c) [V15 wire logs]
    ['pg_receivewal', 'SHOW data_directory_mode', { kind: 'show', name: 'data_directory_mode' }],
    ['pg_receivewal', 'SHOW wal_segment_size', { kind: 'show', name: 'wal_segment_size' }],
    ['libpq target_session_attrs', 'SHOW transaction_read_only', { kind: 'show', name: 'transaction_read_only' }],
    ['version check', 'SHOW server_version_num', { kind: 'show', name: 'server_version_num' }],
    ['pg_receivewal --create-slot', 'CREATE_REPLICATION_SLOT "rwslot" PHYSICAL', { kind: 'create_replication_slot', slot: 'rwslot', temporary: false, logical: false, reserveWal: false }],
    ['pg_receivewal --drop-slot', 'DROP_REPLICATION_SLOT "rwslot"', { kind: 'drop_replication_slot', slot: 'rwslot', wait: false }],
    ['DROP WAIT', 'DROP_REPLICATION_SLOT "rwslot" WAIT', { kind: 'drop_replication_slot', slot: 'rwslot', wait: true }],
    ['pg_receivewal 15+ (unquoted)', 'READ_REPLICATION_SLOT rwslot', { kind: 'read_replication_slot', slot: 'rwslot' }],
    ['pg_receivewal with --slot', 'START_REPLICATION SLOT "rwslot" 0/600000 TIMELINE 1', slot('rwslot', 0x600000n, 1)],
    ['pg_receivewal without a slot', 'START_REPLICATION 0/B00000 TIMELINE 2', slot(undefined, 0xb00000n, 2)],
    // the other documented forms
    ['PHYSICAL keyword, no timeline', 'START_REPLICATION PHYSICAL 1/2C000000', slot(undefined, 0x12c000000n, undefined)],
    ['SLOT and PHYSICAL', 'START_REPLICATION SLOT s PHYSICAL 0/0 TIMELINE 4294967295', slot('s', 0n, 4294967295)],
    ['RESERVE_WAL true', 'CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL true)', { kind: 'create_replication_slot', slot: 's', temporary: false, logical: false, reserveWal: true }],
    ["RESERVE_WAL 'off'", "CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL 'off')", { kind: 'create_replication_slot', slot: 's', temporary: false, logical: false, reserveWal: false }],
    ['reserve_wal 0', 'CREATE_REPLICATION_SLOT s PHYSICAL (reserve_wal 0)', { kind: 'create_replication_slot', slot: 's', temporary: false, logical: false, reserveWal: false }],
    ['reserve_wal 1', 'CREATE_REPLICATION_SLOT s TEMPORARY PHYSICAL (reserve_wal 1)', { kind: 'create_replication_slot', slot: 's', temporary: true, logical: false, reserveWal: true }],
  ])('%s: %s', (_who, text, want) => {
    expect(parse(text)).toEqual(want);
    // a trailing semicolon is optional (repl_gram.y opt_semicolon), with or without space before it
    expect(parse(`${text};`)).toEqual(want);
    expect(parse(`${text} ;`)).toEqual(want);
    // any of repl_scanner.l's whitespace around the tokens
    expect(parse(`\t ${text.replace(/ /g, ' \n\r\f\v\t')}\n`)).toEqual(want);
  });

  it('logical and base-backup commands parse (the server refuses them with a clear error)', () => {
    expect(parse('CREATE_REPLICATION_SLOT "sub" LOGICAL pgoutput (SNAPSHOT \'nothing\')')).toMatchObject({ kind: 'create_replication_slot', logical: true });
    expect(parse('CREATE_REPLICATION_SLOT sub TEMPORARY LOGICAL test_decoding NOEXPORT_SNAPSHOT')).toMatchObject({ kind: 'create_replication_slot', logical: true, temporary: true });
    expect(parse("START_REPLICATION SLOT \"sub\" LOGICAL 0/0 (proto_version '1', publication_names 'p')")).toMatchObject({ kind: 'start_replication', logical: true, slot: 'sub' });
    expect(parse("BASE_BACKUP (LABEL 'x', PROGRESS)")).toEqual({ kind: 'base_backup' });
    expect(parse('BASE_BACKUP')).toEqual({ kind: 'base_backup' });
    expect(parse('ALTER_REPLICATION_SLOT s (FAILOVER)')).toEqual({ kind: 'alter_replication_slot' });
    expect(parse('UPLOAD_MANIFEST')).toEqual({ kind: 'upload_manifest' });
  });
});

describe('what is a replication command and what is SQL', () => {
  it.each([
    'IDENTIFY_SYSTEM',
    'SHOW x',
    'TIMELINE_HISTORY 2',
    'CREATE_REPLICATION_SLOT x PHYSICAL',
    'DROP_REPLICATION_SLOT x',
    'READ_REPLICATION_SLOT x',
    'START_REPLICATION 0/0',
    'BASE_BACKUP',
    'ALTER_REPLICATION_SLOT x (FAILOVER)',
    'UPLOAD_MANIFEST',
    '  IDENTIFY_SYSTEM  ',
    // only the first token decides: the rest may be anything
    'SHOW',
    'START_REPLICATION nonsense',
  ])('%j is a replication command', (text) => {
    expect(isReplicationCommand(text)).toBe(true);
  });

  it.each([
    // keywords are case-sensitive, so lower case is SQL [V15]
    'identify_system',
    'show wal_segment_size',
    'Show data_directory_mode',
    'start_replication 0/0',
    'timeline_history 2',
    // what the walreceiver sends on logical connections (never on physical ones)
    "SELECT pg_catalog.set_config('search_path', '', false);",
    'SELECT pg_catalog.pg_is_in_recovery()',
    // empty and blank queries
    '',
    '   \n\t',
    // keywords that do not start a command
    'TIMELINE 1',
    'SLOT x',
    'PHYSICAL',
    'RESERVE_WAL',
    // a quoted identifier is never a keyword
    '"IDENTIFY_SYSTEM"',
    // other first tokens the scanner knows
    '0/0',
    '123',
    "'IDENTIFY_SYSTEM'",
    '(IDENTIFY_SYSTEM)',
    ';',
  ])('%j is SQL', (text) => {
    expect(isReplicationCommand(text)).toBe(false);
  });

  // repl_scanner.l (15+): "." { return yytext[0]; } - any other character is a token of its
  // own, so a query starting with one is SQL (0A000 on a physical walsender), not a scan error.
  it.each(['-- a comment\nIDENTIFY_SYSTEM', '/* c */ IDENTIFY_SYSTEM', '*', '$1', '= 1', '\\x', '@x', '!'])('%j starts with a character the scanner returns as itself: SQL, not an error', (text) => {
    let result: unknown;
    try {
      result = isReplicationCommand(text);
    } catch (err) {
      result = err;
    }
    expect(result).toBe(false);
  });

  it('an unterminated quoted string as the first token is a syntax error there too', () => {
    expect(syntaxError("'abc").message).toBe('unterminated quoted string');
  });
});

describe('syntax errors: SQLSTATE 42601 with the server wording', () => {
  it.each([
    'IDENTIFY_SYSTEM x',
    'IDENTIFY_SYSTEM;;',
    'IDENTIFY_SYSTEM; IDENTIFY_SYSTEM',
    'SHOW',
    'SHOW 1',
    'SHOW x.',
    'SHOW x y',
    'TIMELINE_HISTORY',
    'TIMELINE_HISTORY x',
    'TIMELINE_HISTORY 2 3',
    'TIMELINE_HISTORY -1',
    'START_REPLICATION',
    'START_REPLICATION SLOT 0/0',
    'START_REPLICATION 0/0 TIMELINE',
    'START_REPLICATION 0/0 TIMELINE 1 extra',
    'START_REPLICATION 0/0 TIMELINE x',
    'START_REPLICATION LOGICAL 0/0',
    'START_REPLICATION PHYSICAL PHYSICAL 0/0',
    // keywords inside a command are case-sensitive too: "slot" is an identifier here
    'START_REPLICATION slot "x" 0/0',
    'START_REPLICATION 0/0 timeline 1',
    'START_REPLICATION 0/',
    'START_REPLICATION /0',
    'CREATE_REPLICATION_SLOT',
    'CREATE_REPLICATION_SLOT x',
    'CREATE_REPLICATION_SLOT x TEMPORARY',
    'CREATE_REPLICATION_SLOT x physical',
    'CREATE_REPLICATION_SLOT x PHYSICAL (',
    'CREATE_REPLICATION_SLOT x PHYSICAL ()',
    'CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL',
    'CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL,)',
    'CREATE_REPLICATION_SLOT x PHYSICAL RESERVE_WAL (RESERVE_WAL)',
    'CREATE_REPLICATION_SLOT 0/0 PHYSICAL',
    'DROP_REPLICATION_SLOT',
    'DROP_REPLICATION_SLOT x WAIT WAIT',
    'READ_REPLICATION_SLOT',
    'READ_REPLICATION_SLOT 1',
  ])('%j', (text) => {
    expect(syntaxError(text).message).toMatch(/syntax error/);
  });

  it('invalid timeline 0 (repl_gram.y: "invalid timeline %u")', () => {
    expect(syntaxError('TIMELINE_HISTORY 0').message).toBe('invalid timeline 0');
    expect(syntaxError('START_REPLICATION 0/0 TIMELINE 0').message).toBe('invalid timeline 0');
    expect(syntaxError('START_REPLICATION SLOT "x" 0/900000 TIMELINE 00').message).toBe('invalid timeline 0');
    // values that are no TimeLineID
    syntaxError('TIMELINE_HISTORY 4294967296');
    syntaxError('START_REPLICATION 0/0 TIMELINE 99999999999999999999999');
  });

  it('unterminated strings and identifiers (repl_scanner.l: <xq,xd><<EOF>> "unterminated quoted string")', () => {
    expect(syntaxError("CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL 'tru").message).toBe('unterminated quoted string');
    expect(syntaxError("CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL 'it''s").message).toBe('unterminated quoted string');
    expect(syntaxError('START_REPLICATION SLOT "pg_walreceiver_4743 0/900000').message).toBe('unterminated quoted string');
    expect(syntaxError('READ_REPLICATION_SLOT "').message).toBe('unterminated quoted string');
  });

  it('a zero-length delimited identifier', () => {
    expect(syntaxError('START_REPLICATION SLOT "" 0/900000 TIMELINE 1').message).toBe('zero-length delimited identifier');
    expect(syntaxError('DROP_REPLICATION_SLOT ""').message).toBe('zero-length delimited identifier');
    expect(syntaxError('CREATE_REPLICATION_SLOT "" PHYSICAL').message).toBe('zero-length delimited identifier');
  });

  it('bad option values and unknown options', () => {
    expect(syntaxError('CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL maybe)').message).toBe('reserve_wal requires a Boolean value');
    expect(syntaxError("CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL '')").message).toBe('reserve_wal requires a Boolean value');
    expect(syntaxError('CREATE_REPLICATION_SLOT x PHYSICAL (FOO)').message).toBe('unrecognized option: foo');
  });

  it('an option given twice, or a logical slot\'s option on a physical one (walsender.c parseCreateReplSlotOptions: "conflicting or redundant options")', () => {
    expect(syntaxError('CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL, RESERVE_WAL false)').message).toBe('conflicting or redundant options');
    expect(syntaxError("CREATE_REPLICATION_SLOT x PHYSICAL (SNAPSHOT 'nothing')").message).toBe('conflicting or redundant options');
  });
});

describe('scanning: identifiers, strings, LSNs', () => {
  it('unquoted identifiers are downcased, quoted ones kept as they are', () => {
    expect(parse('READ_REPLICATION_SLOT RwSlot')).toEqual({ kind: 'read_replication_slot', slot: 'rwslot' });
    expect(parse('READ_REPLICATION_SLOT "RwSlot"')).toEqual({ kind: 'read_replication_slot', slot: 'RwSlot' });
    expect(parse('SHOW DateStyle')).toEqual({ kind: 'show', name: 'datestyle' });
    expect(parse('SHOW "DateStyle"')).toEqual({ kind: 'show', name: 'DateStyle' });
    expect(parse('SHOW walstream.clients')).toEqual({ kind: 'show', name: 'walstream.clients' });
    expect(parse('SHOW a.b.c')).toEqual({ kind: 'show', name: 'a.b.c' });
    expect(parse('READ_REPLICATION_SLOT a$1_')).toEqual({ kind: 'read_replication_slot', slot: 'a$1_' });
    expect(parse('READ_REPLICATION_SLOT _x')).toEqual({ kind: 'read_replication_slot', slot: '_x' });
    // only ASCII letters are downcased (downcase_identifier)
    expect(parse('SHOW Wälder')).toEqual({ kind: 'show', name: 'wälder' });
    expect(parse('SHOW ÄX')).toEqual({ kind: 'show', name: 'Äx' });
    // spaces and punctuation inside quotes
    expect(parse('DROP_REPLICATION_SLOT "a b;c"')).toEqual({ kind: 'drop_replication_slot', slot: 'a b;c', wait: false });
    // words that look like hex are identifiers unless a slash follows
    expect(parse('READ_REPLICATION_SLOT deadbeef')).toEqual({ kind: 'read_replication_slot', slot: 'deadbeef' });
    syntaxError('READ_REPLICATION_SLOT dead/beef');
  });

  it('keywords are exact words: a longer identifier containing one is an identifier', () => {
    expect(parse('READ_REPLICATION_SLOT SLOTS')).toEqual({ kind: 'read_replication_slot', slot: 'slots' });
    expect(parse('SHOW TIMELINEX')).toEqual({ kind: 'show', name: 'timelinex' });
    expect(isReplicationCommand('IDENTIFY_SYSTEMS')).toBe(false);
    expect(isReplicationCommand('SHOWx')).toBe(false);
  });

  it.each<[string, bigint]>([
    ['0/0', 0n],
    ['0/900000', 0x900000n],
    ['0/B00000', 0xb00000n],
    ['0/b00000', 0xb00000n],
    ['0/9abcdef', 0x9abcdefn],
    // 19dev prints the low half zero-padded (%X/%08X)
    ['0/00900000', 0x900000n],
    ['00000000/00000000', 0n],
    ['1/0', 0x100000000n],
    ['AbCd/eF01', 0xabcd0000ef01n],
    ['FFFFFFFF/FFFFFFFF', 0xffffffffffffffffn],
    ['ffffffff/ffffffff', 0xffffffffffffffffn],
    ['7FFFFFFF/FFFFFFFF', 0x7fffffffffffffffn],
  ])('LSN %s', (text, want) => {
    expect(parse(`START_REPLICATION ${text}`)).toEqual(slot(undefined, want, undefined));
    expect(parse(`START_REPLICATION SLOT "s" ${text} TIMELINE 1;`)).toEqual(slot('s', want, 1));
  });

  it('an LSN half wider than 32 bits is refused, not wrapped', () => {
    expect(syntaxError('START_REPLICATION 100000000/0').message).toBe('invalid streaming start location');
    expect(syntaxError('START_REPLICATION 0/100000000').message).toBe('invalid streaming start location');
  });

  it('an LSN half zero-padded beyond 8 digits is the same value (sscanf "%X/%X" in repl_scanner.l)', () => {
    expect(parse('START_REPLICATION 000000000/000900000')).toEqual(slot(undefined, 0x900000n, undefined));
  });

  it('a number directly followed by letters is two tokens', () => {
    syntaxError('TIMELINE_HISTORY 2abc');
    expect(parse('TIMELINE_HISTORY 0002')).toEqual({ kind: 'timeline_history', tli: 2 });
  });
});
