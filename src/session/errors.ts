// Errors of a replication connection, keeping the server's SQLSTATE so callers can tell a
// permanent condition (segment removed, timeline not in history, missing slot) from a passing one.

export class ServerError extends Error {
  readonly code: string | undefined;
  readonly detail: string | undefined;
  readonly hint: string | undefined;
  constructor(message: string, code?: string, detail?: string, hint?: string) {
    super(message);
    this.name = 'ServerError';
    this.code = code;
    this.detail = detail;
    this.hint = hint;
  }
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

export function toServerError(err: unknown): Error {
  if (err instanceof ServerError || err instanceof ConnectionLostError) return err;
  if (err && typeof err === 'object') {
    const e = err as PgLikeError;
    const message = typeof e.message === 'string' ? e.message : String(err);
    if (typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) {
      return new ServerError(message, e.code, typeof e.detail === 'string' ? e.detail : undefined, typeof e.hint === 'string' ? e.hint : undefined);
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
