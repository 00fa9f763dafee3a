// Fault 5: the same segment pushed by two `walstream push` processes at once (an archiver retried
// while the first attempt still runs, two servers sharing an archive), into a local directory
// and into S3, with seeded random compression choices and start skew: both exit 0 for identical
// content and the archive holds exactly one copy, identical to the segment. As a control, two
// pushes of different bytes under one name: exactly one wins (exit 0), the other exits 1 and its
// copy is kept in quarantine, never over the winner's.
import { beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, type CliResult } from '../support/cli.js';
import { fixtureSegment, FIXTURE_NAME } from '../unit/fixture.js';
import type { ArchiveStore } from '../../src/storage/types.js';
import { faultSuite, sleep, tail } from './helpers.js';
import { iterations, recordRow } from './report.js';

const RACES = iterations(3, 20);
const CONFLICTS = iterations(1, 3);

describe('fault: one segment pushed by two processes at once', () => {
  const suite = faultSuite('push-race', { s3: true });
  const { cleanup } = suite;
  let walDir: string;
  const segment = fixtureSegment();
  /** The same name with other bytes (a record's byte, not a page header: push's checks pass). */
  const other = Buffer.from(segment);
  other[100_000] ^= 0xff;

  beforeAll(() => {
    walDir = cleanup.dir('push-src');
    mkdirSync(join(walDir, 'a'));
    mkdirSync(join(walDir, 'b'));
    writeFileSync(join(walDir, 'a', FIXTURE_NAME), segment);
    writeFileSync(join(walDir, 'b', FIXTURE_NAME), other);
  });

  /** Two pushes of `files` into `archive`, the second started `skew` ms after the first. */
  const race = async (archive: string, files: [string, string], compress: [string, string], skew: number): Promise<[CliResult, CliResult]> => {
    const push = (file: string, z: string): Promise<CliResult> => runCli(['push', file, '--archive', archive, '--s3-endpoint', suite.s3.endpoint, '-Z', z], { env: suite.s3Env(), timeoutMs: 60_000 });
    const first = push(files[0], compress[0]);
    await sleep(skew);
    const second = push(files[1], compress[1]);
    return Promise.all([first, second]);
  };

  for (const backend of ['local', 's3'] as const) {
    it(
      `two pushes of one segment at once, ${backend === 'local' ? 'local directory' : 'S3'}`,
      async () => {
        const { s3, rng } = suite;
        const losses: string[] = [];
        let bytesVerified = 0;
        const archiveFor = (i: string): string => (backend === 'local' ? cleanup.dir(`push-${i}`) : `s3://${s3.bucket}/${s3.prefix}race-${i}/`);
        const open = (url: string): Promise<ArchiveStore> => suite.openStore(url);
        /** Every name the archive holds for the segment, raw (a local directory's files, S3 keys). */
        const copies = async (url: string, store: ArchiveStore): Promise<string[]> => {
          // (Besides the archive's identity record, which the first push writes.)
          if (backend === 'local') return readdirSync(url).filter((n) => n !== '.walstream-meta' && n !== 'walstream.json');
          return (await store.list()).map((o) => o.name).concat((await store.list('quarantine/')).map((o) => o.name));
        };

        for (let i = 1; i <= RACES; i++) {
          const url = archiveFor(`same-${i}`);
          const compress: [string, string] = [rng.pick(['none', 'gzip']), rng.pick(['none', 'gzip'])];
          const skew = rng.int(0, 40);
          const file = join(walDir, 'a', FIXTURE_NAME);
          const [a, b] = await race(url, [file, file], compress, skew);
          const what = `race ${i} (${compress.join('/')}, ${skew} ms apart)`;
          if (a.code !== 0 || b.code !== 0) losses.push(`${what}: exit ${a.code} and ${b.code}:\n${tail(a.stderr)}\n${tail(b.stderr)}`);
          const store = await open(url);
          const held = await copies(url, store);
          // One object; in a directory the file of whichever push won (X, or X.gz for gzip).
          const acceptable = backend === 's3' ? [FIXTURE_NAME] : compress.map((z) => `${FIXTURE_NAME}${z === 'gzip' ? '.gz' : ''}`);
          if (held.length !== 1 || !acceptable.includes(held[0]!)) {
            losses.push(`${what}: the archive holds ${JSON.stringify(held)}, not exactly one copy`);
          }
          const got = (await store.get(FIXTURE_NAME)).data;
          if (got.equals(segment)) bytesVerified += got.length;
          else losses.push(`${what}: the archived copy differs from the segment`);
        }

        for (let i = 1; i <= CONFLICTS; i++) {
          const url = archiveFor(`conflict-${i}`);
          const skew = rng.int(0, 20);
          const [a, b] = await race(url, [join(walDir, 'a', FIXTURE_NAME), join(walDir, 'b', FIXTURE_NAME)], ['none', 'none'], skew);
          const what = `conflict ${i} (${skew} ms apart)`;
          if ([a.code, b.code].sort().join() !== '0,1') {
            losses.push(`${what}: exit ${a.code} and ${b.code}, expected one 0 and one 1`);
            continue;
          }
          const store = await open(url);
          const winner = a.code === 0 ? segment : other;
          const loser = a.code === 0 ? other : segment;
          const got = (await store.get(FIXTURE_NAME)).data;
          if (got.equals(winner)) bytesVerified += got.length;
          else losses.push(`${what}: the archive holds the loser's bytes under ${FIXTURE_NAME}`);
          const quarantined = await store.list('quarantine/');
          if (quarantined.length !== 1 || !(await store.get(quarantined[0]!.name)).data.equals(loser)) {
            losses.push(`${what}: quarantine holds ${JSON.stringify(quarantined.map((q) => q.name))}, not the loser's copy`);
          }
          expect((a.code === 0 ? b : a).stderr).toMatch(/different contents/);
        }
        recordRow({ fault: `two pushes at once: ${backend === 'local' ? 'local directory' : 'S3'}`, iterations: RACES + CONFLICTS, bytesVerified, losses: losses.length });
        expect(losses).toEqual([]);
      },
      120_000 + (RACES + CONFLICTS) * 10_000,
    );
  }
});
