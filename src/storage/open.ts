// Turn an archive location as a user writes it (a directory path, file:///path, s3://bucket/prefix,
// azure://container/prefix) into an ArchiveStore. The S3 and Azure SDKs are loaded only for their
// URLs, so a local archive starts fast.
import { parseArchiveUrl } from './location.js';
import { LocalStore } from './local.js';
import type { ArchiveStore } from './types.js';
import type { S3StoreOptions, ServerSideEncryption } from './s3.js';
import type { AzureStoreOptions } from './azure.js';
import type { Keyring } from './encryption.js';

export interface OpenArchiveOptions {
  /** S3 endpoint URL (S3-compatible stores); default AWS_ENDPOINT_URL or AWS. */
  s3Endpoint?: string;
  /** Path-style S3 URLs (default: true with a custom endpoint). */
  s3ForcePathStyle?: boolean;
  sse?: ServerSideEncryption;
  sseKmsKeyId?: string;
  /** Further S3Store settings (timeouts, retries, credentials...). */
  s3?: Omit<S3StoreOptions, 'bucket' | 'prefix'>;
  /** Azure settings (credentials, timeouts...); by default from the AZURE_STORAGE_* variables. */
  azure?: Omit<AzureStoreOptions, 'container' | 'prefix'>;
  /** Client-side encryption keys (storage/encryption.ts): new objects are encrypted, encrypted ones authenticated. */
  keyring?: Keyring;
}

export { parseArchiveUrl, type ArchiveLocation } from './location.js';

/** Open the archive at `url`: a directory path, file:///path, s3://bucket/prefix or azure://container/prefix. */
export async function openArchive(url: string, opts: OpenArchiveOptions = {}): Promise<ArchiveStore> {
  const loc = parseArchiveUrl(url);
  if (loc.kind === 'local') return new LocalStore(loc.path, { description: url, ...(opts.keyring ? { keyring: opts.keyring } : {}) });
  if (loc.kind === 'azure') {
    const { AzureStore } = await import('./azure.js');
    return new AzureStore({ ...opts.azure, container: loc.container, prefix: loc.prefix, ...(opts.keyring ? { keyring: opts.keyring } : {}) });
  }
  const { S3Store } = await import('./s3.js');
  return new S3Store({
    ...opts.s3,
    bucket: loc.bucket,
    prefix: loc.prefix,
    ...(opts.s3Endpoint !== undefined ? { endpoint: opts.s3Endpoint } : {}),
    ...(opts.s3ForcePathStyle !== undefined ? { forcePathStyle: opts.s3ForcePathStyle } : {}),
    ...(opts.sse !== undefined ? { sse: opts.sse } : {}),
    ...(opts.sseKmsKeyId !== undefined ? { sseKmsKeyId: opts.sseKmsKeyId } : {}),
    ...(opts.keyring ? { keyring: opts.keyring } : {}),
  });
}
