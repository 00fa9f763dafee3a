// Seeded property tests of everything walstream serve reads from a (possibly hostile) client:
// FrontendFramer and the first packets, the typed message bodies (Query, PasswordMessage,
// SASLInitialResponse), the replication command grammar, and the SCRAM server; then whole
// connections to an in-process WalServer fed random and mutated byte streams. Inputs start from
// valid conversations (what pg-protocol's serializer writes) and are mutated: bytes flipped,
// inserted, deleted, duplicated, lengths rewritten, streams cut at random points. The properties:
// only the modules' own typed errors come out (ProtocolViolation, ReplSyntaxError, AuthError),
// framing does not depend on how the bytes are cut, buffering stays bounded, nothing hangs, and
// the server keeps serving a well-behaved client.
//
// WALSTREAM_FUZZ_SEED=<n> replays a run; WALSTREAM_FUZZ_CASES=<n> sets the number of cases per
// pure property (default 12000; whole connections get CASES / 40). The seed is printed.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import { serialize } from 'pg-protocol';
import {
  FrontendFramer,
  MAX_AUTH_MESSAGE_LENGTH,
  MAX_STARTUP_PACKET_LENGTH,
  ProtocolViolation,
  parseFirstPacket,
  parsePasswordMessage,
  parseQuery,
  parseSASLInitialResponse,
} from '../../src/protocol/frontend.js';
import { isReplicationCommand, parseReplicationCommand, ReplSyntaxError, type ReplCommand } from '../../src/protocol/repl-grammar.js';
import { encodeHotStandbyFeedback, encodeStandbyStatus } from '../../src/protocol/messages.js';
import { AuthError, buildScramVerifier, certificateEndPointHash, md5Secret, PasswordBook, ScramServer, SCRAM_MECHANISM, SCRAM_PLUS_MECHANISM, type Secret } from '../../src/server/auth.js';
import { WalServer } from '../../src/server/server.js';
import { SlotRegistry } from '../../src/server/slots.js';
import { openSource } from '../../src/commands/serve.js';
import { LocalStore } from '../../src/storage/local.js';
import type { WalSource } from '../../src/source/wal-source.js';
import type { Logger } from '../../src/util/log.js';
import { FIXTURE_NAME, fixtureSegment, fixtureSystemId } from './fixture.js';

// ---------------------------------------------------------------------------------------------
// Seeds and a small PRNG (xorshift128+ folded to 32 bits): deterministic for a given seed.
// ---------------------------------------------------------------------------------------------

