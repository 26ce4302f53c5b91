// koffi, the FFI every kernel binding goes through, loaded by its native addon. The koffi
// package's JavaScript entry finds that addon by resolving a platform package through two
// `exports` maps and reading the node binary's ELF header to tell glibc from musl; under
// nested virtualization that took 125-135 ms of each isolate's start against 40-50 ms for
// the addon itself, and `tsvirt run` loads it on the main thread and again on every vCPU
// thread (docs/design.md, boot time). The addon exports the same API object the package
// does (the package adds only deprecation wrappers for calls this project never makes).
// Where the glibc x86-64 build does not apply or cannot be loaded, the package decides.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type * as KoffiApi from 'koffi';

export type Koffi = typeof KoffiApi;

const require = createRequire(import.meta.url);

/** The glibc x86-64 build of koffi's addon, as the package would pick it; else undefined. */
function nativeAddon(): Koffi | undefined {
  if (process.platform !== 'linux' || process.arch !== 'x64' || process.env.TSVIRT_KOFFI_PACKAGE) return undefined;
  // The package reads the ELF interpreter of the node binary; the glibc loader being there
  // is the cheap tell (a musl system has ld-musl instead).
  if (!existsSync('/lib64/ld-linux-x86-64.so.2')) return undefined;
  try {
    const addon = require('@koromix/koffi-linux-x64/linux_x64/koffi.node') as Koffi;
    return typeof addon.load === 'function' ? addon : undefined;
  } catch {
    return undefined;
  }
}

export const koffi: Koffi = nativeAddon() ?? (require('koffi') as { default: Koffi }).default;
