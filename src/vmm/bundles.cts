// The build bundles what `tsvirt run` loads before the first KVM_RUN into one CommonJS file
// per thread (scripts/bundle.mjs): run.bundle.cjs (the run command and the main thread's
// VMM) and vcpu-worker.bundle.cjs (each vCPU thread); and `tsvirt img` into img.bundle.cjs.
// Under nested virtualization Node's ES module loader costs more than the code it loads
// (docs/design.md, boot time): a CommonJS file skips it, and V8's code cache of that file
// (below) skips most of compiling it.
//
// This module is CommonJS itself so that the `tsvirt` launcher (cli/tsvirt.cts) and a vCPU
// thread's entry script can load it without the ES module loader.
import { readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import Module from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import vm from 'node:vm';

/** The directory the bundles are written to: this module's (dist/src/vmm/). */
const BUNDLE_DIR = __dirname;
/** dist/: the bundles' input lists are relative to it. */
const DIST_DIR = join(BUNDLE_DIR, '..', '..');

/**
 * The path of bundle `file` (`run.bundle.cjs`, `vcpu-worker.bundle.cjs`, `img.bundle.cjs`), or
 * null to load the modules themselves: when TSVIRT_UNBUNDLED is set (to compare or debug),
 * when there is no bundle, or when one of its inputs is newer than it (dist/ recompiled with
 * bare tsc after a change; a stale bundle would run the old code).
 */
export function freshBundle(file: string): string | null {
  if (process.env.TSVIRT_UNBUNDLED) return null;
  const bundle = join(BUNDLE_DIR, file);
  try {
    const { inputs } = JSON.parse(readFileSync(`${bundle}.inputs.json`, 'utf8')) as { inputs: string[] };
    const built = statSync(bundle).mtimeMs;
    return inputs.every((input) => statSync(join(DIST_DIR, input)).mtimeMs <= built) ? bundle : null;
  } catch {
    return null; // no bundle, or an input is gone
  }
}

/**
 * Where a bundle's code cache lives: beside it, named after the bundle's size and time, so a
 * rebuilt bundle never meets the cache of its predecessor (V8 checks a cache against the
 * source's length only). The build removes old caches. `use` names one use of a bundle that
 * has several (`tsvirt img convert`, `... bench`): each gets the cache of its own code paths.
 */
export function codeCacheFile(bundle: string, use = ''): string {
  const { size, mtimeMs } = statSync(bundle);
  return `${bundle}.${size}-${Math.trunc(mtimeMs)}${/^[a-z]+$/.test(use) ? `.${use}` : ''}.v8cache`;
}

/** The global a loaded bundle calls once its start-up code has run (see codeWarmedUp). */
const SAVE_CODE_CACHE = Symbol.for('tsvirt.saveCodeCache');

/** What runCachedBundle did with the code cache, for the boot trace. */
export type CodeCacheUse = 'used' | 'written on warm-up';

/** Bundles this thread has run, by path: like require, a second load returns the first. */
const loaded = new Map<string, { exports: unknown; codeCache: CodeCacheUse }>();

/**
 * Runs CommonJS bundle `file` as `require` would, compiled with V8's code cache when one was
 * saved for it. Without one (first run, or V8 rejected it), the bundle's code writes one when
 * it calls codeWarmedUp(): by then the functions a start-up runs are compiled, and the cache
 * holds them too. A cache that cannot be written (read-only install) is simply not kept. As
 * with require, a bundle runs once per thread: a second call returns its exports again.
 */
export function runCachedBundle<T>(file: string, use = ''): { exports: T; codeCache: CodeCacheUse } {
  const earlier = loaded.get(file);
  if (earlier) return earlier as { exports: T; codeCache: CodeCacheUse };
  const cacheFile = codeCacheFile(file, use);
  let cachedData: Buffer | undefined;
  try {
    cachedData = readFileSync(cacheFile);
  } catch {
    // none yet
  }
  const script = new vm.Script(Module.wrap(readFileSync(file, 'utf8')), { filename: file, cachedData });
  const used = cachedData !== undefined && !script.cachedDataRejected;
  if (!used) {
    (globalThis as Record<symbol, unknown>)[SAVE_CODE_CACHE] = (): void => {
      // vCPU threads of one process may write at once: one temporary file each. (Required
      // here, not at the top: `tsvirt img` has no other use for node:worker_threads.)
      const { threadId } = Module.createRequire(__filename)('node:worker_threads') as typeof import('node:worker_threads');
      const temporary = `${cacheFile}.${process.pid}-${threadId}.tmp`;
      try {
        writeFileSync(temporary, script.createCachedData());
        renameSync(temporary, cacheFile);
      } catch {
        rmSync(temporary, { force: true });
      }
    };
  }
  const module = { exports: {} as T, filename: file, id: file, loaded: false };
  const wrapper = script.runInThisContext() as (exports: T, require: NodeJS.Require, module: unknown, filename: string, dirname: string) => void;
  wrapper.call(module.exports, module.exports, Module.createRequire(file), module, file, dirname(file));
  module.loaded = true;
  const result = { exports: module.exports, codeCache: used ? 'used' as const : 'written on warm-up' as const };
  loaded.set(file, result);
  return result;
}

/**
 * A bundle's import() of a module left outside it (scripts/bundle.mjs routes them here): code
 * compiled from a code cache cannot make one itself, as Node 20 does not give it back the
 * script's import callback. Relative specifiers are relative to the bundle.
 */
export function importFrom(bundle: string, specifier: string): Promise<unknown> {
  return import(specifier.startsWith('.') ? pathToFileURL(join(dirname(bundle), specifier)).href : specifier);
}

/**
 * Called by bundled code once its start-up has run (the machine started, a vCPU's first
 * exits): writes the code cache if the loader asked for one. Does nothing otherwise, and
 * nothing the second time.
 */
export function codeWarmedUp(): void {
  const slot = globalThis as Record<symbol, unknown>;
  const save = slot[SAVE_CODE_CACHE];
  if (typeof save !== 'function') return;
  delete slot[SAVE_CODE_CACHE];
  (save as () => void)();
}