class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number) {
    // splitmix32 to spread the seed over the state
    let s = seed >>> 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next() | 1;
  }
  /** xoshiro128** */
  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.b << 9) >>> 0;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    this.a >>>= 0;
    this.b >>>= 0;
    this.c >>>= 0;
    this.d >>>= 0;
    return result;
  }
  int(n: number): number {
    return n <= 1 ? 0 : this.u32() % n;
  }
  bool(p = 0.5): boolean {
    return this.u32() / 0x1_0000_0000 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got "${v}"`);
  return n;
}

const SEED = envInt('WALSTREAM_FUZZ_SEED') ?? (Date.now() ^ (process.pid << 12)) >>> 0;
const CASES = envInt('WALSTREAM_FUZZ_CASES') ?? 12_000;
const CONNECTIONS = Math.max(50, Math.floor(CASES / 40));
console.log(`fuzz-serve: WALSTREAM_FUZZ_SEED=${SEED} WALSTREAM_FUZZ_CASES=${CASES}`);

function rngFor(property: number): Rng {
  return new Rng((SEED ^ Math.imul(property + 1, 0x27d4eb2d)) >>> 0);
}

function fail(what: string, index: number, input: unknown, err?: unknown): never {
  const shown = Buffer.isBuffer(input) ? input.toString('hex') : JSON.stringify(input);
  const e = err === undefined ? '' : ` threw ${err instanceof Error ? `${err.name}: ${err.message}\n${err.stack}` : String(err)}`;
  throw new Error(`${what}: case ${index} (WALSTREAM_FUZZ_SEED=${SEED})${e}\ninput: ${shown.slice(0, 4000)}`);
}

function check(cond: boolean, what: string, index: number, input: unknown): void {
  if (!cond) fail(`property violated: ${what}`, index, input);
}

// ---------------------------------------------------------------------------------------------
// Mutations.
// ---------------------------------------------------------------------------------------------

/** 1-4 byte-level edits of a copy of `b`: flip, insert, delete, duplicate, rewrite a length word. */
function mutateBytes(r: Rng, b: Buffer): Buffer {
  let out = Buffer.from(b);
  for (let n = 1 + r.int(4); n > 0; n--) {
    const at = r.int(out.length + 1);
    switch (r.int(7)) {
      case 0: // flip bits
        if (out.length > 0) out[r.int(out.length)] ^= 1 << r.int(8);
        break;
      case 1: // overwrite a byte
        if (out.length > 0) out[r.int(out.length)] = r.pick([0, 0xff, 0x7f, 0x80, 0x51, 0x64, 0x70, 0x63, 0x58, r.u32() & 0xff]);
        break;
      case 2: // insert bytes
        out = Buffer.concat([out.subarray(0, at), r.bytes(1 + r.int(8)), out.subarray(at)]);
        break;
      case 3: {
        // delete a range
        const len = 1 + r.int(Math.min(16, Math.max(1, out.length - at)));
        out = Buffer.concat([out.subarray(0, at), out.subarray(at + len)]);
        break;
      }
      case 4: {
        // duplicate a range
        const len = 1 + r.int(32);
        out = Buffer.concat([out.subarray(0, at + len), out.subarray(at, at + len), out.subarray(at + len)]);
        break;
      }
      case 5: {
        // rewrite 4 bytes as a length word: small, near a limit, huge, negative
        if (out.length >= 4) {
          const pos = r.int(out.length - 3);
          const v = r.pick([0, 3, 4, 5, 7, 8, MAX_STARTUP_PACKET_LENGTH + 4, MAX_STARTUP_PACKET_LENGTH + 5, MAX_AUTH_MESSAGE_LENGTH, MAX_AUTH_MESSAGE_LENGTH + 1, 0x7fffffff, 0xffffffff, r.u32() % 300]);
          out.writeUInt32BE(v >>> 0, pos);
        }
        break;
      }
      default: // truncate
        out = out.subarray(0, r.int(out.length + 1));
    }
  }
  return out;
}

/** A valid sample, mutated, truncated, or replaced by random bytes. */
function hostile(r: Rng, valid: Buffer): Buffer {
  switch (r.int(6)) {
    case 0:
      return r.bytes(r.int(64));
    case 1:
      return valid.subarray(0, r.int(valid.length + 1));
    case 2:
      return Buffer.concat([valid, r.bytes(1 + r.int(16))]);
    case 3:
      return valid;
    default:
      return mutateBytes(r, valid);
  }
}

// ---------------------------------------------------------------------------------------------
// What clients send.
// ---------------------------------------------------------------------------------------------

const REAL_COMMANDS = [
  'IDENTIFY_SYSTEM',
  'SHOW data_directory_mode',
  'SHOW wal_segment_size',
  'SHOW server_version_num',
  'TIMELINE_HISTORY 2',
  'CREATE_REPLICATION_SLOT "pg_walreceiver_4743" TEMPORARY PHYSICAL (RESERVE_WAL)',
  'CREATE_REPLICATION_SLOT "pg_walreceiver_4743" TEMPORARY PHYSICAL RESERVE_WAL',
  'CREATE_REPLICATION_SLOT "rwslot" PHYSICAL',
  "CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL 'off')",
  'DROP_REPLICATION_SLOT "rwslot" WAIT',
  'READ_REPLICATION_SLOT rwslot',
  'START_REPLICATION SLOT "pg_walreceiver_4743" 0/900000 TIMELINE 1',
  'START_REPLICATION 0/B00000 TIMELINE 2',
  'START_REPLICATION PHYSICAL 1A/2C000000',
  "START_REPLICATION SLOT \"sub\" LOGICAL 0/0 (proto_version '1', publication_names 'p')",
  'CREATE_REPLICATION_SLOT "sub" LOGICAL pgoutput (SNAPSHOT \'nothing\')',
  "BASE_BACKUP (LABEL 'x', PROGRESS)",
  'SELECT 1',
  'identify_system',
];

function randomStartup(r: Rng): Buffer {
  const params: Record<string, string> = { user: r.pick(['replicator', 'legacy', 'nobody', '']), database: 'replication' };
  if (r.bool(0.9)) params.replication = r.pick(['true', 'on', 'yes', '1', 'database', 'false', 'bogus']);
  if (r.bool(0.3)) params.application_name = r.pick(['walreceiver', 'pg_receivewal', 'wälder', '']);
  if (r.bool(0.2)) params.options = r.pick(['-c wal_sender_timeout=0', '-c wal_sender_timeout=1s', '--wal_sender_timeout=5s', '-c', '-x', '-c a']);
  return serialize.startup(params);
}

function statusUpdate(r: Rng): Buffer {
  return encodeStandbyStatus({ write: BigInt(r.u32()), flush: BigInt(r.u32()), apply: 0n, clientTime: BigInt(r.u32()), replyRequested: r.bool(0.3) });
}

/** A typed message a client might send. */
function typedMessage(r: Rng): Buffer {
  switch (r.int(14)) {
    case 0:
    case 1:
    case 2:
      return serialize.query(r.pick(REAL_COMMANDS));
    case 3:
      return serialize.sendSASLInitialResponseMessage(r.pick([SCRAM_MECHANISM, SCRAM_PLUS_MECHANISM, 'X']), r.pick(['n,,n=,r=abc', 'y,,n=*,r=xyz', 'p=tls-server-end-point,,n=,r=q']));
    case 4:
      return serialize.sendSCRAMClientFinalMessage(`c=biws,r=abc${r.int(1000)},p=${randomBytes(32).toString('base64')}`);
    case 5:
      return serialize.password(`md5${'a'.repeat(32)}`);
    case 6:
      return serialize.copyData(statusUpdate(r));
    case 7:
      return serialize.copyData(encodeHotStandbyFeedback({ clientTime: 1n, xmin: r.u32(), xminEpoch: 0, catalogXmin: 0, catalogXminEpoch: 0 }));
    case 8:
      return serialize.copyDone();
    case 9:
      return serialize.parse({ text: 'IDENTIFY_SYSTEM' });
    case 10:
      return serialize.sync();
    case 11:
      return serialize.flush();
    case 12:
      return serialize.end();
    default:
      return serialize.copyData(r.bytes(r.int(40)));
  }
}

function firstPackets(r: Rng): Buffer[] {
  const out: Buffer[] = [];
  if (r.bool(0.2)) out.push(Buffer.from('0000000804d21630', 'hex'));
  if (r.bool(0.4)) out.push(serialize.requestSsl());
  if (r.bool(0.05)) out.push(serialize.cancel(r.u32() | 0, r.u32() | 0));
  out.push(randomStartup(r));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Pure properties.
// ---------------------------------------------------------------------------------------------

type Outcome = { events: string[]; error: string | undefined; pending: number };

/**
 * The connection's framing loop over a stream cut into pieces: first packets until a
 * StartupMessage, then typed messages; stops at the first error, which must be a ProtocolViolation.
 */
function runFramer(stream: Buffer, cuts: number[], maxLength: number, onBound: (pending: number) => void): Outcome {
  const f = new FrontendFramer(maxLength);
  const events: string[] = [];
  let typed = false;
  let prev = 0;
  try {
    for (const cut of [...cuts, stream.length]) {
      if (cut <= prev) continue;
      f.push(Buffer.from(stream.subarray(prev, cut)));
      prev = cut;
      for (;;) {
        if (!typed) {
          const body = f.nextFirstPacket();
          if (!body) break;
          const p = parseFirstPacket(body);
          events.push(p.kind === 'startup' ? `startup ${p.major}.${p.minor} ${JSON.stringify([...p.params])}` : p.kind === 'cancel' ? `cancel ${p.pid} ${p.key}` : p.kind);
          if (p.kind === 'startup') {
            f.startTyped();
            typed = true;
          }
          continue;
        }
        const m = f.next();
        if (!m) break;
        if (m.body.length > maxLength - 4) throw new Error(`a ${m.body.length}-byte body passed a limit of ${maxLength}`);
        // the connection parses these bodies; only ProtocolViolation may come out
        let parsed = '';
        try {
          if (m.type === 0x51) parsed = JSON.stringify(parseQuery(m.body));
          else if (m.type === 0x70) parsed = JSON.stringify(parseSASLInitialResponse(m.body).mechanism) + '|' + JSON.stringify(parsePasswordMessage(m.body));
        } catch (err) {
          if (!(err instanceof ProtocolViolation)) throw err;
          parsed = `violation ${err.message}`;
        }
        events.push(`${m.type} ${m.body.toString('hex')} ${parsed}`);
      }
      // after draining, only an incomplete message may wait, never more than one message's limit
      onBound(f.pendingBytes);
    }
  } catch (err) {
    if (!(err instanceof ProtocolViolation)) throw err;
    return { events, error: err.message, pending: f.pendingBytes };
  }
  return { events, error: undefined, pending: f.pendingBytes };
}

describe('serve fuzz: framing', () => {
  it('FrontendFramer: only ProtocolViolation, the same messages however the stream is cut, bounded buffering', () => {
    const r = rngFor(1);
    let errors = 0;
    let messages = 0;
    for (let i = 0; i < CASES; i++) {
      const valid = Buffer.concat([...firstPackets(r), ...Array.from({ length: r.int(8) }, () => typedMessage(r))]);
      const input = r.bool(0.85) ? hostile(r, valid) : valid;
      const maxLength = r.pick([MAX_AUTH_MESSAGE_LENGTH, 1024 * 1024, 64, 5 + r.int(100)]);
      const bound = Math.max(maxLength + 1, MAX_STARTUP_PACKET_LENGTH + 4);
      const cuts = Array.from({ length: r.int(6) }, () => r.int(input.length + 1)).sort((a, b) => a - b);
      let whole: Outcome;
      let pieces: Outcome;
      try {
        whole = runFramer(input, [], maxLength, (p) => check(p <= Math.max(bound, input.length), 'buffering', i, input));
        pieces = runFramer(input, cuts, maxLength, (p) => check(p <= Math.max(bound, input.length), 'buffering', i, input));
        // one byte at a time: nothing is ever held beyond the bound
        const bytewise = runFramer(
          input,
          Array.from({ length: Math.min(input.length, 400) }, (_, k) => k + 1),
          maxLength,
          (p) => check(p <= bound, `${p} bytes buffered one byte at a time`, i, input),
        );
        check(JSON.stringify(bytewise.events) === JSON.stringify(whole.events) && bytewise.error === whole.error, 'byte-at-a-time framing differs', i, input);
      } catch (err) {
        fail('FrontendFramer', i, input, err);
      }
      check(JSON.stringify(pieces.events) === JSON.stringify(whole.events), `framing depends on the cuts ${JSON.stringify(cuts)}`, i, input);
      check(pieces.error === whole.error, `the error depends on the cuts: ${pieces.error} / ${whole.error}`, i, input);
      if (whole.error) errors++;
      messages += whole.events.length;
    }
    // both outcomes must be common, or the property says little
    expect(errors).toBeGreaterThan(CASES / 10);
    expect(messages).toBeGreaterThan(CASES);
  });

  it('parseFirstPacket: only ProtocolViolation; an accepted StartupMessage is exactly its parameters', () => {
    const r = rngFor(2);
    let startups = 0;
    for (let i = 0; i < CASES; i++) {
      const valid = r.pick([randomStartup(r), serialize.requestSsl(), serialize.cancel(r.u32() | 0, r.u32() | 0), Buffer.from('0000000804d21630', 'hex')]).subarray(4);
      const body = hostile(r, valid);
      let p;
      try {
        p = parseFirstPacket(body);
      } catch (err) {
        if (!(err instanceof ProtocolViolation)) fail('parseFirstPacket', i, body, err);
        continue;
      }
      if (p.kind !== 'startup') {
        check(body.length >= 4, 'a short packet accepted', i, body);
        continue;
      }
      startups++;
      check(p.major === 3 && body[body.length - 1] === 0, 'startup layout', i, body);
      const pairs = (body.subarray(4).filter((x) => x === 0).length - 1) / 2;
      check(Number.isInteger(pairs) && p.params.size <= pairs, 'parameter count', i, body);
      for (const [k, v] of p.params) check(k.length > 0 && !k.includes('\0') && !v.includes('\0'), 'parameter text', i, body);
      if (p.params.size === pairs && body.subarray(4).toString('utf8') === body.subarray(4).toString('latin1')) {
        // ASCII and no name twice: writing the parameters back gives the same bytes
        const again = Buffer.concat([body.subarray(0, 4), ...[...p.params].flatMap(([k, v]) => [Buffer.from(`${k}\0${v}\0`)]), Buffer.from([0])]);
        check(again.equals(body), 'startup parameters do not round-trip', i, body);
      }
    }
    expect(startups).toBeGreaterThan(CASES / 20);
  });

  it('parseQuery, parsePasswordMessage, parseSASLInitialResponse: only ProtocolViolation, accepted bodies are exact', () => {
    const r = rngFor(3);
    let accepted = 0;
    for (let i = 0; i < CASES; i++) {
      const valid = r
        .pick([
          serialize.query(r.pick(REAL_COMMANDS)),
          serialize.password('md5abc'),
          serialize.sendSASLInitialResponseMessage(SCRAM_MECHANISM, 'n,,n=,r=abc'),
          serialize.sendSCRAMClientFinalMessage('c=biws,r=abc,p=xyz'),
        ])
        .subarray(5);
      const body = hostile(r, valid);
      try {
        const q = parseQuery(body);
        accepted++;
        check(body.indexOf(0) === body.length - 1 && Buffer.from(q).length <= body.length * 3, 'query', i, body);
      } catch (err) {
        if (!(err instanceof ProtocolViolation)) fail('parseQuery', i, body, err);
      }
      try {
        parsePasswordMessage(body);
        check(body.indexOf(0) === body.length - 1, 'password', i, body);
      } catch (err) {
        if (!(err instanceof ProtocolViolation)) fail('parsePasswordMessage', i, body, err);
      }
      try {
        const s = parseSASLInitialResponse(body);
        const mechEnd = body.indexOf(0);
        const len = body.readInt32BE(mechEnd + 1);
        if (s.data === undefined) check(len === -1 && body.length === mechEnd + 5, 'SASL without data', i, body);
        else check(len === s.data.length && body.length === mechEnd + 5 + len, 'SASL data length', i, body);
      } catch (err) {
        if (!(err instanceof ProtocolViolation)) fail('parseSASLInitialResponse', i, body, err);
      }
    }
    expect(accepted).toBeGreaterThan(CASES / 10);
  });
});

// ---------------------------------------------------------------------------------------------
// The replication grammar.
// ---------------------------------------------------------------------------------------------

const ALPHABET = ['"', "'", '/', ';', '(', ')', ',', '.', ' ', '\t', '\n', '0', '9', 'A', 'F', 'f', 'x', '_', '$', '-', '*', 'é', '\u0000', '\u00ff', '\ud83d\ude00'];
const WORDS = [
  'IDENTIFY_SYSTEM',
  'SHOW',
  'START_REPLICATION',
  'SLOT',
  'PHYSICAL',
  'LOGICAL',
  'TIMELINE',
  'TEMPORARY',
  'RESERVE_WAL',
  'WAIT',
  'TIMELINE_HISTORY',
  'CREATE_REPLICATION_SLOT',
  'DROP_REPLICATION_SLOT',
  'READ_REPLICATION_SLOT',
  '0/0',
  'FFFFFFFF/FFFFFFFF',
  '123456789/1',
  '0',
  '1',
  '4294967296',
  '"s"',
  '""',
  "'x'",
  "''",
  '(',
  ')',
  ',',
  ';',
  'x',
  'x.y',
];

function mutateText(r: Rng, text: string): string {
  let s = text;
  for (let n = 1 + r.int(4); n > 0; n--) {
    const at = r.int(s.length + 1);
    switch (r.int(6)) {
      case 0:
        s = s.slice(0, at) + r.pick(ALPHABET) + s.slice(at + 1);
        break;
      case 1:
        s = s.slice(0, at) + r.pick(ALPHABET) + s.slice(at);
        break;
      case 2:
        s = s.slice(0, at) + s.slice(at + 1 + r.int(6));
        break;
      case 3:
        s = s.slice(0, at) + s.slice(Math.max(0, at - 6), at) + s.slice(at);
        break;
      case 4:
        s = s.slice(0, at) + ` ${r.pick(WORDS)} ` + s.slice(at);
        break;
      default:
        s = s.slice(0, at);
    }
  }
  return s;
}

function randomCommand(r: Rng): string {
  if (r.bool(0.3)) return Array.from({ length: 1 + r.int(7) }, () => r.pick(WORDS)).join(r.pick([' ', '', '\t']));
  const base = r.pick(REAL_COMMANDS);
  return r.bool(0.8) ? mutateText(r, base) : base;
}

function wellFormed(c: ReplCommand): boolean {
  switch (c.kind) {
    case 'start_replication':
      return c.start >= 0n && c.start < 1n << 64n && (c.timeline === undefined || (Number.isInteger(c.timeline) && c.timeline >= 1 && c.timeline <= 0xffffffff)) && (c.slot === undefined || c.slot.length > 0);
    case 'timeline_history':
      return Number.isInteger(c.tli) && c.tli >= 1 && c.tli <= 0xffffffff;
    case 'show':
      return c.name.length > 0;
    case 'read_replication_slot':
    case 'drop_replication_slot':
    case 'create_replication_slot':
      return c.slot.length > 0;
    default:
      return true;
  }
}

describe('serve fuzz: replication grammar', () => {
  it('isReplicationCommand and parseReplicationCommand: only ReplSyntaxError; accepted commands are well-formed and deterministic', () => {
    const r = rngFor(4);
    let parsed = 0;
    let refused = 0;
    for (let i = 0; i < CASES; i++) {
      const text = randomCommand(r);
      let cmd: ReplCommand;
      try {
        if (!isReplicationCommand(text)) continue;
        cmd = parseReplicationCommand(text);
      } catch (err) {
        if (!(err instanceof ReplSyntaxError) || err.code !== '42601') fail('replication grammar', i, text, err);
        refused++;
        continue;
      }
      parsed++;
      check(wellFormed(cmd), `ill-formed ${JSON.stringify(cmd, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`, i, text);
      const again = parseReplicationCommand(text);
      check(
        JSON.stringify(again, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) === JSON.stringify(cmd, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)),
        'nondeterministic',
        i,
        text,
      );
      if (!text.trimEnd().endsWith(';')) {
        // the optional semicolon changes nothing
        let withSemi: ReplCommand | undefined;
        try {
          withSemi = parseReplicationCommand(`${text} ;`);
        } catch (err) {
          fail('a trailing semicolon broke a command', i, text, err);
        }
        check(
          JSON.stringify(withSemi, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) === JSON.stringify(cmd, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)),
          'a trailing semicolon changed the command',
          i,
          text,
        );
      }
    }
    expect(parsed).toBeGreaterThan(CASES / 20);
    expect(refused).toBeGreaterThan(CASES / 20);
  });
});

// ---------------------------------------------------------------------------------------------
// SCRAM.
// ---------------------------------------------------------------------------------------------

/** The client-final message for a server-first, written from RFC 5802 (independent of auth.ts). */
function clientFinal(password: string, bare: string, serverFirst: string, gs2: string, cb: Buffer): { text: string; signature: string } {
  const m = /^r=([^,]+),s=([^,]+),i=(\d+)$/.exec(serverFirst);
  if (!m) throw new Error(`bad server-first ${serverFirst}`);
  const salted = pbkdf2Sync(Buffer.from(password), Buffer.from(m[2]!, 'base64'), Number(m[3]), 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const withoutProof = `c=${Buffer.concat([Buffer.from(gs2), cb]).toString('base64')},r=${m[1]}`;
  const auth = `${bare},${serverFirst},${withoutProof}`;
  const sig = createHmac('sha256', storedKey).update(auth).digest();
  const proof = Buffer.alloc(32);
  for (let k = 0; k < 32; k++) proof[k] = clientKey[k]! ^ sig[k]!;
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return { text: `${withoutProof},p=${proof.toString('base64')}`, signature: `v=${createHmac('sha256', serverKey).update(auth).digest('base64')}` };
}

describe('serve fuzz: SCRAM server', () => {
  it('ScramServer.step: only AuthError; success only for the exact, right final message', () => {
    const r = rngFor(5);
    const mock = randomBytes(32);
    const cb = randomBytes(32);
    const verifiers = [1, 2, 8].map((it) => ({ kind: 'scram', verifier: buildScramVerifier('pw', it) }) as Secret);
    let done = 0;
    let failures = 0;
    const plainBudget = { left: 60 };
    for (let i = 0; i < CASES; i++) {
      const kind = r.int(10);
      let secret: Secret | undefined;
      if (kind < 6) secret = r.pick(verifiers);
      else if (kind < 8) secret = undefined;
      else if (kind < 9) secret = { kind: 'md5', hash: md5Secret('pw', 'u') };
      else secret = plainBudget.left-- > 0 ? { kind: 'plain', password: 'pw' } : r.pick(verifiers);
      const plus = r.bool(0.3);
      const mechanism = plus ? SCRAM_PLUS_MECHANISM : r.bool(0.95) ? SCRAM_MECHANISM : 'SCRAM-SHA-1';
      const gs2 = plus ? 'p=tls-server-end-point,,' : r.pick(['n,,', 'y,,']);
      const nonce = randomBytes(1 + r.int(18)).toString('base64');
      const bare = `n=${r.pick(['', '*', 'u'])},r=${nonce}`;
      const validFirst = Buffer.from(`${gs2}${bare}`);
      const firstMutated = r.bool(0.25);
      const first = firstMutated ? hostile(r, validFirst) : validFirst;
      let server: ScramServer;
      let step;
      try {
        server = new ScramServer({ user: 'u', secret, mechanism, plusOffered: plus || r.bool(0.2), channelBinding: cb, mockSecret: mock });
        step = server.step(first);
      } catch (err) {
        if (!(err instanceof AuthError)) fail('ScramServer (client-first)', i, first, err);
        failures++;
        continue;
      }
      check(step.kind === 'continue' && /^r=[^,]+,s=[A-Za-z0-9+/=]+,i=\d+$/.test(step.data), `server-first ${step.data}`, i, first);
      const rightPassword = r.bool(0.7);
      const iterations = Number(/,i=(\d+)$/.exec(step.data)![1]);
      // mock exchanges announce 4096 iterations: a real proof there is costly and fails anyway
      const f =
        iterations <= 64 || r.bool(0.02)
          ? clientFinal(rightPassword ? 'pw' : 'wrong', bare, step.data, gs2, plus ? cb : Buffer.alloc(0))
          : { text: `c=${Buffer.from(gs2).toString('base64')},r=${/^r=([^,]+)/.exec(step.data)![1]},p=${randomBytes(32).toString('base64')}`, signature: '' };
      const validFinal = Buffer.from(f.text);
      const finalMutated = r.bool(0.5);
      const final = finalMutated ? hostile(r, validFinal) : validFinal;
      let end;
      try {
        end = server.step(final);
      } catch (err) {
        if (!(err instanceof AuthError)) fail('ScramServer (client-final)', i, final, err);
        if (err.code !== '08P01' && err.code !== '28P01') fail(`unexpected SQLSTATE ${err.code}`, i, final, err);
        failures++;
        // (the connection closes after a failure; the object itself only has to keep to AuthError)
        try {
          server.step(r.bool() ? validFinal : final);
        } catch (err2) {
          if (!(err2 instanceof AuthError)) fail('ScramServer (after a failure)', i, validFinal, err2);
        }
        continue;
      }
      done++;
      check(end.kind === 'done', 'done', i, final);
      check(!firstMutated || first.equals(validFirst), 'a mutated client-first led to success', i, first);
      check(final.equals(validFinal), 'a mutated client-final was accepted', i, final);
      check(rightPassword && secret !== undefined && secret.kind !== 'md5', 'success without the password', i, final);
      check(end.data === f.signature, 'server signature', i, final);
      // and nothing after success
      try {
        server.step(validFinal);
        fail('a message after success was accepted', i, validFinal);
      } catch (err) {
        if (!(err instanceof AuthError)) fail('ScramServer (after success)', i, validFinal, err);
      }
    }
    expect(done).toBeGreaterThan(CASES / 20);
    expect(failures).toBeGreaterThan(CASES / 5);
  });
});

// ---------------------------------------------------------------------------------------------
// Whole connections.
// ---------------------------------------------------------------------------------------------

let root: string;
let source: WalSource;
const servers: { server: WalServer; port: number; name: string }[] = [];
const logged: string[] = [];

const recordingLogger: Logger = {
  info() {},
  verbose() {},
  warn() {},
  error(m: string) {
    logged.push(m);
  },
};

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'walstream-fuzz-serve-'));
  const store = new LocalStore(root);
  await store.put(FIXTURE_NAME, fixtureSegment());
  source = await openSource({ archive: store, log: recordingLogger, pollIntervalMs: 50 });
  const book = PasswordBook.parse([`replicator:${formatVerifier()}`, `legacy:${md5Secret('old', 'legacy')}`].join('\n'), 'fuzz');
  // the password server also speaks TLS: SSLRequest is answered 'S' and what follows must be a handshake
  const keyFile = join(root, 'key.pem');
  const certFile = join(root, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-sha256', '-days', '1', '-subj', '/CN=localhost', '-keyout', keyFile, '-out', certFile], {
    stdio: 'pipe',
  });
  const cert = readFileSync(certFile);
  const tls = { context: createSecureContext({ cert, key: readFileSync(keyFile) }), endPointHash: certificateEndPointHash(cert), required: false };
  for (const [name, auth, withTls] of [
    ['trust', { trust: true, book: undefined }, false],
    ['password', { trust: false, book }, true],
  ] as const) {
    const server = new WalServer({ source, slots: new SlotRegistry(), auth, log: recordingLogger, maxClients: 16, ...(withTls ? { tls } : {}) });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    servers.push({ server, port: addr.port, name });
  }
});

function formatVerifier(): string {
  const v = buildScramVerifier('pw', 4);
  return `SCRAM-SHA-256$${v.iterations}:${v.salt.toString('base64')}$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`;
}

afterAll(async () => {
  for (const { server } of servers) await server.close();
  source?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

/** A plausible conversation for one connection. */
function conversation(r: Rng): Buffer {
  const parts: Buffer[] = [];
  if (r.bool(0.2)) parts.push(Buffer.from('0000000804d21630', 'hex'));
  if (r.bool(0.3)) parts.push(serialize.requestSsl());
  parts.push(
    serialize.startup({ user: r.pick(['replicator', 'replicator', 'legacy', 'nobody']), database: 'replication', replication: 'true', ...(r.bool(0.3) ? { options: '-c wal_sender_timeout=200ms' } : {}) }),
  );
  if (r.bool(0.3)) parts.push(serialize.sendSASLInitialResponseMessage(SCRAM_MECHANISM, 'n,,n=,r=fuzznonce'), serialize.sendSCRAMClientFinalMessage('c=biws,r=fuzznonce,p=AAAA'));
  const slot = `fz_${r.int(1000)}`;
  for (let n = r.int(9); n > 0; n--) {
    switch (r.int(9)) {
      case 0:
        parts.push(serialize.query('IDENTIFY_SYSTEM'));
        break;
      case 1:
        parts.push(serialize.query(r.pick(['SHOW wal_segment_size', 'SHOW data_directory_mode', 'TIMELINE_HISTORY 1', 'SELECT 1', 'READ_REPLICATION_SLOT x'])));
        break;
      case 2:
        parts.push(serialize.query(`CREATE_REPLICATION_SLOT "${slot}" TEMPORARY PHYSICAL (RESERVE_WAL)`));
        break;
      case 3:
        parts.push(
          serialize.query(
            r.pick([
              'START_REPLICATION 0/7F0000 TIMELINE 1',
              'START_REPLICATION 0/800000',
              `START_REPLICATION SLOT "${slot}" 0/7FF000 TIMELINE 1`,
              'START_REPLICATION 0/900000',
              'START_REPLICATION 0/700000 TIMELINE 3',
            ]),
          ),
        );
        for (let k = r.int(4); k > 0; k--) parts.push(typedMessage(r));
        if (r.bool(0.7)) parts.push(serialize.copyDone());
        break;
      case 4:
        parts.push(serialize.parse({ text: 'IDENTIFY_SYSTEM' }), serialize.bind({}), serialize.execute({}), serialize.sync());
        break;
      case 5:
        parts.push(serialize.copyData(statusUpdate(r)));
        break;
      default:
        parts.push(typedMessage(r));
    }
  }
  if (r.bool(0.5)) parts.push(serialize.end());
  return Buffer.concat(parts);
}

/** Send `bytes` in random pieces, read and drop everything, end or reset; resolves when the socket is closed. */
function oneConnection(r: Rng, port: number, bytes: Buffer, index: number): Promise<void> {
  const cuts = Array.from({ length: r.int(8) }, () => r.int(bytes.length + 1)).sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, bytes.length]) {
    if (c > prev) pieces.push(bytes.subarray(prev, c));
    prev = c;
  }
  const finish = r.int(10); // 0-6 end, 7-8 reset, 9 wait for the server
  return new Promise((resolve, reject) => {
    const s: Socket = connect({ host: '127.0.0.1', port });
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      s.destroy();
      reject(new Error(`connection ${index} did not end (WALSTREAM_FUZZ_SEED=${SEED}); input ${bytes.toString('hex').slice(0, 2000)}`));
    }, 8000);
    s.on('data', () => undefined);
    s.on('error', () => undefined);
    s.on('close', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve();
    });
    s.on('connect', async () => {
      for (const p of pieces) {
        if (s.destroyed) return;
        s.write(p);
        if (r.bool(0.3)) await new Promise((res) => setImmediate(res));
        if (r.bool(0.05)) await new Promise((res) => setTimeout(res, 5));
      }
      if (finish < 7) s.end();
      else if (finish < 9) s.destroy();
      else setTimeout(() => s.end(), 300);
    });
  });
}

/** A well-behaved client: IDENTIFY_SYSTEM on the trust server, answered exactly. */
async function wellBehaved(port: number): Promise<void> {
  const s = connect({ host: '127.0.0.1', port });
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the well-behaved client got no answer (WALSTREAM_FUZZ_SEED=${SEED})`)), 5000);
    s.on('error', reject);
    s.on('connect', () => s.write(Buffer.concat([serialize.startup({ user: 'replicator', database: 'replication', replication: 'true' }), serialize.query('IDENTIFY_SYSTEM')])));
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      const all = Buffer.concat(chunks);
      // two ReadyForQuery: after startup and after the command
      let zs = 0;
      for (let p = 0; p + 5 <= all.length; p += 1 + all.readUInt32BE(p + 1)) if (all[p] === 0x5a) zs++;
      if (zs >= 2) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const all = Buffer.concat(chunks);
  s.destroy();
  const text = all.toString('latin1');
  expect(text).toContain(fixtureSystemId().toString());
  expect(text).toContain('0/800000');
  expect(text).toContain('IDENTIFY_SYSTEM\0');
}

