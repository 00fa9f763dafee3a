/**
 * An S3 endpoint for tests.
 *
 *   const s3 = await startS3();          // s3rver in this process, 127.0.0.1, free port, temp dir
 *   new S3Store({ bucket: s3.bucket, prefix: s3.prefix, endpoint: s3.endpoint, credentials: s3.credentials });
 *   await s3.pause(); ... await s3.resume();   // outage: same port, same data
 *   s3.failFor(5000, 500); s3.setLatency(300);  // errors for a while; a slow endpoint
 *   await s3.stop();
 *
 * With WALSTREAM_TEST_S3_ENDPOINT set, startS3() uses that store instead (bucket from
 * WALSTREAM_TEST_S3_BUCKET, credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, region
 * from WALSTREAM_TEST_S3_REGION) under a random prefix that stop() empties. Tests that need
 * to break the server (pause, failNext, the request log) ask for { builtIn: true }.
 *
 * s3rver 3.7 is not a faithful S3; this front end (one http server around s3rver's handler)
 * fills the gaps the archive depends on:
 *  - If-None-Match: * on PUT is ignored by s3rver (it overwrites): emulated here, serialised
 *    per key, answering 412 PreconditionFailed like S3 (switch off with `conditionalWrites`);
 *    s3rver writes objects in place, S3 commits a PUT whole or not at all: so a GET or HEAD of
 *    a key waits for such a PUT in flight, listings leave it out until it is answered, and one
 *    whose client went away before the answer leaves nothing behind;
 *  - ListObjectsV2 crashes with 500 whenever a listing is truncated (its continuation token
 *    uses DES, which OpenSSL 3 in Node 17+ refuses), and s3rver pages in file-name order, not
 *    key order (X.00000028.backup before X): ListObjectsV2 is answered here from s3rver's store,
 *    ordered by key, with a plain continuation token;
 *  - s3rver accepts any SigV4 signature from a known access key (it checks the key id only).
 * It also records every request and can inject HTTP errors and outages.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import http, { IncomingMessage, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { createServer as createNetServer, type Socket } from 'node:net';
import { once } from 'node:events';
import path from 'node:path';
import { DeleteObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { harnessTmpRoot } from './exec.js';

export interface S3RequestRecord {
  method: string;
  /** Path without the query, as sent (percent-encoded). */
  path: string;
  query: string;
  headers: Readonly<Record<string, string | string[] | undefined>>;
}

export interface S3TestServer {
  readonly endpoint: string;
  readonly bucket: string;
  readonly region: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly credentials: { accessKeyId: string; secretAccessKey: string };
  /** Key prefix for this run: "" on a fresh built-in bucket, random on an outside store. */
  readonly prefix: string;
  /** True when the endpoint comes from WALSTREAM_TEST_S3_ENDPOINT. */
  readonly external: boolean;
  /** Built-in only: every request received, oldest first (clear with requests.length = 0). */
  readonly requests: S3RequestRecord[];
  /** Built-in only: whether PUT honours If-None-Match: * (default true; s3rver alone ignores it). */
  conditionalWrites: boolean;
  /** A raw SDK client for this endpoint (the caller destroys it). */
  client(): S3Client;
  /**
   * Built-in only: simulate an outage. 'refuse' closes the port (connections refused, open ones
   * reset); 'hang' keeps accepting but answers nothing until resume(). Data is kept.
   */
  pause(mode?: 'refuse' | 'hang'): Promise<void>;
  /** Built-in only: end an outage: same port, same data; held ('hang') requests are served. */
  resume(): Promise<void>;
  /** Built-in only: answer the next `count` requests with HTTP `status` (default 503 SlowDown). */
  failNext(count: number, status?: number): void;
  /** Built-in only: answer every request with HTTP `status` (default 503) for the next `ms` milliseconds. */
  failFor(ms: number, status?: number): void;
  /** Built-in only: hold every request `ms` milliseconds before serving it (0: no delay), a slow endpoint. */
  setLatency(ms: number): void;
  stop(): Promise<void>;
}

export interface StartS3Options {
  /** Always start the in-process s3rver, even when WALSTREAM_TEST_S3_ENDPOINT is set. */
  builtIn?: boolean;
}

// --- s3rver, typed as far as this file uses it (it ships no types) ---

interface S3rverObject {
  key: string;
  size: number;
  lastModifiedDate: Date;
  metadata: Record<string, string>;
}

