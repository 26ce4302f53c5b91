// `tsvirt img ...`: qemu-img's argument style (clustered short options, `-o a=b,c=d`, options
// after operands) is parsed by src/img itself, so commander just hands over the raw arguments.
import type { Command } from 'commander';

export function register(program: Command): void {
  program
    .command('img')
    .description('disk image tool modelled on qemu-img (create, info, check, convert, snapshot, resize, compare, map, rebase, commit, measure, bench)')
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .argument('[args...]')
    .action(async (args: string[]) => {
      // Loaded on use: the other subcommands never pay for (or depend on) the block layer.
      const { runImg } = await import('../../img/main.js');
      process.exitCode = await runImg(args);
    });
}
