// The encrypted object format (storage/encryption.ts) pinned with golden bytes and checked with an
// independent decryption written from the format's description; key files and variables.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDecipheriv, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { Keyring, SEALED_MAGIC, derivedKeyId, isSealed, loadKeyring, parseKeyFile, parseKeyVariable, readKeyFile, seal, unseal } from '../../src/storage/encryption.js';
import { IntegrityError, KeyUnavailableError, StorageError } from '../../src/storage/types.js';

const KEY = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const NONCE = Buffer.from(Array.from({ length: 12 }, (_, i) => 0xa0 + i));
const NAME = '000000010000000000000001';
const GOLDEN =
  '895753454e430d0a' + // magic "\x89WSENC\r\n"
  '01' + // version
  '01' + // AES-256-GCM
  '02' + // key id length
  '6b31' + // "k1"
  'a0a1a2a3a4a5a6a7a8a9aaab' + // nonce
  '8e7d10412aeb75de0e' + // ciphertext of "hello wal"
  '3ad87585a4555eb25d0614000b0dc6a0'; // tag

const ring = (...keys: [string, Buffer][]): Keyring =>
  new Keyring(
    keys.map(([id, key]) => ({ id, key })),
    'test',
  );

function rejectionOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

describe('sealed object format', () => {
  it('golden bytes', () => {
    const out = seal(ring(['k1', KEY]), NAME, 'none', Buffer.from('hello wal'), NONCE);
    expect(out.toString('hex')).toBe(GOLDEN);
    expect(isSealed(out)).toBe(true);
    expect(out.subarray(0, 8).equals(SEALED_MAGIC)).toBe(true);
  });

  it('decrypts by the documented layout: AAD = header, 0, name, 0, compression', () => {
    const stored = Buffer.from(GOLDEN, 'hex');
    const header = stored.subarray(0, 11 + 2 + 12);
    const d = createDecipheriv('aes-256-gcm', KEY, NONCE);
    d.setAAD(Buffer.concat([header, Buffer.from([0]), Buffer.from(NAME), Buffer.from([0]), Buffer.from('none')]));
    d.setAuthTag(stored.subarray(stored.length - 16));
    const plain = Buffer.concat([d.update(stored.subarray(header.length, stored.length - 16)), d.final()]);
    expect(plain.toString()).toBe('hello wal');
    expect(unseal(ring(['k1', KEY]), NAME, 'none', stored)).toEqual({ payload: Buffer.from('hello wal'), keyId: 'k1' });
  });

  it('a fresh nonce per object', () => {
    const r = ring(['k1', KEY]);
    const a = seal(r, NAME, 'none', Buffer.from('same'));
    const b = seal(r, NAME, 'none', Buffer.from('same'));
    expect(a.equals(b)).toBe(false);
    expect(a.subarray(13, 25).equals(b.subarray(13, 25))).toBe(false);
  });

  it('every byte changed, another name, another compression: IntegrityError naming the object', () => {
    const r = ring(['k1', KEY]);
    const stored = Buffer.from(GOLDEN, 'hex');
    for (let i = 8; i < stored.length; i++) {
      const t = Buffer.from(stored);
      t[i] = t[i]! ^ 0x01;
      const err = rejectionOf(() => unseal(r, NAME, 'none', t));
      // Changing the key id's bytes names a key that is not there.
      if (i >= 11 && i < 13) expect(err).toBeInstanceOf(KeyUnavailableError);
      else expect(err, `byte ${i}`).toBeInstanceOf(IntegrityError);
    }
    const other = rejectionOf(() => unseal(r, '000000010000000000000002', 'none', stored));
    expect(other).toBeInstanceOf(IntegrityError);
    expect((other as Error).message).toContain('000000010000000000000002');
    expect(rejectionOf(() => unseal(r, NAME, 'gzip', stored))).toBeInstanceOf(IntegrityError);
    expect(rejectionOf(() => unseal(r, NAME, 'none', stored.subarray(0, 30)))).toBeInstanceOf(IntegrityError);
  });

  it('a quarantine copy is bound to the name it was written for', () => {
    const r = ring(['k1', KEY]);
    const stored = Buffer.from(GOLDEN, 'hex');
    expect(unseal(r, `quarantine/${NAME}.20250102T030405Z`, 'none', stored).payload.toString()).toBe('hello wal');
    expect(unseal(r, `quarantine/${NAME}.20250102T030405.3Z`, 'none', stored).payload.toString()).toBe('hello wal');
  });

  it('no key, or not the key it names: KeyUnavailableError with the object and the key id, no key bytes', () => {
    const stored = Buffer.from(GOLDEN, 'hex');
    const none = rejectionOf(() => unseal(undefined, NAME, 'none', stored));
    expect(none).toBeInstanceOf(KeyUnavailableError);
    expect((none as Error).message).toContain(NAME);
    expect((none as Error).message).toContain('"k1"');
    expect((none as StorageError).transient).toBe(false);
    const other = rejectionOf(() => unseal(ring(['k2', randomBytes(32)]), NAME, 'none', stored));
    expect(other).toBeInstanceOf(KeyUnavailableError);
    expect((other as Error).message).toMatch(/encrypted with key "k1", which is not among the keys given \("k2"\)/);
  });

  it('a key of the right id but other bytes fails authentication', () => {
    expect(rejectionOf(() => unseal(ring(['k1', randomBytes(32)]), NAME, 'none', Buffer.from(GOLDEN, 'hex')))).toBeInstanceOf(IntegrityError);
  });

  it('rotation: the first key encrypts, every key decrypts', () => {
    const old = randomBytes(32);
    const neu = randomBytes(32);
    const before = seal(ring(['old', old]), NAME, 'gzip', Buffer.from('x'));
    const both = ring(['new', neu], ['old', old]);
    expect(unseal(both, NAME, 'gzip', before).keyId).toBe('old');
    const after = seal(both, NAME, 'gzip', Buffer.from('y'));
    expect(unseal(both, NAME, 'gzip', after)).toEqual({ payload: Buffer.from('y'), keyId: 'new' });
  });
});

