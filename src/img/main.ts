// `tsvirt img`: the qemu-img work-alike. Dispatches a subcommand, turns every failure into one
// line on stderr and the exit status qemu-img would return.
import { ImgError, oneLine } from './errors.js';
import { processIO, type ImgIO } from './io.js';

export { restoreCompilerFlags } from './io.js';

export type Subcommand = (argv: string[], io: ImgIO) => Promise<number>;

// Each subcommand's module is loaded when it runs: a command line pays only for the one it uses.
const lazy = <K extends string>(load: () => Promise<Record<K, Subcommand>>, name: K): Subcommand =>
  async (argv, io) => (await load())[name](argv, io);

export const SUBCOMMANDS: Record<string, { run: Subcommand; usage: string }> = {
  bench: { run: lazy(() => import('./commands/bench.js'), 'bench'), usage: 'bench [-c count] [-d depth] [-f fmt] [--flush-interval=N] [-n] [-o offset] [--pattern=N] [-q] [-s size] [-S step] [-t cache] [-w] filename' },
  check: { run: lazy(() => import('./commands/check.js'), 'check'), usage: 'check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] filename' },
  commit: { run: lazy(() => import('./commands/commit.js'), 'commit'), usage: 'commit [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename' },
  compare: { run: lazy(() => import('./commands/compare.js'), 'compare'), usage: 'compare [-f fmt] [-F fmt] [-q] [-s] filename1 filename2' },
  convert: { run: lazy(() => import('./commands/convert.js'), 'convert'), usage: 'convert [-c] [-p] [-q] [-n] [-f fmt] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] [-m num] [--target-is-zero] filename [filename2 [...]] output_filename' },
  create: { run: lazy(() => import('./commands/create.js'), 'create'), usage: 'create [-q] [-f fmt] [-b backing_file -F backing_fmt] [-u] [-o options] filename [size]' },
  info: { run: lazy(() => import('./commands/info.js'), 'info'), usage: 'info [-f fmt] [--output=ofmt] [--backing-chain] filename' },
  map: { run: lazy(() => import('./commands/map.js'), 'map'), usage: 'map [-f fmt] [--output=ofmt] [--start-offset=offset] [--max-length=len] filename' },
  measure: { run: lazy(() => import('./commands/measure.js'), 'measure'), usage: 'measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [-f fmt] filename]' },
  snapshot: { run: lazy(() => import('./commands/snapshot.js'), 'snapshot'), usage: 'snapshot [-l | -a snapshot | -c snapshot | -d snapshot] [-q] [-f fmt] filename' },
  rebase: { run: lazy(() => import('./commands/rebase.js'), 'rebase'), usage: 'rebase [-q] [-f fmt] [-u] -b backing_file [-F backing_fmt] filename' },
  resize: { run: lazy(() => import('./commands/resize.js'), 'resize'), usage: 'resize [-f fmt] [-q] [--shrink] filename [+ | -]size' },
};

export function usage(): string {
  const lines = ['usage: tsvirt img [command] [command options]', 'Command syntax:'];
  for (const name of Object.keys(SUBCOMMANDS).sort()) lines.push(`  ${SUBCOMMANDS[name]!.usage}`);
  return lines.join('\n') + '\n';
}

/** Runs `tsvirt img ARGV...`; resolves to the exit status. Never throws for user errors. */
export async function runImg(argv: string[], io: ImgIO = processIO): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    io.err('tsvirt img: Not enough arguments\n');
    return 1;
  }
  if (name === '-h' || name === '--help' || name === 'help') {
    io.out(usage());
    return 0;
  }
  const command = SUBCOMMANDS[name];
  if (!command) {
    io.err(`tsvirt img: Command not found: ${name}\n`);
    return 1;
  }
  if (rest.includes('-h') || rest.includes('--help')) {
    io.out(`usage: tsvirt img ${command.usage}\n`);
    return 0;
  }
  try {
    return await command.run(rest, io);
  } catch (err) {
    io.err(`tsvirt img: ${oneLine(err)}\n`);
    if (process.env.TSVIRT_DEBUG && err instanceof Error) io.err(`${err.stack}\n`);
    return err instanceof ImgError ? err.exitCode : 1;
  }
}
