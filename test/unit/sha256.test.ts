// The plain-JavaScript SHA-256 of short strings (util/sha256.ts) against node:crypto: every length
// around the block boundaries, multi-byte UTF-8, and the FIPS 180-4 examples.
import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { sha256HexOfText } from '../../src/util/sha256.js';

describe('sha256HexOfText', () => {
  it('matches node:crypto for every length from 0 to 300 and for multi-byte text', () => {
    for (let n = 0; n <= 300; n++) {
      const text = Array.from({ length: n }, (_, i) => String.fromCharCode(32 + ((i * 7 + n) % 95))).join('');
      expect(sha256HexOfText(text), `length ${n}`).toBe(createHash('sha256').update(text, 'utf8').digest('hex'));
    }
    for (const text of ['db1\u0000a1b2c3d4-0000-4000-8000-000000000000\u0000pid:[4026531836]', 'hôte-ümlaut-\u{1F600}', '\u0000'.repeat(64)]) {
      expect(sha256HexOfText(text)).toBe(createHash('sha256').update(text, 'utf8').digest('hex'));
    }
  });

  it('gives the FIPS 180-4 example digests', () => {
    expect(sha256HexOfText('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(sha256HexOfText('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq')).toBe('248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1');
    expect(sha256HexOfText('')).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});
