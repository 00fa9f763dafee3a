import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { LocalStore } from '../../src/storage/local.js';
import { openArchive, parseArchiveUrl } from '../../src/storage/open.js';
import { StorageError } from '../../src/storage/types.js';

// Record when the S3 backend (and with it the AWS SDK) gets loaded. (And keep the SDK's
// "Node 20 support ends in 2027" advisory out of the test output.)
const loaded = vi.hoisted(() => {
  process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';
  return { s3: false };
});
vi.mock('../../src/storage/s3.js', async (importOriginal) => {
  loaded.s3 = true;
  return importOriginal();
});

describe('parseArchiveUrl', () => {
  it.each([
    ['/var/lib/wal', { kind: 'local', path: '/var/lib/wal' }],
    ['relative/archive', { kind: 'local', path: 'relative/archive' }],
    ['./a:b', { kind: 'local', path: './a:b' }],
    ['c:archive', { kind: 'local', path: 'c:archive' }],
    ['file:///var/lib/wal', { kind: 'local', path: '/var/lib/wal' }],
    ['file:///var/my%20wal/', { kind: 'local', path: '/var/my wal/' }],
    ['file://localhost/srv/wal', { kind: 'local', path: '/srv/wal' }],
    ['file:///srv/a%23b%3Fc%25d', { kind: 'local', path: '/srv/a#b?c%d' }],
    ['/srv/a b#c?d%20e', { kind: 'local', path: '/srv/a b#c?d%20e' }],
    ['s3://bucket', { kind: 's3', bucket: 'bucket', prefix: '' }],
    ['s3://bucket/', { kind: 's3', bucket: 'bucket', prefix: '' }],
    ['s3://my.bucket-1/wal', { kind: 's3', bucket: 'my.bucket-1', prefix: 'wal/' }],
    // An older us-east-1 bucket, or an S3-compatible store with relaxed names.
    ['s3://Old_Bucket/wal', { kind: 's3', bucket: 'Old_Bucket', prefix: 'wal/' }],
    ['s3://bucket/a/b', { kind: 's3', bucket: 'bucket', prefix: 'a/b/' }],
    ['s3://bucket/a/b/', { kind: 's3', bucket: 'bucket', prefix: 'a/b/' }],
    ['S3://bucket/x', { kind: 's3', bucket: 'bucket', prefix: 'x/' }],
    ['azure://wal', { kind: 'azure', container: 'wal', prefix: '' }],
    ['azure://wal-archive/db1/', { kind: 'azure', container: 'wal-archive', prefix: 'db1/' }],
    ['Azure://wal/a/b', { kind: 'azure', container: 'wal', prefix: 'a/b/' }],
  ])('%s', (url, expected) => {
    expect(parseArchiveUrl(url)).toEqual(expected);
  });

  it.each([
    ['', /empty/],
    ['   ', /empty/],
    ['s3://', /no bucket/],
    ['s3:///prefix', /no bucket/],
    ['s3:bucket', /expected s3:\/\/bucket\/prefix/],
    ['s3://bu cket/x', /not a valid bucket name/],
    ['s3://bucket/a//b', /empty, "\." or "\.\." part/],
    ['s3://bucket/../x', /empty, "\." or "\.\." part/],
    ['s3://bucket/x?versionId=1', /query strings/],
    ['gs://bucket/x', /unsupported scheme "gs:"/],
    ['https://example.com/wal', /unsupported scheme "https:"/],
    ['file://otherhost/x', /invalid archive location/],
    ['/tmp/a\nb', /control characters/],
    ['s3://bucket_/x', /not a valid bucket name/],
    ['s3://abc/b/../c', /empty, "\." or "\.\." part/],
    ['s3://b/x', /not a valid bucket name/],
    ['s3://a..b/x', /not a valid bucket name/],
    ['s3://-bucket/x', /not a valid bucket name/],
    ['file:///srv/wal#1', /must not have "\?" or "#"/],
    ['file:///srv/wal?x=1', /must not have "\?" or "#"/],
    ['file:///srv/a%2Fb', /invalid archive location/],
    ['azure://', /no container name/],
    ['azure://Wal/x', /not a valid container name/],
    ['azure://a--b/x', /not a valid container name/],
    ['azure://wal/a//b', /empty, "\." or "\.\." part/],
    ['azure://wal/x?sv=2024&sig=abc', /query strings/],
    ['azure://account:key@wal/x', /credentials in an azure:\/\/ URL are not supported/],
  ])('refuses %j', (url, message) => {
    let err: unknown;
    try {
      parseArchiveUrl(url);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).transient).toBe(false);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).not.toMatch(/\n/);
  });

  it('never repeats credentials from an s3:// URL', () => {
    const err = (() => {
      try {
        parseArchiveUrl('s3://AKIDEXAMPLE:wJalrXUtnFEMIsecret@bucket/wal');
      } catch (e) {
        return e as Error;
      }
      throw new Error('accepted');
    })();
    expect(err.message).toMatch(/credentials in an s3:\/\/ URL are not supported/);
    expect(err.message).not.toContain('wJalrXUtnFEMIsecret');
    expect(err.message).not.toContain('AKIDEXAMPLE');
  });
});

describe('openArchive', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'walstream-open-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('opens a directory without loading the S3 SDK', async () => {
    const a = await openArchive(dir);
    expect(a).toBeInstanceOf(LocalStore);
    expect(a.description).toBe(dir);
    const url = pathToFileURL(join(dir, 'sub')).href;
    const b = await openArchive(url);
    expect(b).toBeInstanceOf(LocalStore);
    expect((b as LocalStore).dir).toBe(join(dir, 'sub'));
    expect(b.description).toBe(url);
    expect(await b.list()).toEqual([]);
    await a.close();
    await b.close();
    expect(loaded.s3).toBe(false);
  });

  it('loads the S3 backend for s3:// only, with the options passed through', async () => {
    const s = await openArchive('s3://bucket/some/prefix', {
      s3Endpoint: 'http://user:pw@127.0.0.1:9',
      sse: 'aws:kms',
      sseKmsKeyId: 'alias/x',
      s3: { credentials: { accessKeyId: 'AKID', secretAccessKey: 'the-secret-key' }, maxAttempts: 1, timeoutMs: 1000 },
    });
    expect(loaded.s3).toBe(true);
    expect(s.description).toBe('s3://bucket/some/prefix/');
    const err = await s.head('000000010000000000000001').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).transient).toBe(true);
    expect((err as Error).message).toContain('http://127.0.0.1:9');
    expect((err as Error).message).not.toContain('pw@');
    expect((err as Error).message).not.toContain('the-secret-key');
    await s.close();
  });

  it('refuses a bad URL with a StorageError', async () => {
    await expect(openArchive('ftp://host/x')).rejects.toBeInstanceOf(StorageError);
    await expect(openArchive('s3://bucket/x', { sse: 'AES256', sseKmsKeyId: 'k' })).rejects.toThrow(/needs sse "aws:kms"/);
  });
});