interface S3rverStore {
  existsObject(bucket: string, key: string): Promise<boolean>;
  deleteObject(bucket: string, key: string): Promise<void>;
  getBucket(bucket: string): Promise<object | null>;
  listObjects(bucket: string, options: { prefix: string; delimiter: string; startAfter: string; maxKeys: number }): Promise<{ objects: S3rverObject[]; commonPrefixes: string[]; isTruncated: boolean }>;
}

interface S3rverApp {
  store: S3rverStore;
  callback(): (req: IncomingMessage, res: ServerResponse) => void;
  configureBuckets(): Promise<void>;
  on(event: 'error', listener: (err: Error) => void): void;
}

type S3rverCtor = new (opts: { directory: string; silent: boolean; configureBuckets: { name: string; configs: never[] }[] }) => S3rverApp;

interface S3rverAccount {
  createKeyPair(accessKeyId: string, secretAccessKey: string): void;
  revokeAccessKey(accessKeyId: string): void;
}

const require = createRequire(import.meta.url);

// The SDK warns on Node < 22 that its releases after January 2027 will need Node 22; tests
// run on Node 20 on purpose, so keep that advisory out of their output.
process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';

function loadS3rver(): { S3rver: S3rverCtor; account: S3rverAccount } {
  const S3rver = require('s3rver') as S3rverCtor;
  const { DUMMY_ACCOUNT } = require('s3rver/lib/models/account.js') as { DUMMY_ACCOUNT: S3rverAccount };
  return { S3rver, account: DUMMY_ACCOUNT };
}

// --- helpers ---

const REGION = 'us-east-1';

