// S3 multipart uploads that a killed writer started and never completed: an upload is started
// under the archive's prefix and its first part sent, then nothing more (the writer is gone).
// status must report it and cleanup abort it once idle for the leftover age, leaving uploads
// outside the prefix alone.
//
// The built-in S3 server (s3rver 3.7) keeps such uploads (CreateMultipartUpload and UploadPart
// work, their parts stay on its disk) but implements neither ListMultipartUploads (501
// NotImplemented), nor ListParts or AbortMultipartUpload (405 MethodNotAllowed). Against it this
// file proves what walstream does with a store that cannot list them: status and verify say so
// and name the lifecycle rule AbortIncompleteMultipartUpload, cleanup warns and still removes the
// WAL it was asked to, nothing fails. Against a store that lists them (WALSTREAM_TEST_S3_ENDPOINT:
// AWS, MinIO...) the same tests check the full path: reported with its bytes, not removable while
// young, aborted by cleanup once idle for --leftover-age, the upload outside the prefix untouched.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AbortMultipartUploadCommand, CreateMultipartUploadCommand, ListPartsCommand, UploadPartCommand, type S3Client } from '@aws-sdk/client-s3';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { runCli } from '../support/cli.js';
import { S3Store } from '../../src/storage/s3.js';
import { archiveStatus, formatStatus } from '../../src/ops/status.js';
import { verifyArchive } from '../../src/ops/verify.js';
import { cleanupArchive } from '../../src/ops/cleanup.js';
import { FIXTURE_NAME, fixtureSegment } from '../unit/fixture.js';

const PART = 5 * 1024 * 1024;
const HOUR = 3600_000;
const INTERRUPTED = '000000010000000000000008';

