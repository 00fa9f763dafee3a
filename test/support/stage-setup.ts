// vitest globalSetup: the staged copies of the package that PostgreSQL's archive_command and
// restore_command run (test/support/pgcommand.ts) are removed once the run's workers are gone,
// with any an earlier run left behind.
import { removeDeadStages } from './pgcommand.js';

export default function setup(): () => void {
  removeDeadStages();
  return removeDeadStages;
}