function xmlEscape(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

const ERROR_CODES: Record<number, [string, string]> = {
  400: ['BadRequest', 'Injected bad request.'],
  403: ['AccessDenied', 'Access Denied'],
  404: ['NoSuchKey', 'The specified key does not exist.'],
  412: ['PreconditionFailed', 'At least one of the pre-conditions you specified did not hold'],
  500: ['InternalError', 'We encountered an internal error. Please try again.'],
  503: ['SlowDown', 'Please reduce your request rate.'],
};

/** Answer with an S3 XML error once the request body is consumed. */
function replyError(req: IncomingMessage, res: ServerResponse, status: number, code: string, message: string, extra = ''): void {
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${xmlEscape(message)}</Message>${extra}<RequestId>walstream-test</RequestId></Error>`;
  const send = (): void => {
    if (res.headersSent || res.destroyed) return;
    res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
  if (req.readableEnded) send();
  else {
    req.once('end', send);
    req.resume();
  }
}

function accessKeyOf(req: IncomingMessage): string | undefined {
  const auth = req.headers['authorization'];
  if (typeof auth !== 'string') return undefined;
  return /Credential=([^/]+)\//.exec(auth)?.[1] ?? /^AWS ([^:]+):/.exec(auth)?.[1];
}

/** A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago). */
export async function unusedPort(): Promise<number> {
  const srv = createNetServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

function makeClient(endpoint: string, region: string, credentials: { accessKeyId: string; secretAccessKey: string }): S3Client {
  return new S3Client({ endpoint, region, forcePathStyle: true, credentials, maxAttempts: 2 });
}

const liveDirs = new Set<string>();
let exitHookInstalled = false;

function removeLeftovers(): void {
  for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
  liveDirs.clear();
}

// --- the built-in server ---

async function startBuiltIn(): Promise<S3TestServer> {
  const { S3rver, account } = loadS3rver();
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', removeLeftovers);
  }
  const dir = mkdtempSync(path.join(harnessTmpRoot(), 'walstream-s3-'));
  liveDirs.add(dir);
  const bucket = `walstream-${randomBytes(4).toString('hex')}`;
  const accessKeyId = `WSTEST${randomBytes(6).toString('hex').toUpperCase()}`;
  const secretAccessKey = randomBytes(24).toString('base64url');
  account.createKeyPair(accessKeyId, secretAccessKey);

  const app = new S3rver({ directory: dir, silent: true, configureBuckets: [{ name: bucket, configs: [] }] });
  await app.configureBuckets();
  const serverErrors: Error[] = [];
  // s3rver reports every S3 error (404s included) as an app error; keep them out of the test output.
  app.on('error', (err) => {
    serverErrors.push(err);
  });
  const handle = app.callback();
  const store = app.store;

  const requests: S3RequestRecord[] = [];
  const failures: number[] = [];
  let failWindow: { until: number; status: number } | undefined;
  let latencyMs = 0;
  const held: { req: IncomingMessage; res: ServerResponse }[] = [];
  const locks = new Map<string, Promise<void>>();
  /** Keys of conditional PUTs in flight: not listed until the PUT answered (S3 lists committed objects only). */
  const uncommitted = new Set<string>();
  const sockets = new Set<Socket>();
  let paused: 'refuse' | 'hang' | undefined;
  let stopped = false;

  const withLock = async (id: string, fn: () => Promise<void>): Promise<void> => {
    const prev = locks.get(id) ?? Promise.resolve();
    let release = (): void => {};
    const mine = new Promise<void>((r) => (release = r));
    const chained = prev.then(() => mine);
    locks.set(id, chained);
    await prev;
    try {
      await fn();
    } finally {
      release();
      if (locks.get(id) === chained) locks.delete(id);
    }
  };

  const known = (req: IncomingMessage): boolean => {
    const id = accessKeyOf(req);
    return id === undefined || id === accessKeyId || id === 'S3RVER';
  };

  const listV2 = async (req: IncomingMessage, res: ServerResponse, bucketName: string, q: URLSearchParams): Promise<void> => {
    if (!(await store.getBucket(bucketName))) {
      replyError(req, res, 404, 'NoSuchBucket', 'The specified bucket does not exist', `<BucketName>${xmlEscape(bucketName)}</BucketName>`);
      return;
    }
    const prefix = q.get('prefix') ?? '';
    const delimiter = q.get('delimiter') ?? '';
    const maxKeys = Math.max(1, Math.min(1000, Number(q.get('max-keys') ?? '1000') || 1000));
    const token = q.get('continuation-token');
    const startAfter = token ? Buffer.from(token, 'base64url').toString('utf8') : (q.get('start-after') ?? '');
    // s3rver pages in file-name order ("<key>._S3rver_object"), not key order, so a page
    // boundary can skip keys: take the whole listing, order it by key, and page it here.
    const all = await store.listObjects(bucketName, { prefix, delimiter, startAfter: '', maxKeys: Infinity });
    const entries: { key: string; object?: S3rverObject }[] = [
      ...all.objects.filter((o) => !uncommitted.has(`${bucketName}/${o.key}`)).map((o) => ({ key: o.key, object: o })),
      ...all.commonPrefixes.map((p) => ({ key: p })),
    ]
      .filter((e) => e.key > startAfter)
      .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    const page = entries.slice(0, maxKeys);
    const next = entries.length > maxKeys ? Buffer.from(page[page.length - 1]!.key, 'utf8').toString('base64url') : undefined;
    const parts = [
      `<Name>${xmlEscape(bucketName)}</Name>`,
      `<Prefix>${xmlEscape(prefix)}</Prefix>`,
      delimiter ? `<Delimiter>${xmlEscape(delimiter)}</Delimiter>` : '',
      `<MaxKeys>${maxKeys}</MaxKeys>`,
      `<KeyCount>${page.length}</KeyCount>`,
      `<IsTruncated>${next !== undefined}</IsTruncated>`,
      token ? `<ContinuationToken>${xmlEscape(token)}</ContinuationToken>` : '',
      next ? `<NextContinuationToken>${next}</NextContinuationToken>` : '',
      !token && q.get('start-after') ? `<StartAfter>${xmlEscape(startAfter)}</StartAfter>` : '',
      ...page.map(({ key, object: o }) =>
        o
          ? `<Contents><Key>${xmlEscape(key)}</Key><LastModified>${o.lastModifiedDate.toISOString()}</LastModified>` +
            `<ETag>${xmlEscape(o.metadata['etag'] ?? '""')}</ETag><Size>${o.size}</Size><StorageClass>STANDARD</StorageClass></Contents>`
          : `<CommonPrefixes><Prefix>${xmlEscape(key)}</Prefix></CommonPrefixes>`,
      ),
    ];
    const body = `<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">${parts.join('')}</ListBucketResult>`;
    res.writeHead(200, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };

  const conditionalPut = (req: IncomingMessage, res: ServerResponse, bucketName: string, key: string): Promise<void> =>
    withLock(`${bucketName}/${key}`, async () => {
      if (await store.existsObject(bucketName, key)) {
        replyError(req, res, 412, 'PreconditionFailed', ERROR_CODES[412]![1], '<Condition>If-None-Match</Condition>');
        return;
      }
      // The client may have gone while this request waited for the lock: then there is nothing to serve.
      if (req.socket.destroyed || res.closed) return;
      const id = `${bucketName}/${key}`;
      uncommitted.add(id);
      // Committed (and listed) from the moment the answer is on its way: a client that got it may
      // list at once. One flag decides both, so a listed object is never dropped afterwards.
      const answer = { sent: false, dropped: false };
      res.once('finish', () => {
        if (answer.dropped) return;
        answer.sent = true;
        uncommitted.delete(id);
      });
      try {
        await putAtomically(req, res, bucketName, key, answer);
      } finally {
        uncommitted.delete(id);
      }
    });

  const putAtomically = async (req: IncomingMessage, res: ServerResponse, bucketName: string, key: string, answer: { sent: boolean; dropped: boolean }): Promise<void> => {
    // S3 stores a PUT whole or not at all; s3rver writes in place, and a body cut short leaves it
    // stuck mid-write with the file it may still create later. So s3rver is given only a whole
    // body: read here first, then handed over as a request of its own. A client that goes away
    // before its body is whole leaves nothing behind.
    const body = await wholeBody(req);
    if (body === undefined || res.closed) return;
    const whole = new IncomingMessage(req.socket);
    // complete: a message not marked so resets its socket once it is read to the end.
    Object.assign(whole, {
      complete: true,
      method: req.method,
      url: req.url,
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      httpVersion: req.httpVersion,
      httpVersionMajor: req.httpVersionMajor,
      httpVersionMinor: req.httpVersionMinor,
    });
    whole.push(body);
    whole.push(null);
    const done = Promise.race([once(res, 'close'), once(req.socket, 'close')]);
    // (Koa's handler returns a promise settling when s3rver is done with the request.)
    const handled = Promise.resolve(handle(whole, res) as unknown).catch(() => undefined);
    await done;
    // When the client went away before the answer, drop what s3rver wrote (the key was absent
    // before: If-None-Match) once it is done writing. Reads of the key wait for this lock meanwhile.
    if (!answer.sent) {
      await Promise.race([handled, new Promise((r) => setTimeout(r, 30_000))]);
      // (s3rver may still have answered meanwhile, into the closed connection: then it stands.)
      if (!answer.sent) {
        answer.dropped = true;
        await store.deleteObject(bucketName, key);
      }
    }
  };

  /** A request's whole body, or undefined when the client went away before sending all of it. */
  const wholeBody = (req: IncomingMessage): Promise<Buffer | undefined> =>
    new Promise((resolve) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.once('end', () => resolve(req.complete ? Buffer.concat(chunks) : undefined));
      req.once('error', () => resolve(undefined));
      req.once('close', () => resolve(req.complete ? Buffer.concat(chunks) : undefined));
    });

  const route = (req: IncomingMessage, res: ServerResponse): void => {
    const status = failures.shift() ?? (failWindow !== undefined && Date.now() < failWindow.until ? failWindow.status : undefined);
    if (status !== undefined) {
      const [code, message] = ERROR_CODES[status] ?? ['InjectedError', 'Injected failure.'];
      replyError(req, res, status, code, message);
      return;
    }
    const url = new URL(req.url ?? '/', 'http://localhost');
    const [, bucketPart = '', ...keyParts] = url.pathname.split('/');
    const bucketName = decodeURIComponent(bucketPart);
    const key = decodeURIComponent(keyParts.join('/'));
    const emulated =
      (req.method === 'GET' && bucketName !== '' && key === '' && url.searchParams.get('list-type') === '2') ||
      (req.method === 'PUT' && key !== '' && req.headers['if-none-match'] === '*' && req.headers['x-amz-copy-source'] === undefined && !url.searchParams.has('uploadId') && server.conditionalWrites);
    if (!emulated) {
      // S3 shows a PUT whole or not at all; s3rver writes the object in place, so a read of a key
      // while a (conditional) PUT of it runs waits for that PUT, as if it had come just after.
      const putting = (req.method === 'GET' || req.method === 'HEAD') && key !== '' ? locks.get(`${bucketName}/${key}`) : undefined;
      if (putting) void putting.then(() => handle(req, res));
      else handle(req, res);
      return;
    }
    if (!known(req)) {
      replyError(req, res, 403, 'InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.');
      return;
    }
    const work = req.method === 'PUT' ? conditionalPut(req, res, bucketName, key) : listV2(req, res, bucketName, url.searchParams);
    work.catch((err: unknown) => {
      serverErrors.push(err as Error);
      replyError(req, res, 500, 'InternalError', String((err as Error).message));
    });
  };

  const httpServer = http.createServer((req, res) => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    requests.push({ method: req.method ?? '', path: q < 0 ? url : url.slice(0, q), query: q < 0 ? '' : url.slice(q + 1), headers: { ...req.headers } });
    if (paused === 'hang') {
      held.push({ req, res });
      return;
    }
    if (latencyMs > 0) {
      const t = setTimeout(() => {
        if (paused === 'hang') held.push({ req, res });
        else if (!req.socket.destroyed) route(req, res);
      }, latencyMs);
      res.once('close', () => clearTimeout(t));
      return;
    }
    route(req, res);
  });
  httpServer.keepAliveTimeout = 1000;
  httpServer.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  const listen = async (port: number): Promise<number> => {
    httpServer.listen(port, '127.0.0.1');
    await once(httpServer, 'listening');
    return (httpServer.address() as { port: number }).port;
  };
  const closeListener = async (): Promise<void> => {
    if (!httpServer.listening) return;
    const closed = new Promise<void>((resolve) => httpServer.close(() => resolve()));
    for (const s of sockets) s.destroy();
    await closed;
  };

  const port = await listen(0);
  const endpoint = `http://127.0.0.1:${port}`;
  const credentials = { accessKeyId, secretAccessKey };

  const server: S3TestServer = {
    endpoint,
    bucket,
    region: REGION,
    accessKeyId,
    secretAccessKey,
    credentials,
    prefix: '',
    external: false,
    requests,
    conditionalWrites: true,
    client: () => makeClient(endpoint, REGION, credentials),
    async pause(mode = 'refuse') {
      if (stopped) throw new Error('the S3 test server is stopped');
      if (paused !== undefined) await server.resume();
      paused = mode;
      if (mode === 'refuse') await closeListener();
    },
    async resume() {
      if (stopped) throw new Error('the S3 test server is stopped');
      const was = paused;
      paused = undefined;
      if (was === 'refuse') await listen(port);
      for (const h of held.splice(0)) {
        if (h.req.socket.destroyed) continue;
        route(h.req, h.res);
      }
    },
    failNext(count, status = 503) {
      for (let i = 0; i < count; i++) failures.push(status);
    },
    failFor(ms, status = 503) {
      failWindow = { until: Date.now() + ms, status };
    },
    setLatency(ms) {
      latencyMs = ms;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      for (const h of held.splice(0)) h.res.destroy();
      await closeListener();
      account.revokeAccessKey(accessKeyId);
      rmSync(dir, { recursive: true, force: true });
      liveDirs.delete(dir);
    },
  };
  return server;
}

