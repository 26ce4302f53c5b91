// `tsvirt run` by its quickest way in, shared by both entries (the `tsvirt` launcher,
// tsvirt.cts, and main.ts): the build's run bundle, a CommonJS file loaded with V8's code
// cache (vmm/bundles.cts), when it is current; else the compiled modules. CommonJS itself,
// so that the launcher reaches a guest without starting Node's ES module loader.
import { freshBundle, runCachedBundle } from '../vmm/bundles.cjs';

type RunModule = typeof import('./commands/run.js');

/**
 * Runs `tsvirt run ARGS`; undefined when the quick parser hands the flags to commander, or
 * (`bundleOnly`) when there is no current bundle.
 */
export async function runCommand(args: string[], options: { bundleOnly?: boolean } = {}): Promise<number | undefined> {
  const bundle = freshBundle('run.bundle.cjs');
  if (bundle) {
    const { exports, codeCache } = runCachedBundle<RunModule>(bundle);
    return exports.runFast(args, { codeCache });
  }
  if (options.bundleOnly) return undefined;
  const { runFast } = await import('./commands/run.js');
  return runFast(args);
}

/** A failed command's exit code, after its one-line message (the stack with TSVIRT_DEBUG). */
export function exitCodeFor(err: unknown): number {
  if (!(err instanceof Error)) throw err;
  process.stderr.write(`tsvirt: ${err.message}\n`);
  if (process.env.TSVIRT_DEBUG) process.stderr.write(`${err.stack}\n`);
  return 1;
}
