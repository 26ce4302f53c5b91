#!/usr/bin/env node
// The `tsvirt` command. `tsvirt run` and `tsvirt img` go straight to the build's bundle of
// the command, all CommonJS: under nested virtualization Node's ES module loader alone costs
// about a tenth of a second before the first module runs (docs/design.md, boot time), and a
// short `tsvirt img` job is mostly start-up. Everything else, and `run` when its flags need
// commander, goes to the ES module CLI (main.ts), which reads process.argv itself.
import { exitCodeFor, imgCommand, runCommand } from './bundled-commands.cjs';

const BUNDLED = { run: runCommand, img: imgCommand };

async function launch(argv: string[]): Promise<void> {
  const command = argv[0] === 'run' || argv[0] === 'img' ? BUNDLED[argv[0]] : undefined;
  if (command) {
    try {
      const code = await command(argv.slice(1));
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
