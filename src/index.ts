// Library entry: the layers for programs that embed walstream.
export * from './wal/index.js';
export * from './protocol/index.js';
export { ReplicationConnection } from './session/connection.js';
export { buildClientConfig, parseKeywordValue, type ConnectionOptions } from './session/conninfo.js';
export { runStream, type StreamCtl, type WalSink } from './session/stream.js';
export { WalDirSink, WalValidationError, type WalDirSinkOptions } from './sink/wal-dir.js';
export { findStreamingStart } from './sink/scan.js';
export { receive, type ReceiveOptions } from './commands/receive.js';
export { readTar, TarError, type TarEntry, type TarReadOptions } from './backup/tar.js';
export { parseManifest, ManifestVerifier, ManifestError, verifyTarEntries, tablespacePrefix, type BackupManifest, type ManifestFile, type VerifyProblem, type VerifyResult } from './backup/manifest.js';
export { crc32c } from './util/crc32c.js';
export { restoreBackup, RestoreError, type RestoreOptions, type RestoreResult, type RecoveryTarget } from './backup/restore.js';
export { restore, type RestoreCommandOptions } from './commands/restore.js';
export { backup, listArchiveBackups, removeInterruptedBackups, BackupError, type BackupOptions, type BackupResult, type BackupListing } from './commands/backup.js';
export { startBaseBackup, BaseBackupRun, type BaseBackupStart, type BackupArchiveStream } from './session/basebackup.js';
