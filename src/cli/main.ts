#!/usr/bin/env node
// The tsvirt command line: each subcommand lives in its own module under ./commands
// and registers itself on the program; this file only assembles them. Modules load on use:
// the start-up of `tsvirt run` is part of the guest's boot time.
import { bootTrace } from '../vmm/boot-trace.js';
import { exitCodeFor, imgCommand, runCommand } from './bundled-commands.cjs';

bootTrace(`cli: started (node bootstrap done at ${performance.nodeTiming.bootstrapComplete.toFixed(1)})`);

export async function main(argv: string[]): Promise<number> {
  let commander: typeof import('commander') | undefined;
  try {
    // `tsvirt run` first tries its own quick parser, so booting a guest does not wait for
    // commander and every other subcommand's module to load (see commands/run.ts).
    if (argv[0] === 'run') {
      const code = await runCommand(argv.slice(1));
      if (code !== undefined) return code;
    }
    // `tsvirt img` parses its own arguments (qemu-img's style): commander would only hand
    // them over, after loading itself and every other subcommand (10 ms on a development host).
    if (argv[0] === 'img') return await imgCommand(argv.slice(1));
    commander = await import('commander');
    const { commands } = await import('./commands/index.js');
    const program = new commander.Command('tsvirt')
      .description('A KVM virtualization stack in TypeScript')
      .version('0.1.0')
      .exitOverride()
      .configureOutput({ outputError: (text, write) => write(text.trimEnd() + '\n') });
    for (const register of commands) register(program);
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (commander && err instanceof commander.CommanderError) return err.exitCode;
    return exitCodeFor(err);
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
