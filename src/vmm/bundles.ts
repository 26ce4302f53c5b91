// The build bundles what `tsvirt run` loads before the first KVM_RUN into one module per
// thread (scripts/bundle.mjs): under nested virtualization Node's module loader spends about
// as long per module as V8 spends compiling it, and a run loads some 50 modules per thread.
// This picks the bundle when it is current, else the compiled modules it was made from.
import { readFileSync, statSync } from 'node:fs';

/** The directory the bundles are written to: this module's (dist/src/vmm/). */
const BUNDLE_DIR = new URL('./', import.meta.url);
/** dist/: the bundles' input lists are relative to it. */
const DIST_DIR = new URL('../../', BUNDLE_DIR);

/**
 * The URL of bundle `name` (`vmm`, `vcpu-worker`), or null to load the modules themselves:
 * when TSVIRT_UNBUNDLED is set (to compare or debug), when there is no bundle, or when one of
 * its inputs is newer than it (dist/ recompiled with bare tsc after a change; a stale bundle
 * would run the old code).
 */
export function freshBundle(name: string): URL | null {
  if (process.env.TSVIRT_UNBUNDLED) return null;
  const bundle = new URL(`${name}.bundle.js`, BUNDLE_DIR);
  try {
    const { inputs } = JSON.parse(readFileSync(new URL(`${name}.bundle.inputs.json`, BUNDLE_DIR), 'utf8')) as { inputs: string[] };
    const built = statSync(bundle).mtimeMs;
    return inputs.every((input) => statSync(new URL(input, DIST_DIR)).mtimeMs <= built) ? bundle : null;
  } catch {
    return null; // no bundle, or an input is gone
  }
}
