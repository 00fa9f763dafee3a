// An archive in an Azure Blob Storage container: the archive's policy (storage/archive.ts) over
// the Azure driver (storage/drivers/azure.ts), one block blob per WAL file under the prefix, its
// record in blob metadata, conditional creates (If-None-Match: *). A damaged copy found under a
// name is kept in quarantine/ and replaced with the verified one, as on S3 (types.ts).
import { Archive } from './archive.js';
import { AzureDriver, type AzureDriverOptions } from './drivers/azure.js';
import type { Keyring } from './encryption.js';

export interface AzureStoreOptions extends AzureDriverOptions {
  /** Client-side encryption: new objects with the first key, reads with any (storage/encryption.ts). */
  keyring?: Keyring;
}

export class AzureStore extends Archive {
  readonly container: string;
  /** The blob name prefix, "" or ending in "/". */
  readonly prefix: string;

  constructor(opts: AzureStoreOptions) {
    const driver = new AzureDriver(opts);
    super(driver, opts.keyring ? { keyring: opts.keyring } : {});
    this.container = driver.container;
    this.prefix = driver.prefix;
  }
}
