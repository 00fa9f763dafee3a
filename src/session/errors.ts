// Errors of a replication connection, keeping the server's SQLSTATE and the command it answered,
// so callers can tell a permanent condition (segment removed, timeline not in history, missing
// slot) from a passing one without reading the message: its text is in the server's lc_messages.

/**
 * The SQLSTATEs walstream acts on (PostgreSQL's src/backend/utils/errcodes.txt). A server error
 * raised without an explicit code (ereport(ERROR, errmsg(...)) only, or elog) carries
 * INTERNAL_ERROR: several walsender conditions share it, so the command and state tell them apart.
 */
export const SQLSTATE = {
  /** errcode_for_file_access() on ENOENT: walsender.c WalSndSegmentOpen's "requested WAL segment ... has already been removed". */
  UNDEFINED_FILE: '58P01',
  /** slot.c ReplicationSlotAcquire / ReplicationSlotDrop: "replication slot ... does not exist". */
  UNDEFINED_OBJECT: '42704',
  /** slot.c ReplicationSlotCreate: "replication slot ... already exists". */
  DUPLICATE_OBJECT: '42710',
  /** walsender.c StartReplication: "cannot use a logical replication slot for physical replication"; slot.c (18+): "can no longer access replication slot". */
  OBJECT_NOT_IN_PREREQUISITE_STATE: '55000',
  /** walsender.c ReadReplicationSlot (15+): "cannot use READ_REPLICATION_SLOT with a logical replication slot". */
  FEATURE_NOT_SUPPORTED: '0A000',
  /** An ereport without errcode: StartReplication's "not in this server's history", "ahead of the WAL flush position", and more. */
  INTERNAL_ERROR: 'XX000',
  INSUFFICIENT_PRIVILEGE: '42501',
  INVALID_PASSWORD: '28P01',
  INVALID_AUTHORIZATION_SPECIFICATION: '28000',
} as const;

/** Where a server error came from, as far as walstream knows. */
export interface ServerErrorContext {
  /** The replication command it answered, by its first word in capitals (START_REPLICATION, TIMELINE_HISTORY, ...). */
  command?: string;
  /** START_REPLICATION only: whether the server had begun streaming (CopyBothResponse) before it failed. */
  streaming?: boolean;
}

export class ServerError extends Error {
  readonly code: string | undefined;
  readonly detail: string | undefined;
  readonly hint: string | undefined;
  /** The replication command the error answered; undefined when it came while connecting. */
  readonly command: string | undefined;
  /** START_REPLICATION: true when the error came after streaming began. */
  readonly streaming: boolean | undefined;
  constructor(message: string, code?: string, detail?: string, hint?: string, context: ServerErrorContext = {}) {
    super(message);
    this.name = 'ServerError';
    this.code = code;
    this.detail = detail;
    this.hint = hint;
    this.command = context.command;
    this.streaming = context.streaming;
  }

  /** The server's message with its DETAIL, for a line to the user (both in the server's language). */
  get withDetail(): string {
    return this.detail ? `${this.message} (${this.detail.replace(/\.$/, '')})` : this.message;
  }
}

/** The first word of a command's text, in capitals: what ServerError.command holds. */
export function commandName(text: string): string {
  return (text.trim().split(/\s/)[0] ?? '').toUpperCase();
}

/** The connection went away (network, server restart): always worth a retry. */
export class ConnectionLostError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConnectionLostError';
  }
}

interface PgLikeError {
  message?: unknown;
  code?: unknown;
  detail?: unknown;
  hint?: unknown;
}

/** `err` as a ServerError (a server's answer) or ConnectionLostError where it is one; `context` says which command it answered. */
export function toServerError(err: unknown, context?: ServerErrorContext): Error {
  if (err instanceof ServerError) {
    return context && err.command === undefined ? new ServerError(err.message, err.code, err.detail, err.hint, context) : err;
  }
  if (err instanceof ConnectionLostError) return err;
  if (err && typeof err === 'object') {
    const e = err as PgLikeError;
    const message = typeof e.message === 'string' ? e.message : String(err);
    if (typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) {
      return new ServerError(message, e.code, typeof e.detail === 'string' ? e.detail : undefined, typeof e.hint === 'string' ? e.hint : undefined, context);
    }
    if (/Connection terminated|ECONNRESET|EPIPE|socket hang up|ETIMEDOUT|timeout expired/i.test(message)) {
      return new ConnectionLostError(message);
    }
    return err instanceof Error ? err : new Error(message);
  }
  return new Error(String(err));
}

/** The connection could not be set up on the client's side or was refused before authentication for a non-server reason (TLS, missing password). */
export class ConnectionSetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConnectionSetupError';
  }
}
