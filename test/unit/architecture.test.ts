// ARCHITECTURE.md stays true: every folder under src/ is named in it (as `src/<folder>/`), and
// every src/ folder or file it names exists.
import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = join(import.meta.dirname, '..', '..');
const map = readFileSync(join(root, 'ARCHITECTURE.md'), 'utf8');

/** Every folder under src/, as "src/a/" and "src/a/b/". */
function sourceFolders(dir = join(root, 'src')): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .flatMap((e) => {
      const path = join(dir, e.name);
      return [`${relative(root, path)}/`, ...sourceFolders(path)];
    });
}

/** The src/ paths ARCHITECTURE.md names in backquotes: folders end with "/", files with an extension. */
function namedPaths(): string[] {
  return [...new Set([...map.matchAll(/`(src\/[A-Za-z0-9_./-]*)`/g)].map((m) => m[1]!))];
}

describe('ARCHITECTURE.md', () => {
  it('names every folder under src/', () => {
    const folders = sourceFolders();
    expect(folders.length).toBeGreaterThan(10);
    const missing = folders.filter((f) => !map.includes(`\`${f}\``));
    expect(missing, 'folders under src/ that ARCHITECTURE.md does not name (add a row to its table of layers)').toEqual([]);
  });

  it('names only src/ folders and files that exist', () => {
    const named = namedPaths();
    expect(named.length).toBeGreaterThan(10);
    const gone = named.filter((p) => {
      const path = join(root, p);
      if (!existsSync(path)) return true;
      return p.endsWith('/') ? !statSync(path).isDirectory() : !statSync(path).isFile();
    });
    expect(gone, 'paths ARCHITECTURE.md names that are not in src/').toEqual([]);
  });

  it('names only test files that exist', () => {
    const named = [...new Set([...map.matchAll(/`(test\/[A-Za-z0-9_./-]*)`/g)].map((m) => m[1]!))];
    expect(named.filter((p) => !existsSync(join(root, p)))).toEqual([]);
  });
});
