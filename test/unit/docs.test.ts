// The documentation stays true to the command line.
//
// Convention (what this test reads):
// - every command `walstream --help` lists has its page, docs/<command>.md;
// - that page has a section whose heading is exactly `## Options`, holding a table: one row per
//   option, its first cell naming the option as `--long-name` (and its short form, `-X, --long-name`,
//   when it has one); a subcommand's options (`backup list`) go in a section `## Options of
//   `backup list`` of the parent's page; the options every command takes (`--log-format`,
//   `--version`) are in docs/cli.md's `## Options`. `--help` itself is not listed;
// - every option `--help` prints must have its row, and every `--long-name` in the first cell of
//   a row must be an option of that command.
// When you add an option, add its row to the table of the command's page.
//
// It also checks that README.md names the two commands a new user runs, exactly, and that every
// relative link in README.md and docs/*.md points at a file that exists (and, with a #fragment,
// at a heading of that file).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command, Option } from 'commander';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../../src/cli/main.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const docs = join(root, 'docs');

function visibleCommands(cmd: Command): Command[] {
  return cmd
    .createHelp()
    .visibleCommands(cmd)
    .filter((c) => c.name() !== 'help');
}

/** The options `cmd --help` prints under "Options:" (its own, not the global ones), without --help. */
function printedOptions(cmd: Command): Option[] {
  return cmd
    .createHelp()
    .visibleOptions(cmd)
    .filter((o) => o.long !== '--help');
}

/** The table rows of the section under the heading `heading` (up to the next heading of that level or above). */
function sectionRows(page: string, heading: string): string[] | undefined {
  const lines = page.split('\n');
  const start = lines.findIndex((l) => l.trim() === heading);
  if (start < 0) return undefined;
  const level = /^#+/.exec(heading)![0].length;
  const rows: string[] = [];
  for (const line of lines.slice(start + 1)) {
    const h = /^(#+) /.exec(line);
    if (h && h[1]!.length <= level) break;
    if (line.startsWith('|') && !/^\|[\s|:-]*$/.test(line)) rows.push(line);
  }
  return rows;
}

/** The first cell of a table row. */
function firstCell(row: string): string {
  return row.split(/(?<!\\)\|/)[1] ?? '';
}

function longNames(cell: string): string[] {
  return [...cell.matchAll(/(?<![\w-])--[a-z][a-z0-9-]*/g)].map((m) => m[0]);
}

/** Check one command's options against one section of one page; return the problems found. */
function checkOptions(label: string, options: Option[], pageName: string, heading: string): string[] {
  const file = join(docs, pageName);
  if (!existsSync(file)) return [`${label}: its page docs/${pageName} is missing`];
  const rows = sectionRows(readFileSync(file, 'utf8'), heading);
  if (!rows) return [`${label}: docs/${pageName} has no section "${heading}"`];
  const problems: string[] = [];
  const documented = new Map<string, string>();
  for (const row of rows) {
    const cell = firstCell(row);
    for (const name of longNames(cell)) documented.set(name, cell);
  }
  const known = new Set(options.map((o) => o.long!));
  for (const o of options) {
    const cell = documented.get(o.long!);
    if (cell === undefined) {
      problems.push(`${label}: option ${o.flags} is printed by --help but not documented in docs/${pageName} under "${heading}"`);
    } else if (o.short && !new RegExp(`(?<![\\w-])${o.short}(?![\\w-])`).test(cell)) {
      problems.push(`${label}: option ${o.flags}: its row in docs/${pageName} under "${heading}" does not name ${o.short}`);
    }
  }
  for (const name of documented.keys()) {
    if (!known.has(name)) {
      problems.push(`${label}: docs/${pageName} documents ${name} under "${heading}", but the command has no such option`);
    }
  }
  return problems;
}

describe('docs/', () => {
  const program = buildProgram();
  const commands = visibleCommands(program);

  it('has a page for every command', () => {
    expect(commands.length).toBeGreaterThan(5);
    const missing = commands.map((c) => `docs/${c.name()}.md`).filter((p) => !existsSync(join(root, p)));
    expect(missing, 'pages missing').toEqual([]);
  });

  it.each(commands.map((c) => c.name()))('documents every option of %s, and no other', (name) => {
    const cmd = commands.find((c) => c.name() === name)!;
    const problems = checkOptions(`walstream ${name}`, printedOptions(cmd), `${name}.md`, '## Options');
    for (const sub of visibleCommands(cmd)) {
      problems.push(...checkOptions(`walstream ${name} ${sub.name()}`, printedOptions(sub), `${name}.md`, `## Options of \`${name} ${sub.name()}\``));
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('documents the options every command takes in docs/cli.md', () => {
    const problems = checkOptions('walstream', printedOptions(program), 'cli.md', '## Options');
    expect(problems, problems.join('\n')).toEqual([]);
  });
});

describe('README.md', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');

  it('names the first run and the tests exactly', () => {
    expect(readme).toMatch(/^npm install && npx walstream demo$/m);
    expect(readme).toMatch(/^npm test$/m);
    const scripts = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).scripts as Record<string, string>;
    expect(scripts.test, 'package.json has a test script').toBeTruthy();
    expect(visibleCommands(buildProgram()).map((c) => c.name())).toContain('demo');
  });

  it('stays a door: under 12 KB', () => {
    expect(Buffer.byteLength(readme)).toBeLessThan(12 * 1024);
  });
});

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as '-'. */
function anchorOf(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  let fenced = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const m = !fenced && /^#{1,6} (.*)$/.exec(line);
    if (!m) continue;
    const base = anchorOf(m[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

describe('links in README.md and docs/', () => {
  const pages = [
    'README.md',
    ...readdirSync(docs)
      .filter((f) => f.endsWith('.md'))
      .map((f) => `docs/${f}`),
  ];

  it.each(pages)('of %s point at files and headings that exist', (page) => {
    const text = readFileSync(join(root, page), 'utf8').replace(/```[\s\S]*?```/g, '');
    const problems: string[] = [];
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!;
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:
      const [path, fragment] = target.split('#') as [string, string | undefined];
      const file = path === '' ? join(root, page) : resolve(dirname(join(root, page)), path);
      if (!existsSync(file)) {
        problems.push(`${page}: link ${target}: no file ${path}`);
        continue;
      }
      if (fragment && file.endsWith('.md') && !anchorsOf(readFileSync(file, 'utf8')).has(fragment)) {
        problems.push(`${page}: link ${target}: no heading #${fragment} in ${path || page}`);
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });
});
