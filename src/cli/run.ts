// Entry point used by bin/walstream. The calls PostgreSQL makes once per WAL file in their usual
// forms (fetch and push on a local archive, fetch from the prefetch spool) run before the command
// line is built (fast-path.ts); every other call loads the full command line.
import { runFastPath } from './fast-path.js';

// The AWS SDK warns on every start under Node 20 about its own future releases; walstream
// supports Node 20, so keep its output to what the user asked for.
process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';

let finished = false;
// If the event loop empties before a command settles, something was left waiting on nothing:
// never let that look like success.
process.on('beforeExit', () => {
  if (!finished) {
    process.stderr.write('walstream: error: internal error: the command stopped without finishing\n');
    process.exit(1);
  }
});

async function run(argv: string[]): Promise<number> {
  const status = await runFastPath(argv, process.env);
  if (status !== undefined) return status;
  const { main } = await import('./main.js');
  return main(argv);
}

run(process.argv).then(
  (code) => {
    finished = true;
    process.exitCode = code;
    // Let pending output drain, then leave even if a socket or timer lingers.
    setImmediate(() => process.exit(code));
  },
  (err: unknown) => {
    finished = true;
    process.stderr.write(`walstream: error: ${String(err)}\n`);
    process.exit(1);
  },
);
