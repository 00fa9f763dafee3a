// The benchmarks' S3 endpoint in a process of its own: test/harness/s3.ts's s3rver front end,
// started here and described on stdout as one JSON line. Out of process, its CPU is measured
// apart from the walstream under test (and it does not share that process's event loop).
// It stops on SIGTERM or SIGINT, or when its stdin closes (the benchmark went away).
import { startS3 } from '../test/harness/s3.js';

export interface S3ServerInfo {
  endpoint: string;
  bucket: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  prefix: string;
}

async function main(): Promise<void> {
  const s3 = await startS3({ builtIn: true });
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void s3.stop().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
  // The request log would grow by one entry per request for the whole benchmark.
  setInterval(() => (s3.requests.length = 0), 1000).unref();
  const info: S3ServerInfo = { endpoint: s3.endpoint, bucket: s3.bucket, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, prefix: s3.prefix };
  process.stdout.write(`${JSON.stringify(info)}\n`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