// --- an outside endpoint ---

async function startExternal(endpoint: string): Promise<S3TestServer> {
  const env = process.env;
  const bucket = env['WALSTREAM_TEST_S3_BUCKET'];
  const accessKeyId = env['AWS_ACCESS_KEY_ID'];
  const secretAccessKey = env['AWS_SECRET_ACCESS_KEY'];
  if (!bucket) throw new Error('WALSTREAM_TEST_S3_ENDPOINT is set but WALSTREAM_TEST_S3_BUCKET is not');
  if (!accessKeyId || !secretAccessKey) throw new Error('WALSTREAM_TEST_S3_ENDPOINT needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY');
  const region = env['WALSTREAM_TEST_S3_REGION'] || env['AWS_REGION'] || REGION;
  const credentials = { accessKeyId, secretAccessKey };
  const prefix = `walstream-test-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}/`;
  const builtInOnly = (what: string): Error => new Error(`${what} needs the built-in s3rver (startS3({ builtIn: true }))`);
  let stopped = false;
  return {
    endpoint,
    bucket,
    region,
    accessKeyId,
    secretAccessKey,
    credentials,
    prefix,
    external: true,
    requests: [],
    conditionalWrites: true,
    client: () => makeClient(endpoint, region, credentials),
    pause: () => Promise.reject(builtInOnly('pause()')),
    resume: () => Promise.reject(builtInOnly('resume()')),
    failNext() {
      throw builtInOnly('failNext()');
    },
    failFor() {
      throw builtInOnly('failFor()');
    },
    setLatency() {
      throw builtInOnly('setLatency()');
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      // Remove everything this run wrote.
      const c = makeClient(endpoint, region, credentials);
      try {
        let token: string | undefined;
        do {
          const page = await c.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
          const keys = (page.Contents ?? []).map((o) => o.Key).filter((k): k is string => k !== undefined);
          for (let i = 0; i < keys.length; i += 16) {
            await Promise.all(keys.slice(i, i + 16).map((Key) => c.send(new DeleteObjectCommand({ Bucket: bucket, Key }))));
          }
          token = page.IsTruncated ? page.NextContinuationToken : undefined;
        } while (token);
      } finally {
        c.destroy();
      }
    },
  };
}

/** Start (or connect to) an S3 endpoint for one test file; stop() it in afterAll. */
export async function startS3(opts: StartS3Options = {}): Promise<S3TestServer> {
  const endpoint = process.env['WALSTREAM_TEST_S3_ENDPOINT'];
  if (endpoint && !opts.builtIn) return startExternal(endpoint);
  return startBuiltIn();
}
