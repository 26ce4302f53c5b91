#!/usr/bin/env node
// The `tsvirt` command. `tsvirt run` goes straight to the build's run bundle, all CommonJS:
// under nested virtualization Node's ES module loader alone costs about a tenth of a second
// before the first module runs (docs/design.md, boot time). Everything else, and `run` when
// there is no current bundle or its flags need commander, goes to the ES module CLI
// (main.ts), which reads process.argv itself.
import { exitCodeFor, runCommand } from './run-command.cjs';

async function launch(argv: string[]): Promise<void> {
  if (argv[0] === 'run') {
    try {
      const code = await runCommand(argv.slice(1), { bundleOnly: true });
      if (code !== undefined) {
        process.exitCode = code;
        return;
      }
    } catch (err) {
      process.exitCode = exitCodeFor(err);
      return;
    }
  }
  await import('./main.js');
}

void launch(process.argv.slice(2));
