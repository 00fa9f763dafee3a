// receive's classifyError tells permanent server conditions by SQLSTATE, command and state, never
// by the message: every case is checked with the English message and with the German one of a
// server whose lc_messages is de_DE (postgres-15.mo), and with a message that says nothing.
import { describe, expect, it } from 'vitest';
import { classifyError, PermanentError } from '../../src/commands/receive.js';
import { commandName, ConnectionLostError, ServerError, SQLSTATE, toServerError } from '../../src/session/errors.js';

/** Message texts of one condition: English, German, and one no pattern could match. */
function texts(english: string, german: string): string[] {
  return [english, german, 'ERR'];
}

function serverError(message: string, code: string, command?: string, streaming?: boolean, detail?: string): ServerError {
  return new ServerError(message, code, detail, undefined, { ...(command !== undefined ? { command } : {}), ...(streaming !== undefined ? { streaming } : {}) });
}

describe('classifyError by SQLSTATE', () => {
  it('58P01 from START_REPLICATION: the segment is gone from the server, permanent, with what to do', () => {
    for (const m of texts('requested WAL segment 000000010000000000000001 has already been removed', 'das angeforderte WAL-Segment 000000010000000000000001 wurde schon entfernt')) {
      const e = classifyError(serverError(m, '58P01', 'START_REPLICATION', true));
      expect(e).toBeInstanceOf(PermanentError);
      expect(e.message).toBe(
        `${m} (on the server): the WAL between this archive's end and the server's oldest segment is gone from the server. ` +
          'Fill the gap from another archive or a base backup taken after it, or start afresh in an empty directory; use a replication slot (--slot) to keep this from happening',
      );
    }
  });

  it('58P01 from another command (TIMELINE_HISTORY: a history file missing) is not the removed segment', () => {
    const err = serverError('could not open file "pg_wal/00000002.history": No such file or directory', '58P01', 'TIMELINE_HISTORY');
    expect(classifyError(err)).toBe(err);
  });

  it('42704 with a slot named, from START_REPLICATION or DROP_REPLICATION_SLOT: the slot error', () => {
    for (const m of texts('replication slot "s" does not exist', 'Replikations-Slot »s« existiert nicht')) {
      for (const command of ['START_REPLICATION', 'DROP_REPLICATION_SLOT']) {
        const e = classifyError(serverError(m, '42704', command, false), { slot: 's' });
        expect(e).toBeInstanceOf(PermanentError);
        expect(e.message).toBe('replication slot "s" does not exist; create it with --create-slot');
      }
    }
  });

  it('42704 without a slot named, or from SHOW, is no slot error', () => {
    const noSlot = serverError('x', '42704', 'START_REPLICATION', false);
    expect(classifyError(noSlot)).toBe(noSlot);
    const show = serverError('unrecognized configuration parameter "walstream.clients"', '42704', 'SHOW');
    expect(classifyError(show, { slot: 's' })).toBe(show);
  });

  it('0A000 from READ_REPLICATION_SLOT (15+): a logical slot, refused clearly', () => {
    for (const m of texts('cannot use READ_REPLICATION_SLOT with a logical replication slot', 'READ_REPLICATION_SLOT kann nicht mit einem logischem Replikations-Slot verwendet werden')) {
      const e = classifyError(serverError(m, '0A000', 'READ_REPLICATION_SLOT'), { slot: 'ls' });
      expect(e).toBeInstanceOf(PermanentError);
      expect(e.message).toBe(`${m}: replication slot "ls" is a logical slot; walstream needs a physical slot`);
    }
  });

  it('55000 from START_REPLICATION before streaming, slot not read (before 15): a logical slot', () => {
    for (const m of texts('cannot use a logical replication slot for physical replication', 'logischer Replikations-Slot kann nicht für physische Replikation verwendet werden')) {
      const e = classifyError(serverError(m, '55000', 'START_REPLICATION', false), { slot: 'ls' });
      expect(e).toBeInstanceOf(PermanentError);
      expect(e.message).toBe(`${m}: replication slot "ls" is a logical slot; walstream needs a physical slot`);
    }
  });

  it('55000 from START_REPLICATION for a slot READ_REPLICATION_SLOT called physical: invalidated (18+), permanent', () => {
    const err = serverError('can no longer access replication slot "s"', '55000', 'START_REPLICATION', false, 'This replication slot has been invalidated due to "wal_removed".');
    const e = classifyError(err, { slot: 's', slotType: 'physical' });
    expect(e).toBeInstanceOf(PermanentError);
    expect(e.message).toMatch(/^can no longer access replication slot "s" \(This replication slot has been invalidated due to "wal_removed"\): the server can no longer use replication slot "s"/);
    expect(e.message).toContain('--drop-slot, --create-slot');
  });

  it('55000 without a slot, or once streaming, is passing', () => {
    const noSlot = serverError('x', '55000', 'START_REPLICATION', false);
    expect(classifyError(noSlot)).toBe(noSlot);
    const streaming = serverError('x', '55000', 'START_REPLICATION', true);
    expect(classifyError(streaming, { slot: 's' })).toBe(streaming);
  });

  it('XX000 is never permanent by itself: "not in this server\'s history" and "ahead of the WAL flush position" share it', () => {
    for (const m of [
      "requested starting point 0/5000000 on timeline 1 is not in this server's history",
      'angeforderter Startpunkt 0/5000000 auf Zeitleiste 1 ist nicht in der History dieses Servers',
      'requested starting point 0/9000000 is ahead of the WAL flush position of this server 0/8000000',
    ]) {
      for (const streaming of [false, true]) {
        const err = serverError(m, 'XX000', 'START_REPLICATION', streaming);
        expect(classifyError(err, { slot: 's' })).toBe(err);
      }
    }
  });

  it('authentication and privilege codes are permanent whatever the command', () => {
    for (const code of ['28P01', '28000']) expect(classifyError(serverError('Passwort-Authentifizierung für Benutzer »u« fehlgeschlagen', code))).toBeInstanceOf(PermanentError);
    const e = classifyError(serverError('nur Superuser und Replikationsrollen können WAL-Sender starten', '42501'));
    expect(e).toBeInstanceOf(PermanentError);
    expect(e.message).toBe('nur Superuser und Replikationsrollen können WAL-Sender starten: the role needs the REPLICATION attribute');
  });

  it('the English words alone make nothing permanent (a server without a code, or another code)', () => {
    for (const [m, code] of [
      ['requested WAL segment 000000010000000000000001 has already been removed', undefined],
      ['requested WAL segment 000000010000000000000001 has already been removed', 'XX000'],
      ['cannot use a logical replication slot for physical replication', 'XX000'],
      ["requested timeline 2 is not in this server's history", 'XX000'],
      ['das angeforderte WAL-Segment 000000010000000000000001 wurde schon entfernt', 'XX000'],
    ] as const) {
      const err = new ServerError(m, code, undefined, undefined, { command: 'START_REPLICATION', streaming: false });
      expect(classifyError(err, { slot: 's' })).toBe(err);
    }
  });

  it("the codes walstream names are PostgreSQL's", () => {
    expect(SQLSTATE).toMatchObject({
      UNDEFINED_FILE: '58P01',
      UNDEFINED_OBJECT: '42704',
      DUPLICATE_OBJECT: '42710',
      OBJECT_NOT_IN_PREREQUISITE_STATE: '55000',
      FEATURE_NOT_SUPPORTED: '0A000',
      INTERNAL_ERROR: 'XX000',
      INSUFFICIENT_PRIVILEGE: '42501',
    });
  });
});

