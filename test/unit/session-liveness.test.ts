// The receive timeout's clock (session/silence.ts) and the connection settings that bound a
// silent connection: connect_timeout and TCP keepalive (session/conninfo.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { SilenceClock } from '../../src/session/silence.js';
import { buildClientConfig, ConninfoError } from '../../src/session/conninfo.js';

describe('SilenceClock', () => {
  it('asks for a reply once at half the timeout and gives up at the whole of it', () => {
    const c = new SilenceClock(10_000, 1000, 0);
    const verdicts: string[] = [];
    for (let t = 1000; t <= 10_000; t += 1000) verdicts.push(c.tick(t));
    expect(verdicts).toEqual(['ok', 'ok', 'ok', 'ok', 'ping', 'ok', 'ok', 'ok', 'ok', 'dead']);
    expect(c.silentFor(10_000)).toBe(10_000);
  });

  it('any message starts the silence anew and allows another ping', () => {
    const c = new SilenceClock(10_000, 1000, 0);
    for (let t = 1000; t <= 5000; t += 1000) c.tick(t);
    c.heard(5500);
    const verdicts: string[] = [];
    for (let t = 6000; t <= 15_000; t += 1000) verdicts.push(c.tick(t));
    expect(verdicts.indexOf('ping')).toBe(5); // at 11 000: 5.5 s after the message
    expect(verdicts).not.toContain('dead');
    expect(c.tick(15_500)).toBe('dead');
  });

  it('time with reading paused does not count, and resuming restarts the clock', () => {
    const c = new SilenceClock(10_000, 1000, 0);
    for (let t = 1000; t <= 8000; t += 1000) c.tick(t);
    c.pause();
    for (let t = 9000; t <= 60_000; t += 1000) expect(c.tick(t)).toBe('ok');
    c.resume(60_000);
    expect(c.silentFor(60_000)).toBe(0);
    for (let t = 61_000; t < 70_000; t += 1000) expect(c.tick(t)).not.toBe('dead');
    expect(c.tick(70_000)).toBe('dead');
  });

  it('resume without pause changes nothing', () => {
    const c = new SilenceClock(10_000, 1000, 0);
    for (let t = 1000; t <= 9000; t += 1000) c.tick(t);
    c.resume(9000);
    expect(c.tick(10_000)).toBe('dead');
  });

  it("a late tick (this process did not run) is not counted as the server's silence", () => {
    const c = new SilenceClock(10_000, 1000, 0);
    c.tick(1000);
    // The event loop was blocked for 30 s: messages may be waiting unread.
    expect(c.tick(31_000)).toBe('ok');
    expect(c.silentFor(31_000)).toBeLessThanOrEqual(2000);
    expect(c.tick(32_000)).toBe('ok');
  });

  it('tick interval: a tenth of the timeout within [50 ms, 1 s]', () => {
    expect(SilenceClock.tickFor(60_000)).toBe(1000);
    expect(SilenceClock.tickFor(3000)).toBe(300);
    expect(SilenceClock.tickFor(100)).toBe(50);
  });
});

describe('connection bounds from conninfo', () => {
  const saved = process.env['PGCONNECT_TIMEOUT'];
  afterEach(() => {
    if (saved === undefined) delete process.env['PGCONNECT_TIMEOUT'];
    else process.env['PGCONNECT_TIMEOUT'] = saved;
  });
  const cfg = (dbname: string | undefined, extra: { connectTimeout?: number; defaultConnectTimeout?: number } = {}) => buildClientConfig({ dbname, applicationName: 'a', ...extra });

  it("connect_timeout: from the string, else PGCONNECT_TIMEOUT, else the caller's default, else 30 s", () => {
    delete process.env['PGCONNECT_TIMEOUT'];
    expect(cfg('host=h connect_timeout=5', { defaultConnectTimeout: 60 }).connectionTimeoutMillis).toBe(5000);
    expect(cfg('postgresql://u@h/db?connect_timeout=7', { defaultConnectTimeout: 60 }).connectionTimeoutMillis).toBe(7000);
    expect(cfg('host=h', { defaultConnectTimeout: 60 }).connectionTimeoutMillis).toBe(60_000);
    expect(cfg('host=h').connectionTimeoutMillis).toBe(30_000);
    process.env['PGCONNECT_TIMEOUT'] = '9';
    expect(cfg('host=h', { defaultConnectTimeout: 60 }).connectionTimeoutMillis).toBe(9000);
    expect(cfg('host=h connect_timeout=4').connectionTimeoutMillis).toBe(4000);
  });

  it('connect_timeout as libpq reads it: 0 waits forever, 1 means 2, junk is refused', () => {
    expect(cfg('host=h connect_timeout=0', { defaultConnectTimeout: 60 }).connectionTimeoutMillis).toBe(0);
    expect(cfg('host=h connect_timeout=1').connectionTimeoutMillis).toBe(2000);
    expect(() => cfg('host=h connect_timeout=soon')).toThrow(ConninfoError);
  });

  it('TCP keepalive is on by default; keepalives=0 turns it off; keepalives_idle sets the idle time', () => {
    expect(cfg('host=h')).toMatchObject({ keepAlive: true, keepAliveInitialDelayMillis: 10_000 });
    expect(cfg('host=h keepalives=0').keepAlive).toBe(false);
    expect(cfg('host=h keepalives=1 keepalives_idle=25')).toMatchObject({ keepAlive: true, keepAliveInitialDelayMillis: 25_000 });
    expect(cfg('postgresql://u@h/db?keepalives=0').keepAlive).toBe(false);
    expect(cfg('postgresql://u@h/db?keepalives_idle=3').keepAliveInitialDelayMillis).toBe(3000);
    expect(() => cfg('host=h keepalives=maybe')).toThrow(ConninfoError);
  });
});
