// Every command's --help ends with examples, and every example parses: the options it uses exist
// and take the values shown (each command's action replaced, so nothing runs).
import { describe, expect, it } from 'vitest';
import type { Command } from 'commander';
import { buildProgram } from '../../src/cli/main.js';

/** Commands whose examples come with them (being written). */
const EXAMPLES_PENDING = new Set<string>([]);

/** The visible commands, without commander's own "help". */
function visibleCommands(program: Command): Command[] {
  return program
    .createHelp()
    .visibleCommands(program)
    .filter((c) => c.name() !== 'help');
}

function helpOf(cmd: Command): string {
  let text = '';
  cmd.configureOutput({ writeOut: (s) => (text += s), writeErr: (s) => (text += s) });
  cmd.outputHelp();
  return text;
}

/** The example lines of a help text (the line after each "# ..." comment). */
function examplesOf(help: string): string[] {
  const section = help.split('\nExamples:\n')[1] ?? '';
  return section
    .split('\n')
    .filter((l) => l.startsWith('  ') && !l.trimStart().startsWith('#'))
    .map((l) => l.trim());
}

/** The walstream command line of an example: a shell line, or the quoted value of a postgresql.conf setting. */
function commandLine(example: string): string {
  const conf = /^\w+_command = '(.*)'$/.exec(example);
  const line = (conf ? conf[1]! : example).replace(/^npx /, '');
  expect(line).toMatch(/^walstream /);
  // What PostgreSQL puts in place of %p, %f and %r.
  return line.replace('%p', 'pg_wal/000000010000000000000001').replace('%f', '000000010000000000000001').replace('%r', '000000010000000000000001');
}

/** Split a command line as a POSIX shell would, for the quoting the examples use ('...'). */
function shellWords(line: string): string[] {
  return [...line.matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}

describe('--help examples', () => {
  const program = buildProgram();
  const commands = visibleCommands(program).filter((c) => !EXAMPLES_PENDING.has(c.name()));

  it('end the help of every command', () => {
    expect(commands.map((c) => c.name())).toEqual(expect.arrayContaining(['receive', 'push', 'fetch', 'serve', 'status', 'verify', 'cleanup', 'demo', 'backup', 'restore']));
    for (const cmd of commands) {
      const help = helpOf(cmd);
      expect(help, `walstream ${cmd.name()} --help`).toMatch(/\nExamples:\n( {2}# .+\n {2}\S.+\n){1,2}$/);
    }
  });

  it.each(commands.map((c) => c.name()))('of %s parse with its options', async (name) => {
    const examples = examplesOf(helpOf(commands.find((c) => c.name() === name)!));
    expect(examples.length).toBeGreaterThan(0);
    for (const example of examples) {
      const fresh = buildProgram();
      let ran: string | undefined;
      // Every command and subcommand ("backup list" runs as backup's example), named by its top-level command.
      const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)];
      for (const cmd of all(fresh)) {
        cmd.exitOverride();
        cmd.configureOutput({ writeOut: () => undefined, writeErr: () => undefined });
        const top = cmd.parent?.parent ? cmd.parent : cmd;
        cmd.action(() => {
          ran = top.name();
        });
      }
      const argv = shellWords(commandLine(example));
      await expect(fresh.parseAsync(argv.slice(1), { from: 'user' }), example).resolves.toBeDefined();
      expect(ran, example).toBe(name);
    }
  });
});