describe('server errors carry the command they answered', () => {
  it('toServerError keeps code, detail and hint, and adds the command and whether streaming had begun', () => {
    const pgErr = Object.assign(new Error('das angeforderte WAL-Segment 000000010000000000000001 wurde schon entfernt'), { code: '58P01', detail: 'd', hint: 'h' });
    const e = toServerError(pgErr, { command: 'START_REPLICATION', streaming: true }) as ServerError;
    expect(e).toBeInstanceOf(ServerError);
    expect([e.message, e.code, e.detail, e.hint, e.command, e.streaming]).toEqual([pgErr.message, '58P01', 'd', 'h', 'START_REPLICATION', true]);
    // One that already names its command keeps it.
    expect(toServerError(e, { command: 'SHOW' })).toBe(e);
    // A lost connection stays one.
    const lost = new ConnectionLostError('Connection terminated unexpectedly');
    expect(toServerError(lost, { command: 'START_REPLICATION' })).toBe(lost);
  });

  it('commandName: the first word in capitals', () => {
    expect(commandName('START_REPLICATION SLOT "s" PHYSICAL 0/3000000 TIMELINE 1')).toBe('START_REPLICATION');
    expect(commandName('READ_REPLICATION_SLOT "s"')).toBe('READ_REPLICATION_SLOT');
    expect(commandName('  show wal_segment_size')).toBe('SHOW');
  });

  it('withDetail: the message and its DETAIL in one line', () => {
    expect(new ServerError('m', 'XX000', 'Die History dieses Servers zweigte von Zeitleiste 1 bei 0/3000000 ab.').withDetail).toBe('m (Die History dieses Servers zweigte von Zeitleiste 1 bei 0/3000000 ab)');
    expect(new ServerError('m', 'XX000').withDetail).toBe('m');
  });
});
