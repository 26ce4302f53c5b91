#!/usr/bin/env node
// The tsvirt command line: each subcommand lives in its own module under ./commands
// and registers itself on the program; this file only assembles them.
import { Command, CommanderError } from 'commander';
import { commands } from './commands/index.js';

export async function main(argv: string[]): Promise<number> {
  const program = new Command('tsvirt')
    .description('A KVM virtualization stack in TypeScript')
    .version('0.1.0')
    .exitOverride()
    .configureOutput({ outputError: (text, write) => write(text.trimEnd() + '\n') });
  for (const register of commands) register(program);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    if (err instanceof Error) {
      process.stderr.write(`tsvirt: ${err.message}\n`);
      if (process.env.TSVIRT_DEBUG) process.stderr.write(`${err.stack}\n`);
      return 1;
    }
    throw err;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
