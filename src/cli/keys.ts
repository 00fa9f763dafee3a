// Client-side encryption keys on the command line (storage/encryption.ts): --encryption-key-file
// (also WALSTREAM_ENCRYPTION_KEY_FILE) or the WALSTREAM_ENCRYPTION_KEY variable, never a key as
// an argument (it would show in ps and shell history). Only the file's path is ever printed.
// The two options themselves are declared in options.ts.
import type { Keyring } from '../storage/encryption.js';
import type { ArchiveStore } from '../storage/types.js';

export const KEY_VARIABLE = 'WALSTREAM_ENCRYPTION_KEY';

export interface EncryptionCliOptions {
  encryptionKeyFile?: string;
  encryptionRequired?: boolean;
}

/** The keyring the options and the environment give, or undefined (no encryption). */
export async function keyringFromOptions(opts: EncryptionCliOptions, env: NodeJS.ProcessEnv = process.env): Promise<Keyring | undefined> {
  if (!encryptionConfigured(opts, env) && opts.encryptionRequired !== true) return undefined;
  const { loadKeyring } = await import('../storage/encryption.js');
  return loadKeyring({ keyFile: opts.encryptionKeyFile, keyVariable: env[KEY_VARIABLE], requireEncrypted: opts.encryptionRequired === true });
}

/** Whether any key is configured (without reading it). */
export function encryptionConfigured(opts: EncryptionCliOptions, env: NodeJS.ProcessEnv = process.env): boolean {
  return (opts.encryptionKeyFile !== undefined && opts.encryptionKeyFile !== '') || (env[KEY_VARIABLE] !== undefined && env[KEY_VARIABLE] !== '');
}

/**
 * Open an archive for reading with the key options. Plain objects in an archive recorded as
 * encrypted (its identity record or marker, read only when a plain object comes back) are refused:
 * always for the operations commands, only with a key for fetch and its worker (one request per
 * file otherwise).
 */
export async function openReadArchive(url: string, opts: { s3Endpoint?: string } & EncryptionCliOptions, guard: 'always' | 'with-key'): Promise<ArchiveStore> {
  const [{ openArchive }, { EncryptedArchiveGuard }] = await Promise.all([import('../storage/open.js'), import('../archive/identity.js')]);
  const keyring = await keyringFromOptions(opts);
  const store = await openArchive(url, { s3Endpoint: opts.s3Endpoint, keyring });
  return guard === 'always' || keyring ? new EncryptedArchiveGuard(store) : store;
}
