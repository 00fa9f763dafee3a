// The archive identity's encryption field and marker (archive/identity.ts): recorded by the first
// writer with a key in an archive without WAL, refusing writers without one, recorded later only
// by --encryption-required (the marker), and readers refusing plain objects in an encrypted
// archive through EncryptedArchiveGuard.
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/storage/memory.js';
import { Keyring } from '../../src/storage/encryption.js';
import { ENCRYPTED_MARKER_NAME, IDENTITY_NAME, IntegrityError, StorageError, type ArchiveStore, type GetResult } from '../../src/storage/types.js';
import { ArchiveEncryptedError, EncryptedArchiveGuard, archiveEncrypted, checkWriter, claimArchive, decodeIdentity, encodeIdentity, readIdentity } from '../../src/archive/identity.js';

const KEY = new Keyring([{ id: 'k1', key: Buffer.alloc(32, 7) }], 'test');
const OTHER = new Keyring([{ id: 'k2', key: Buffer.alloc(32, 9) }], 'test');
const ours = { systemIdentifier: 7300000000000000001n, segmentSize: 16 * 1024 * 1024 };
const SEG = '000000010000000000000003';

/** Counts get requests by name. */
class Counting extends MemoryStore {
  gets: string[] = [];
  override async get(name: string): Promise<GetResult> {
    this.gets.push(name);
    return super.get(name);
  }
}

