// `tsvirt run` and `tsvirt img` by their quickest way in, shared by both entries (the
// `tsvirt` launcher, tsvirt.cts, and main.ts): the build's bundle of the command, a CommonJS
// file loaded with V8's code cache (vmm/bundles.cts), when it is current; else the compiled
// modules. CommonJS itself, so that the launcher gets there without starting Node's ES
// module loader: a guest boots sooner, and a short `tsvirt img` job is mostly start-up.
import { codeWarmedUp, freshBundle, runCachedBundle } from '../vmm/bundles.cjs';

type RunModule = typeof import('./commands/run.js');
type ImgModule = typeof import('../img/main.js');

/** Runs `tsvirt run ARGS`; undefined when the quick parser hands the flags to commander. */
export async function runCommand(args: string[]): Promise<number | undefined> {
  const bundle = freshBundle('run.bundle.cjs');
  if (bundle) {
    const { exports, codeCache } = runCachedBundle<RunModule>(bundle);
    return exports.runFast(args, { codeCache });
  }
  const { runFast } = await import('./commands/run.js');
  return runFast(args);
}

/** Runs `tsvirt img ARGS` (it parses its own arguments, qemu-img's style). */
export async function imgCommand(args: string[]): Promise<number> {
  const bundle = freshBundle('img.bundle.cjs');
  if (bundle) {
    // One code cache per subcommand: convert and bench run different code.
    const { exports } = runCachedBundle<ImgModule>(bundle, args[0]);
    const code = await exports.runImg(args);
    // The job's code paths have run: the bundle's code cache can take them in. Not after a
    // failure (a usage error, say): a cache holds only what ran before it was written. V8
    // takes a cache only under the flags it was made with: the ones the process started with.
    if (code === 0) {
      exports.restoreCompilerFlags();
      codeWarmedUp();
    }
    return code;
  }
  const { runImg } = await import('../img/main.js');
  return runImg(args);
}

/** A failed command's exit code, after its one-line message (the stack with TSVIRT_DEBUG). */
export function exitCodeFor(err: unknown): number {
  if (!(err instanceof Error)) throw err;
  process.stderr.write(`tsvirt: ${err.message}\n`);
  if (process.env.TSVIRT_DEBUG) process.stderr.write(`${err.stack}\n`);
  return 1;
}
