/**
 * An Azure Blob Storage endpoint for tests: Azurite (npm `azurite`, Microsoft's emulator) in a
 * child process on a free 127.0.0.1 port, its blobs in a temp directory so that a stop and a
 * start keep them (an outage: pause() then resume()).
 *
 *   const az = await startAzurite();
 *   new AzureStore({ container: az.container, prefix: 'p/', connectionString: az.connectionString });
 *   await az.pause(); ... await az.resume();   // the emulator stopped, then started again: same port, same blobs
 *   await az.stop();                            // stopped, its directory removed
 *
 * The account is Azurite's well-known development account (devstoreaccount1 and its published
 * key); a fresh container is created for each start.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlobServiceClient } from '@azure/storage-blob';
import { harnessTmpRoot } from './exec.js';
import { unusedPort } from './s3.js';

export const AZURITE_ACCOUNT = 'devstoreaccount1';
/** Azurite's published development key (the same in every installation; not a secret). */
export const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

export interface AzuriteServer {
  readonly port: number;
  /** The blob endpoint with the account: http://127.0.0.1:PORT/devstoreaccount1 */
  readonly endpoint: string;
  readonly account: string;
  readonly accountKey: string;
  /** AZURE_STORAGE_CONNECTION_STRING for this emulator. */
  readonly connectionString: string;
  /** A container created for this run. */
  readonly container: string;
  /** A raw SDK client for the emulator. */
  client(): BlobServiceClient;
  /** Create another container. */
  createContainer(name: string): Promise<void>;
  /**
   * Stop the emulator (SIGTERM: connections in flight are cut, and it saves its state as it goes;
   * a SIGKILL would lose blobs Azurite had acknowledged but not yet saved, which Azure never does).
   * Its blobs stay on disk.
   */
  pause(): Promise<void>;
  /** Start it again on the same port over the same blobs. */
  resume(): Promise<void>;
  stop(): Promise<void>;
}

async function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: `/${AZURITE_ACCOUNT}?comp=list`, timeout: 1000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => {
      req.destroy();
      resolve(false);
    });
  });
}

export async function startAzurite(): Promise<AzuriteServer> {
  const main = path.join(path.dirname(createRequire(import.meta.url).resolve('azurite/package.json')), 'dist', 'src', 'blob', 'main.js');
  const dir = mkdtempSync(path.join(harnessTmpRoot(), 'azurite-'));
  const port = await unusedPort();
  let child: ChildProcess | undefined;
  let output = '';

  const launch = async (): Promise<void> => {
    const p = spawn(process.execPath, [main, '--blobHost', '127.0.0.1', '--blobPort', String(port), '--location', dir, '--skipApiVersionCheck', '--disableTelemetry', '--silent'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = p;
    p.stdout!.on('data', (b: Buffer) => (output = (output + b.toString()).slice(-4000)));
    p.stderr!.on('data', (b: Buffer) => (output = (output + b.toString()).slice(-4000)));
    const deadline = Date.now() + 30_000;
    while (!(await answers(port))) {
      if (p.exitCode !== null || Date.now() > deadline) {
        p.kill('SIGKILL');
        throw new Error(`Azurite did not start on port ${port} (exit ${p.exitCode}): ${output}`);
      }
      await sleep(100);
    }
  };
  const kill = async (): Promise<void> => {
    const p = child;
    child = undefined;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    p.kill('SIGTERM');
    const forced = setTimeout(() => p.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(forced);
  };

  await launch();
  const endpoint = `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
  const connectionString = `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=${endpoint};`;
  const client = (): BlobServiceClient => BlobServiceClient.fromConnectionString(connectionString, { retryOptions: { maxTries: 2 } });
  const container = `walstream-${randomBytes(4).toString('hex')}`;
  const createContainer = async (name: string): Promise<void> => {
    await client().getContainerClient(name).createIfNotExists();
  };
  try {
    await createContainer(container);
  } catch (err) {
    await kill();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    port,
    endpoint,
    account: AZURITE_ACCOUNT,
    accountKey: AZURITE_KEY,
    connectionString,
    container,
    client,
    createContainer,
    pause: kill,
    // a resume while it runs is nothing: a second emulator on the port would leave the first behind
    resume: async () => {
      if (child && child.exitCode === null) return;
      await launch();
    },
    stop: async () => {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