describe('keys', () => {
  const hex = KEY.toString('hex');
  const b64 = KEY.toString('base64');
  const b64url = KEY.toString('base64url');

  it('parses id=KEY lines in hex, base64 and base64url, comments and blank lines; the first encrypts', () => {
    const r = parseKeyFile(`# keys\n\nnew=${b64}\n  old = ${hex}  \nolder=${b64url}\n`, 'f');
    expect(r.ids).toEqual(['new', 'old', 'older']);
    expect(r.currentId).toBe('new');
    for (const id of r.ids) expect(r.keyFor(id)!.equals(KEY)).toBe(true);
  });

  it('a key without an id gets one derived from it', () => {
    const r = parseKeyFile(`${b64}\n`, 'f');
    expect(r.ids).toEqual([derivedKeyId(KEY)]);
    expect(derivedKeyId(KEY)).toMatch(/^[0-9a-f]{8}$/);
    expect(parseKeyVariable(hex).currentId).toBe(derivedKeyId(KEY));
    expect(parseKeyVariable(`ops-2025=${b64}`).currentId).toBe('ops-2025');
  });

  it('malformed keys: clear errors that do not contain the key', () => {
    const cases = [
      [`k=${hex.slice(0, 62)}`, /line 1: the key "k" is not 32 bytes/],
      [`k=${b64.slice(0, 40)}`, /line 1: the key "k" is not 32 bytes/],
      [`bad id=${hex}`, /line 1: the key id/],
      [`a=${hex}\na=${b64}`, /key id "a" appears twice/],
      ['# nothing\n', /holds no encryption key/],
      [`${hex}zz`, /the key is not 32 bytes/],
    ] as const;
    for (const [text, re] of cases) {
      const err = rejectionOf(() => parseKeyFile(text, 'keys.txt'));
      expect(err).toBeInstanceOf(StorageError);
      expect((err as Error).message).toMatch(re);
      expect((err as Error).message).not.toContain(hex.slice(0, 16));
      expect((err as Error).message).not.toContain(b64.slice(0, 16));
    }
    expect((rejectionOf(() => parseKeyVariable(`x=${hex.slice(2)}`)) as Error).message).toMatch(/^WALSTREAM_ENCRYPTION_KEY: /);
  });

  it('a Keyring shows ids only in inspect and JSON', () => {
    const r = ring(['k1', KEY]);
    for (const text of [inspect(r, { showHidden: true, depth: 9 }), JSON.stringify(r), String(r)]) {
      expect(text).not.toContain(hex);
      expect(text).not.toContain(b64);
    }
    expect(inspect(r)).toContain('k1');
  });

  describe('key files', () => {
    let dir = '';
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'walstream-keys-'));
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it('reads a 0600 file; refuses one group or others can access, in one line', async () => {
      const f = join(dir, 'k');
      await writeFile(f, `k1=${b64}\n`, { mode: 0o600 });
      await chmod(f, 0o600);
      expect((await readKeyFile(f)).ids).toEqual(['k1']);
      for (const mode of [0o640, 0o604, 0o620]) {
        await chmod(f, mode);
        const err = await readKeyFile(f).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(StorageError);
        expect((err as Error).message).toBe(`encryption key file ${f} is accessible by group or others (mode 0${mode.toString(8)}); use chmod 600`);
      }
    });

    it('a missing file, a directory: clear errors', async () => {
      await expect(readKeyFile(join(dir, 'nope'))).rejects.toThrow(/cannot read encryption key file .*nope: ENOENT/);
      await expect(readKeyFile(dir)).rejects.toThrow(/not a regular file|EISDIR/);
    });

    it('loadKeyring: none, a file, the variable, not both', async () => {
      const f = join(dir, 'k2');
      await writeFile(f, `k2=${hex}\n`, { mode: 0o600 });
      expect(await loadKeyring({})).toBeUndefined();
      expect(await loadKeyring({ keyFile: '', keyVariable: '' })).toBeUndefined();
      expect((await loadKeyring({ keyFile: f }))!.currentId).toBe('k2');
      expect((await loadKeyring({ keyVariable: `v=${b64}` }))!.currentId).toBe('v');
      await expect(loadKeyring({ keyFile: f, keyVariable: b64 })).rejects.toThrow(/not both/);
    });
  });
});

describe('requireEncrypted', () => {
  it('refuses plain stored bytes; loadKeyring sets it and wants a key for it', async () => {
    const { decodeStored } = await import('../../src/storage/encryption.js');
    const strict = ring(['k1', KEY]).withRequireEncrypted(true);
    expect(strict.requireEncrypted).toBe(true);
    expect(strict.ids).toEqual(['k1']);
    expect(rejectionOf(() => decodeStored(strict, NAME, 'none', Buffer.from('plain'), true))).toBeInstanceOf(IntegrityError);
    expect(decodeStored(ring(['k1', KEY]), NAME, 'none', Buffer.from('plain'), false).payload.toString()).toBe('plain');
    expect(decodeStored(strict, NAME, 'none', Buffer.from(GOLDEN, 'hex'), true).payload.toString()).toBe('hello wal');
    expect((await loadKeyring({ keyVariable: KEY.toString('hex'), requireEncrypted: true }))!.requireEncrypted).toBe(true);
    await expect(loadKeyring({ requireEncrypted: true })).rejects.toThrow(/--encryption-required needs an encryption key/);
  });
});