describe('identity record: encryption field', () => {
  it('is written only by a writer with a key, and an older record without it still decodes', async () => {
    expect(encodeIdentity(ours).toString()).toBe(`{"format":1,"systemIdentifier":"${ours.systemIdentifier}","segmentSize":16777216}\n`);
    expect(JSON.parse(encodeIdentity({ ...ours, encryption: 'aes-256-gcm' }).toString())).toMatchObject({ encryption: 'aes-256-gcm' });
    expect(decodeIdentity(encodeIdentity(ours), 'x')).toEqual(ours);
    expect(() => decodeIdentity(Buffer.from('{"format":1,"systemIdentifier":"1","segmentSize":16777216,"encryption":"rot13"}'), 'x')).toThrow(/names encryption "rot13", which this walstream does not know/);

    const plain = new MemoryStore();
    await claimArchive(plain, ours, SEG);
    expect(await readIdentity(plain)).toEqual(ours);
    expect(await archiveEncrypted(plain)).toBe(false);

    const enc = new MemoryStore('memory:', { keyring: KEY });
    await claimArchive(enc, ours, SEG, { encrypts: true });
    expect(await readIdentity(enc)).toEqual({ ...ours, encryption: 'aes-256-gcm' });
    // Stored encrypted: without the key, or with another, the archive still counts as encrypted.
    expect(await archiveEncrypted(enc.withKeyring(undefined))).toBe(true);
    expect(await archiveEncrypted(enc.withKeyring(OTHER))).toBe(true);
  });

  it('a record stored encrypted counts as saying so, with or without the field', async () => {
    const enc = new MemoryStore('memory:', { keyring: KEY });
    await enc.put(IDENTITY_NAME, encodeIdentity(ours));
    expect(await readIdentity(enc)).toEqual({ ...ours, encryption: 'aes-256-gcm' });
    await expect(claimArchive(enc.withKeyring(undefined), ours, SEG)).rejects.toThrow(ArchiveEncryptedError);
  });

  it('a writer without a key is refused by an encrypted archive, before and after a race for the first record', async () => {
    const enc = new MemoryStore('memory:a', { keyring: KEY });
    await claimArchive(enc, ours, SEG, { encrypts: true });
    const keyless = enc.withKeyring(undefined);
    const refused = claimArchive(keyless, ours, SEG);
    await expect(refused).rejects.toThrow(ArchiveEncryptedError);
    await expect(refused).rejects.toThrow(
      'the archive memory:a is encrypted (its identity record walstream.json says so) and no encryption key was given: writing to it needs its key (--encryption-key-file or WALSTREAM_ENCRYPTION_KEY); nothing was written',
    );
    await expect(checkWriter(keyless, { encrypts: false })).rejects.toThrow(ArchiveEncryptedError);
    await checkWriter(enc, { encrypts: true });
    // A plain record with the field (however it got there) refuses as well.
    const marked = new MemoryStore();
    await marked.put(IDENTITY_NAME, encodeIdentity({ ...ours, encryption: 'aes-256-gcm' }));
    await expect(claimArchive(marked, ours, SEG)).rejects.toThrow(ArchiveEncryptedError);
    // Another system is still reported as such first.
    await expect(claimArchive(marked, { ...ours, systemIdentifier: 42n }, SEG)).rejects.toThrow(/holds WAL of system/);

    // Racing for the first record: the keyless loser reads the winner's encrypted record.
    const race = new MemoryStore('memory:race', { keyring: KEY });
    const raceKeyless = race.withKeyring(undefined);
    const results = await Promise.allSettled([claimArchive(race, ours, SEG, { encrypts: true }), claimArchive(raceKeyless, ours, SEG)]);
    const winnerEncrypted = await archiveEncrypted(race);
    if (winnerEncrypted) {
      expect(results[0].status).toBe('fulfilled');
      expect(results[1].status === 'rejected' && results[1].reason instanceof ArchiveEncryptedError).toBe(true);
    } else {
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    }
    // No record at all: nothing to refuse.
    await checkWriter(new MemoryStore(), { encrypts: false });
  });

  it('an existing record without the field: only a writer with a key and --encryption-required records it, with the marker, never rewriting the record', async () => {
    const store = new MemoryStore();
    await claimArchive(store, ours, SEG);
    const record = await store.get(IDENTITY_NAME);
    const keyed = store.withKeyring(KEY);
    expect(await claimArchive(keyed, ours, SEG, { encrypts: true })).toEqual({ encrypted: false });
    expect(await archiveEncrypted(store)).toBe(false);
    await claimArchive(store, ours, SEG); // a keyless writer is still welcome

    const strict = store.withKeyring(KEY.withRequireEncrypted(true));
    let deletes = 0;
    const del = strict.delete.bind(strict);
    strict.delete = async (name: string): Promise<void> => {
      deletes++;
      await del(name);
    };
    expect(await claimArchive(strict, ours, SEG, { encrypts: true, requireEncrypted: true })).toEqual({ encrypted: true });
    expect(deletes).toBe(0);
    // The record is the very same object; the marker says the archive is encrypted.
    const after = await store.get(IDENTITY_NAME);
    expect(after.data.equals(record.data)).toBe(true);
    expect(after.info.modified).toEqual(record.info.modified);
    expect(await store.head(ENCRYPTED_MARKER_NAME)).toBeDefined();
    expect(await readIdentity(store)).toEqual(ours);
    expect(await archiveEncrypted(store)).toBe(true);
    expect((await store.list()).map((o) => o.name)).toEqual([]);
    await expect(claimArchive(store, ours, SEG)).rejects.toThrow(/is encrypted \(its marker walstream.encrypted says so\)/);
    await expect(checkWriter(store, { encrypts: false })).rejects.toThrow(ArchiveEncryptedError);
    // Idempotent, and nothing left in quarantine.
    await claimArchive(strict, ours, SEG, { encrypts: true, requireEncrypted: true });
    expect((await store.list('quarantine/')).length).toBe(0);
    // Turned off by removing the marker by hand.
    await store.delete(ENCRYPTED_MARKER_NAME);
    await claimArchive(store, ours, SEG);
    // Never for another system.
    const other = new MemoryStore();
    await claimArchive(other, ours, SEG);
    await expect(claimArchive(other.withKeyring(KEY), { ...ours, segmentSize: 1024 * 1024 }, SEG, { encrypts: true, requireEncrypted: true })).rejects.toThrow(/segments/);
    expect(await archiveEncrypted(other)).toBe(false);
  });

  it('a first writer with a key records encryption only in an archive without WAL yet, or with --encryption-required', async () => {
    // WAL already there (a pg_receivewal directory, an archive whose record was removed).
    const old = new MemoryStore();
    await old.put('000000010000000000000002', Buffer.from('plain wal'));
    expect(await claimArchive(old.withKeyring(KEY), ours, SEG, { encrypts: true })).toEqual({ encrypted: false });
    expect(await archiveEncrypted(old)).toBe(false);
    // Stored plain, without the field: readers and writers without the key carry on.
    expect(await readIdentity(old)).toEqual(ours);
    await claimArchive(old, ours, SEG);
    expect((await new EncryptedArchiveGuard(old.withKeyring(KEY)).get('000000010000000000000002')).data.toString()).toBe('plain wal');

    const forced = new MemoryStore();
    await forced.put('000000010000000000000002', Buffer.from('plain wal'));
    expect(await claimArchive(forced.withKeyring(KEY.withRequireEncrypted(true)), ours, SEG, { encrypts: true, requireEncrypted: true })).toEqual({ encrypted: true });
    expect(await archiveEncrypted(forced)).toBe(true);

    // One page is enough to tell: the first WAL object answers (a large archive is not listed whole).
    const lists: unknown[] = [];
    const big = new MemoryStore('memory:', { keyring: KEY });
    for (let i = 0; i < 5; i++) await big.withKeyring(undefined).put(`00000001000000000000000${i}`, Buffer.from('plain wal'));
    const list = big.list.bind(big);
    big.list = async (prefix, opts) => {
      lists.push(opts);
      return list(prefix, opts);
    };
    expect(await claimArchive(big, ours, SEG, { encrypts: true })).toEqual({ encrypted: false });
    expect(lists).toEqual([{ limit: 1 }]);

    // A marker left without a record still refuses a keyless first writer.
    const marked = new MemoryStore();
    await marked.put(ENCRYPTED_MARKER_NAME, Buffer.from('{}'));
    await expect(claimArchive(marked, ours, SEG)).rejects.toThrow(ArchiveEncryptedError);
    expect(await readIdentity(marked)).toBeUndefined();
  });

  it('tells the store, which then replaces a plain copy of what it puts (S3, memory)', async () => {
    const store = new MemoryStore();
    await store.put(SEG, Buffer.from('plain wal'));
    await claimArchive(store, ours, SEG);
    await store.put(ENCRYPTED_MARKER_NAME, Buffer.from('{}'));
    const keyed = store.withKeyring(KEY);
    expect(await claimArchive(keyed, ours, SEG, { encrypts: true })).toEqual({ encrypted: true });
    const r = await keyed.put(SEG, Buffer.from('plain wal'));
    expect(r.replacedDamaged).toMatch(/^quarantine\//);
    expect((await new EncryptedArchiveGuard(keyed).get(SEG)).info.keyId).toBe('k1');
  });
});

describe('EncryptedArchiveGuard', () => {
  it('refuses plain objects in an encrypted archive, with or without a key, reading the record once', async () => {
    const enc = new MemoryStore('memory:', { keyring: KEY });
    await claimArchive(enc, ours, SEG, { encrypts: true });
    await enc.put(SEG, Buffer.from('sealed'));
    await enc.withKeyring(undefined).put('000000010000000000000004', Buffer.from('planted plain'));
    for (const inner of [enc, enc.withKeyring(undefined)]) {
      const guard = new EncryptedArchiveGuard(inner);
      const refused = guard.get('000000010000000000000004');
      await expect(refused).rejects.toThrow(IntegrityError);
      await expect(refused).rejects.toThrow(/"000000010000000000000004" is corrupt: it is not encrypted, and the archive's identity record \(walstream.json\) says its objects are encrypted/);
    }
    expect((await new EncryptedArchiveGuard(enc).get(SEG)).data.toString()).toBe('sealed');
  });

  it('costs no request in an encrypted archive, one in all in an unencrypted one', async () => {
    const plain = new Counting();
    await claimArchive(plain, ours, SEG);
    await plain.put(SEG, Buffer.from('a'));
    await plain.put('000000010000000000000004', Buffer.from('b'));
    plain.gets.length = 0;
    const guard = new EncryptedArchiveGuard(plain);
    expect((await guard.get(SEG)).data.toString()).toBe('a');
    expect((await guard.get('000000010000000000000004')).data.toString()).toBe('b');
    expect(plain.gets.filter((n) => n === IDENTITY_NAME).length).toBe(1);

    const enc = new Counting('memory:', { keyring: KEY });
    await claimArchive(enc, ours, SEG, { encrypts: true });
    await enc.put(SEG, Buffer.from('a'));
    enc.gets.length = 0;
    await new EncryptedArchiveGuard(enc).get(SEG);
    expect(enc.gets).toEqual([SEG]);

    // No record at all: plain objects are served.
    const none = new MemoryStore();
    await none.put(SEG, Buffer.from('x'));
    expect((await new EncryptedArchiveGuard(none).get(SEG)).data.toString()).toBe('x');
  });

  it('asks again after the record could not be read', async () => {
    const store = new MemoryStore();
    await store.put(SEG, Buffer.from('a'));
    let fail = true;
    const flaky: ArchiveStore = Object.assign(Object.create(store) as MemoryStore, {
      get: async (name: string): Promise<GetResult> => {
        if (name === IDENTITY_NAME && fail) throw new StorageError('unreachable', true);
        return store.get(name);
      },
    });
    const guard = new EncryptedArchiveGuard(flaky);
    await expect(guard.get(SEG)).rejects.toThrow(/unreachable/);
    fail = false;
    expect((await guard.get(SEG)).data.toString()).toBe('a');
  });
});
