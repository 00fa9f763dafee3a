import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { Command, Option } from 'commander';
import { buildProgram } from '../../src/cli/main.js';
import { packageVersion } from '../../src/cli/options.js';

function command(program: Command, name: string): Command {
  const cmd = program.commands.find((c) => c.name() === name);
  if (!cmd) throw new Error(`no command ${name}`);
  return cmd;
}

function option(cmd: Command, long: string): Option | undefined {
  return cmd.options.find((o) => o.long === long);
}

describe('the command line option table', () => {
  const program = buildProgram();
  const visible = program.commands.filter((c) => c.name() !== 'fetch-prefetch');

  it("the version is package.json's", () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(packageVersion()).toBe(pkg.version);
    expect(program.version()).toBe(pkg.version);
  });

  it('each shared option has one help text wherever it appears (--archive: what the command does with it, then one text)', () => {
    const shared = ['--s3-endpoint', '--encryption-key-file', '--encryption-required', '--dbname', '--host', '--port', '--username', '--metrics-listen'];
    for (const long of shared) {
      const texts = new Set(program.commands.map((c) => option(c, long)?.description).filter((d) => d !== undefined));
      expect(texts.size, long).toBe(1);
    }
    const archive = program.commands.map((c) => option(c, '--archive')).filter((o) => o !== undefined);
    expect(archive.map((o) => o.envVar)).toEqual(archive.map(() => 'WALSTREAM_ARCHIVE'));
    expect(new Set(archive.map((o) => o.description.replace(/^.*?: /, ''))).size).toBe(1);
    for (const name of ['receive', 'push', 'fetch', 'serve', 'status', 'verify', 'cleanup']) expect(option(command(program, name), '--archive'), name).toBeDefined();
  });

  it('defaults show as they are typed, never as JSON', () => {
    for (const cmd of program.commands) {
      const help = cmd.helpInformation();
      expect(help, cmd.name()).not.toMatch(/default: \{/);
    }
    const receive = command(program, 'receive').helpInformation().replace(/\s+/g, ' ');
    for (const d of ['default: none', 'default: 10,', 'default: 60,', 'default: 5,', 'default: 1GB']) expect(receive).toContain(d);
    expect(command(program, 'push').helpInformation().replace(/\s+/g, ' ')).toContain('default: none');
  });

  it("options of the visible commands come from WALSTREAM_ variables; the hidden worker's do not", () => {
    expect(option(command(program, 'receive'), '--spool-max')?.envVar).toBe('WALSTREAM_SPOOL_MAX');
    expect(option(command(program, 'push'), '--compress')?.envVar).toBe('WALSTREAM_COMPRESS');
    expect(option(command(program, 'status'), '--port')?.envVar).toBe('WALSTREAM_PORT');
    expect(option(command(program, 'fetch-prefetch'), '--spool')?.envVar).toBeUndefined();
    for (const cmd of visible) expect(option(cmd, '--s3-endpoint')?.envVar ?? 'AWS_ENDPOINT_URL', cmd.name()).toBe('AWS_ENDPOINT_URL');
  });
});
