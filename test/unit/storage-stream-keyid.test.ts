// A streamed object read back names the key it is encrypted with (info.keyId), as a whole one
// does: readers that refuse plain objects in an encrypted archive (EncryptedArchiveGuard) tell the
// two apart by it before reading a byte.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { EncryptedArchiveGuard } from '../../src/archive/identity.js';
import { loadKeyring } from '../../src/storage/encryption.js';
import { MemoryStore } from '../../src/storage/memory.js';
import { IDENTITY_NAME } from '../../src/storage/types.js';

async function* chunks(n: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < n; i++) yield randomBytes(100_000);
}

async function drain(s: AsyncIterable<Buffer>): Promise<number> {
  let n = 0;
  for await (const b of s) n += b.length;
  return n;
}

describe('getStream of an encrypted streamed object', () => {
  it('reports its key id, and passes the guard of an archive recorded as encrypted', async () => {
    const keyring = (await loadKeyring({ keyVariable: `k7=${randomBytes(32).toString('hex')}` }))!;
    const store = new MemoryStore('memory:', { keyring });
    await store.putStream!('backups/20261204T000000Z.base.tar', chunks(5), { compression: 'gzip' });
    const got = await store.getStream!('backups/20261204T000000Z.base.tar');
    expect(got.info.keyId).toBe('k7');
    expect(await drain(got.stream)).toBe(500_000);
    await store.put(IDENTITY_NAME, Buffer.from(JSON.stringify({ systemIdentifier: '7300000000000000001', segmentSize: 1048576, encryption: 'aes-256-gcm' })));
    const guarded = new EncryptedArchiveGuard(store);
    const viaGuard = await guarded.getStream!('backups/20261204T000000Z.base.tar');
    expect(await drain(viaGuard.stream)).toBe(500_000);
    // A plain streamed object there is refused before a byte is read.
    const plain = new MemoryStore('memory:', { sharedWith: store } as never);
    await plain.putStream!('backups/20261204T000000Z.1663.tar', chunks(1));
    await expect(guarded.getStream!('backups/20261204T000000Z.1663.tar')).rejects.toThrow(/it is not encrypted/);
  });
});