describe('serve fuzz: whole connections to an in-process WalServer', () => {
  it('random and mutated conversations never break the server; a well-behaved client is served throughout', async () => {
    const r = rngFor(6);
    const PARALLEL = 6;
    let next = 0;
    const run = async (): Promise<void> => {
      for (;;) {
        const i = next++;
        if (i >= CONNECTIONS) return;
        const target = servers[r.int(servers.length)]!;
        const valid = conversation(r);
        const input = r.bool(0.1) ? r.bytes(r.int(200)) : r.bool(0.8) ? mutateBytes(r, valid) : valid;
        await oneConnection(r, target.port, input, i);
        if (i % 25 === 24) await wellBehaved(servers[0]!.port);
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, run));
    await wellBehaved(servers[0]!.port);
    // nothing is left behind: no client, no temporary slot
    for (const { server, name } of servers) {
      const deadline = Date.now() + 5000;
      while (server.clients().length > 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
      expect(server.clients(), `clients left on the ${name} server (WALSTREAM_FUZZ_SEED=${SEED})`).toEqual([]);
      // give a command that was waiting for the store when its client went time to finish
      await new Promise((res) => setTimeout(res, 300));
      const slots = (server as unknown as { ctx: { slots: SlotRegistry } }).ctx.slots;
      expect(
        slots
          .list()
          .filter((s) => s.temporary)
          .map((s) => ({ ...s, restartLsn: s.restartLsn?.toString(16) })),
        `temporary slots outliving their connections on the ${name} server (WALSTREAM_FUZZ_SEED=${SEED})`,
      ).toEqual([]);
    }
    expect(logged, `errors logged (WALSTREAM_FUZZ_SEED=${SEED})`).toEqual([]);
  });
});
