// npm run first-run — a first real job on a fresh machine: start a throwaway PostgreSQL primary on
// a free loopback port, write some data, stream its WAL with `walstream receive` to an end
// position, and check every received segment against the server's own pg_wal. Cleans up after.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../test/harness/pg.js';
import { runCli } from '../test/support/cli.js';

async function main(): Promise<void> {
  console.log('starting a throwaway PostgreSQL primary...');
  const primary = await PgCluster.create({ name: 'first-run' });
  const dir = mkdtempSync(join(tmpdir(), 'walstream-first-run-'));
  try {
    console.log(`primary: PostgreSQL ${primary.version} on 127.0.0.1:${primary.port}`);
    await primary.query("select pg_create_physical_replication_slot('first_run', true)");
    await primary.query('create table accounts as select g as id, 100 as balance from generate_series(1, 50000) g');
    const endpos = await primary.currentLsn();
    const args = ['receive', '-D', dir, '-d', primary.connectionString(), '-S', 'first_run', '-E', endpos, '-v'];
    console.log(`\n$ walstream ${args.join(' ')}`);
    const res = await runCli(args);
    process.stdout.write(res.stderr);
    if (res.code !== 0) throw new Error(`walstream receive exited with ${res.code}`);
    const files = readdirSync(dir).sort();
    let same = 0;
    for (const f of files.filter((n) => /^[0-9A-F]{24}$/.test(n))) {
      if (readFileSync(join(dir, f)).equals(readFileSync(join(primary.walDir, f)))) same++;
      else throw new Error(`${f} differs from the server's copy`);
    }
    console.log(`\nreceived into ${dir}:\n  ${files.join('\n  ')}`);
    console.log(`\n${same} complete segments are byte-identical to the server's pg_wal; the .partial holds WAL up to ${endpos}.`);
  } finally {
    await primary.destroy();
    rmSync(dir, { recursive: true, force: true });
    console.log('cleaned up the throwaway server and directory.');
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
