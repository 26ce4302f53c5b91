// Where the lab keeps what `tsvirt lab build` makes. Everything lives under one cache
// directory (default: <project>/.cache/lab, git-ignored); TSVIRT_CACHE moves the whole
// .cache root elsewhere (e.g. a shared CI cache).
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project root: this file is dist/src/lab/paths.js once built. */
export function projectRoot(): string {
  return resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..', '..');
}

export function labCacheDir(): string {
  const base = process.env.TSVIRT_CACHE ? resolve(process.env.TSVIRT_CACHE) : join(projectRoot(), '.cache');
  return join(base, 'lab');
}

export class LabImageMissingError extends Error {
  constructor(what: string, path: string) {
    super(`lab ${what} not found at ${path}: run \`tsvirt lab build\` first`);
    this.name = 'LabImageMissingError';
  }
}

function required(what: string, path: string): string {
  if (!existsSync(path)) throw new LabImageMissingError(what, path);
  return path;
}

/** Files of a finished build; `build-info.json` is written last, so its presence means complete. */
export const labFiles = {
  kernel: (): string => join(labCacheDir(), 'vmlinuz'),
  guestInitrd: (): string => join(labCacheDir(), 'guest-initrd.img'),
  hostInitrd: (): string => join(labCacheDir(), 'host-initrd.cpio'),
  hostDisk: (): string => join(labCacheDir(), 'host-root.ext4'),
  buildInfo: (): string => join(labCacheDir(), 'build-info.json'),
  /** One lab kernel log per run (runs may overlap); the newest few are kept. */
  logDir: (): string => join(labCacheDir(), 'logs'),
  runDir: (): string => join(labCacheDir(), 'run'),
};

/** The Linux kernel that tsvirt boots as a guest (also the lab host's kernel). */
export function guestKernelPath(): string {
  return required('guest kernel', labFiles.kernel());
}

/** The guest initramfs: busybox, the virtio modules and a small init. */
export function guestInitrdPath(): string {
  return required('guest initrd', labFiles.guestInitrd());
}

/** True when a complete lab build exists. */
export function labBuilt(): boolean {
  return existsSync(labFiles.buildInfo());
}
