// An archive in a directory: the archive's policy (storage/archive.ts) over the directory driver
// (storage/drivers/local.ts), which keeps pg_receivewal's layout (X, X.gz, X.zst, X.gz.partial)
// with a checksum record per file in .walstream-meta/. A stored file is never replaced, not even a
// damaged one: ConflictError tells the operator what to move aside (types.ts).
import { Archive } from './archive.js';
import { LocalDriver, type LocalDriverOptions } from './drivers/local.js';
import type { Keyring } from './encryption.js';

export { META_DIR, QUARANTINE_DIR, TEMP_DIR } from './drivers/local.js';

export interface LocalStoreOptions extends LocalDriverOptions {
  /** Encrypt new objects with the first key, decrypt with any (storage/encryption.ts). */
  keyring?: Keyring;
}

export class LocalStore extends Archive {
  /** The archive directory, resolved. */
  readonly dir: string;

  constructor(dir: string, opts: LocalStoreOptions = {}) {
    const driver = new LocalDriver(dir, opts);
    super(driver, opts.keyring ? { keyring: opts.keyring } : {});
    this.dir = driver.dir;
  }
}