describe('S3: multipart uploads of killed writers', () => {
  let s3: S3TestServer;
  let client: S3Client;
  let store: S3Store;
  let prefix: string;
  /** Whether the store lists multipart uploads (s3rver does not). */
  let lists: boolean;
  const started: { key: string; id: string }[] = [];

  const env = (): Record<string, string> => ({ AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region });

  /** What a writer killed after its first part leaves: an upload begun, one part, never completed. */
  const interruptedUpload = async (key: string): Promise<string> => {
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: s3.bucket, Key: key }));
    await client.send(new UploadPartCommand({ Bucket: s3.bucket, Key: key, UploadId: UploadId!, PartNumber: 1, Body: Buffer.alloc(PART, 7) }));
    started.push({ key, id: UploadId! });
    return UploadId!;
  };

  beforeAll(async () => {
    s3 = await startS3();
    lists = s3.external;
    client = s3.client();
    prefix = `${s3.prefix}leftovers/`;
    store = new S3Store({ bucket: s3.bucket, prefix, endpoint: s3.endpoint, region: s3.region, credentials: s3.credentials });
    await store.put(FIXTURE_NAME, fixtureSegment());
    await interruptedUpload(`${prefix}${INTERRUPTED}`);
    await interruptedUpload(`${s3.prefix}elsewhere/${INTERRUPTED}`);
  });
  afterAll(async () => {
    if (lists) {
      for (const u of started) await client.send(new AbortMultipartUploadCommand({ Bucket: s3.bucket, Key: u.key, UploadId: u.id })).catch(() => undefined);
    }
    client?.destroy();
    await store?.close();
    await s3?.stop();
  });

  it('the interrupted upload is there on the server, and never listed as an object', async () => {
    expect((await store.list()).map((o) => o.name)).toEqual([FIXTURE_NAME]);
    expect(await store.head(INTERRUPTED)).toBeUndefined();
    if (lists) {
      const parts = await client.send(new ListPartsCommand({ Bucket: s3.bucket, Key: started[0]!.key, UploadId: started[0]!.id }));
      expect(parts.Parts?.map((p) => p.Size)).toEqual([PART]);
    } else {
      // s3rver keeps it: the upload id is still accepted for another part.
      const more = await client.send(new UploadPartCommand({ Bucket: s3.bucket, Key: started[0]!.key, UploadId: started[0]!.id, PartNumber: 2, Body: Buffer.alloc(10) }));
      expect(more.ETag).toBeDefined();
    }
  });

  it('status and verify report it (or that this store cannot list such uploads)', async () => {
    const scan = await store.scanLeftovers();
    const status = await archiveStatus({ store });
    const verify = await verifyArchive({ store });
    expect(verify.ok).toBe(true);
    if (lists) {
      expect(scan.unavailable).toBeUndefined();
      expect(scan.leftovers).toEqual([
        expect.objectContaining({ name: INTERRUPTED, kind: 'multipart-upload', bytes: PART, state: 'recent', writer: undefined, upload: { key: started[0]!.key, id: started[0]!.id } }),
      ]);
      expect(status.leftovers).toMatchObject({ count: 1, uploads: 1, bytes: PART, removable: 0, inUse: 1, unavailable: null });
      expect(formatStatus(status)).toMatch(/^leftovers {3}1 incomplete multipart upload, 5\.0 MB: 1 kept/m);
      expect(verify.leftovers).toMatchObject({ count: 1, uploads: 1 });
      // Idle for longer than the leftover age: removable.
      expect((await store.scanLeftovers({ now: new Date(Date.now() + 2 * HOUR) })).leftovers[0]!.state).toBe('stale');
    } else {
      expect(scan.leftovers).toEqual([]);
      expect(scan.unavailable).toMatch(/does not list incomplete multipart uploads \(NotImplemented, HTTP 501\): a bucket lifecycle rule AbortIncompleteMultipartUpload removes those of killed writers/);
      expect(status.leftovers).toMatchObject({ count: 0, unavailable: scan.unavailable });
      expect(formatStatus(status)).toMatch(/^leftovers {3}s3:\/\/.* does not list incomplete multipart uploads .*AbortIncompleteMultipartUpload/m);
      expect(verify.notes).toContain(scan.unavailable);
    }
  });

  it('cleanup aborts it once idle for the leftover age (or warns that it cannot), and still removes the WAL asked for', async () => {
    const young = await cleanupArchive({ store, rule: undefined, dryRun: false });
    expect(young.leftovers.removed).toEqual([]);
    const warnings: string[] = [];
    const log = { info: () => undefined, verbose: () => undefined, warn: (m: string) => warnings.push(m), error: (m: string) => warnings.push(m) } as unknown as Parameters<typeof cleanupArchive>[0]['log'];
    const res = await cleanupArchive({ store, rule: { kind: 'older-than', cutoff: new Date(Date.now() + HOUR) }, dryRun: false, log, leftoverAgeMs: 1 });
    if (lists) {
      expect(res.leftovers.removed.map((l) => l.name)).toEqual([INTERRUPTED]);
      expect(res.leftovers.failed).toEqual([]);
      await expect(client.send(new ListPartsCommand({ Bucket: s3.bucket, Key: started[0]!.key, UploadId: started[0]!.id }))).rejects.toMatchObject({ name: 'NoSuchUpload' });
      // The upload outside the archive's prefix is not the archive's: untouched.
      const other = await client.send(new ListPartsCommand({ Bucket: s3.bucket, Key: started[1]!.key, UploadId: started[1]!.id }));
      expect(other.Parts).toHaveLength(1);
      expect((await store.scanLeftovers()).leftovers).toEqual([]);
    } else {
      expect(res.leftovers.removed).toEqual([]);
      expect(res.leftovers.unavailable).toMatch(/AbortIncompleteMultipartUpload/);
      expect(warnings.some((w) => /does not list incomplete multipart uploads/.test(w))).toBe(true);
    }
    // The archive's only segment is its newest: kept, whatever the rule.
    expect((await store.list()).map((o) => o.name)).toEqual([FIXTURE_NAME]);
  });

  it('the CLI: status --json and cleanup --json (the all-zero %r form) say the same', async () => {
    const url = `s3://${s3.bucket}/${prefix}`;
    const upload = await interruptedUpload(`${prefix}000000010000000000000009`);
    const status = await runCli(['status', '--archive', url, '--s3-endpoint', s3.endpoint, '--json'], { env: env() });
    expect(status.code, status.stderr).toBe(0);
    const left = (JSON.parse(status.stdout) as { leftovers: { count: number; uploads: number; bytes: number; unavailable: string | null } }).leftovers;
    await new Promise((r) => setTimeout(r, 1500));
    const cleanup = await runCli(['cleanup', '000000000000000000000000', '--archive', url, '--s3-endpoint', s3.endpoint, '--json', '--leftover-age', '1s'], { env: env() });
    expect(cleanup.code, cleanup.stderr).toBe(0);
    const out = JSON.parse(cleanup.stdout) as { count: number; leftovers: { removed: string[]; count: number; unavailable: string | null }; warnings: string[] };
    expect(out.count).toBe(0);
    if (lists) {
      expect(left).toMatchObject({ count: 1, uploads: 1, bytes: PART, unavailable: null });
      expect(out.leftovers).toMatchObject({ removed: ['000000010000000000000009'], count: 1, unavailable: null });
      await expect(client.send(new ListPartsCommand({ Bucket: s3.bucket, Key: `${prefix}000000010000000000000009`, UploadId: upload }))).rejects.toMatchObject({ name: 'NoSuchUpload' });
    } else {
      expect(left).toMatchObject({ count: 0, unavailable: expect.stringMatching(/NotImplemented, HTTP 501/) });
      expect(out.leftovers).toMatchObject({ removed: [], count: 0, unavailable: expect.stringMatching(/AbortIncompleteMultipartUpload/) });
      expect(out.warnings).toContain(out.leftovers.unavailable);
      expect(cleanup.stderr).toMatch(/does not list incomplete multipart uploads/);
    }
  });
});
