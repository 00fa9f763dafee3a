// vitest globalSetup: the CLI tests run bin/walstream, which loads dist/. When any source file
// under src/ is newer than its compiled file in dist/ (or that is missing), build before the tests
// start, so that no test file, however vitest is run, exercises yesterday's dist/.
// `npm test` builds first anyway; this covers `npx vitest run <file>` and the other scripts.
// Then, as npm run build does, dist/cli/run-bundle.js (bin/walstream's entry when it is current)
// is made again when it is older than dist/cli/run.js: with the command package.json's "bundle"
// script runs.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

function mtime(path: string): number | undefined {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return undefined;
  }
}

/** The first source file whose compiled file is missing or older, or undefined when dist/ is current. */
export function staleSource(root = ROOT): string | undefined {
  const src = join(root, 'src');
  const configs = Math.max(mtime(join(root, 'tsconfig.json')) ?? 0, mtime(join(root, 'tsconfig.build.json')) ?? 0);
  const walk = (dir: string): string | undefined => {
    for (const d of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, d.name);
      if (d.isDirectory()) {
        const found = walk(path);
        if (found !== undefined) return found;
      } else if (d.isFile() && d.name.endsWith('.ts') && !d.name.endsWith('.d.ts')) {
        const built = mtime(join(root, 'dist', relative(src, path)).replace(/\.ts$/, '.js'));
        if (built === undefined || built < Math.max(mtime(path) ?? 0, configs)) return relative(root, path);
      }
    }
    return undefined;
  };
  return walk(src);
}

/** npm run bundle, without npm: package.json's "bundle" script (plain words, no quoting) run with esbuild's binary. */
function bundle(): void {
  const script = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts['bundle']!;
  const [tool, ...args] = script.split(/\s+/);
  if (tool !== 'esbuild') throw new Error(`package.json's bundle script does not start with esbuild: ${script}`);
  execFileSync(createRequire(import.meta.url).resolve('esbuild/bin/esbuild'), args, { cwd: ROOT, stdio: 'inherit' });
}

export default function setup(): void {
  build();
  const entry = mtime(join(ROOT, 'dist', 'cli', 'run.js'));
  const bundled = mtime(join(ROOT, 'dist', 'cli', 'run-bundle.js'));
  if (entry !== undefined && (bundled === undefined || bundled < entry)) bundle();
}

function build(): void {
  const stale = staleSource();
  if (stale === undefined) return;
  process.stdout.write(`dist/ is older than ${stale}: building (npm run build) before the tests\n`);
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, stdio: 'inherit' });
  } catch (err) {
    // tsc writes its output in spite of type errors (npm test's type check reports them): the
    // tests can still run, on the code as it is now, unless something was not written.
    const left = staleSource();
    if (left !== undefined) throw new Error(`the build did not write dist/ for ${left}: ${(err as Error).message}`);
    process.stdout.write('the build reported type errors (above); the tests run on what it wrote\n');
  }
}
