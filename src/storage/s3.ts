// An archive in an S3 bucket (AWS or any S3-compatible store): the archive's policy
// (storage/archive.ts) over the S3 driver (storage/drivers/s3.ts), one object per WAL file under
// the prefix, its record in object metadata, conditional PUTs (If-None-Match: *). A damaged copy
// found under a name is kept in quarantine/ and replaced with the verified one (types.ts).
import { Archive } from './archive.js';
import { S3Driver, type S3DriverOptions } from './drivers/s3.js';
import type { Keyring } from './encryption.js';

export { META_COMPRESSION, META_SHA256, META_SIZE, type S3Credentials, type ServerSideEncryption } from './drivers/s3.js';

export interface S3StoreOptions extends S3DriverOptions {
  /** Client-side encryption: new objects with the first key, reads with any (storage/encryption.ts). */
  keyring?: Keyring;
}

export class S3Store extends Archive {
  readonly bucket: string;
  /** The key prefix, "" or ending in "/". */
  readonly prefix: string;

  constructor(opts: S3StoreOptions) {
    const driver = new S3Driver(opts);
    super(driver, opts.keyring ? { keyring: opts.keyring } : {});
    this.bucket = driver.bucket;
    this.prefix = driver.prefix;
  }
}
