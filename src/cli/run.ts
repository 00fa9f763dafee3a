// Entry point used by bin/walstream.
import { main } from './main.js';

main(process.argv).then(
  (code) => {
    process.exitCode = code;
    // Let pending output drain, then leave even if a socket or timer lingers.
    setImmediate(() => process.exit(code));
  },
  (err: unknown) => {
    process.stderr.write(`walstream: error: ${String(err)}\n`);
    process.exit(1);
  },
);
