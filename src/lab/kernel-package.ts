// Fetches Debian's cloud kernel package: the lab host and the guests both run it.
// The exact version is resolved from the linux-image-cloud-amd64 metapackage, because
// `apt-get download` with a wildcard fetches every matching version (hundreds of MB).
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { runTool } from './run-tool.js';

export interface KernelTree {
  /** e.g. 6.1.0-56-cloud-amd64 */
  release: string;
  /** The bzImage. */
  vmlinuz: string;
  /** <tree>/lib/modules/<release>/kernel */
  modulesDir: string;
}

const META_PACKAGE = 'linux-image-cloud-amd64';

const run = (command: string, args: string[], cwd?: string): string => runTool(command, args, { cwd, purpose: 'build the lab' });

/** The versioned package the metapackage depends on, e.g. linux-image-6.1.0-56-cloud-amd64. */
export function resolveKernelPackage(): string {
  const out = run('apt-cache', ['depends', META_PACKAGE]);
  const m = /Depends:\s*(linux-image-[0-9][^\s]*-cloud-amd64)\b/.exec(out);
  if (!m) {
    throw new Error(`apt-cache depends ${META_PACKAGE} names no linux-image package (run apt-get update?)`);
  }
  return m[1]!;
}

/** Downloads (once) and unpacks the kernel package into `dir`. */
export function fetchKernel(dir: string, log: (line: string) => void): KernelTree {
  const pkg = resolveKernelPackage();
  const release = pkg.replace(/^linux-image-/, '');
  const tree = join(dir, release);
  const vmlinuz = join(tree, 'boot', `vmlinuz-${release}`);
  const modulesDir = join(tree, 'lib', 'modules', release, 'kernel');
  if (existsSync(vmlinuz) && existsSync(modulesDir)) {
    log(`kernel ${release}: already unpacked`);
    return { release, vmlinuz, modulesDir };
  }
  const debs = join(dir, 'debs');
  mkdirSync(debs, { recursive: true });
  let deb = readdirSync(debs).find((n) => n.startsWith(`${pkg}_`) && n.endsWith('.deb'));
  if (!deb) {
    log(`downloading ${pkg}`);
    run('apt-get', ['download', '-q', pkg], debs);
    deb = readdirSync(debs).find((n) => n.startsWith(`${pkg}_`) && n.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${pkg} left no .deb in ${debs}`);
  }
  log(`unpacking ${deb}`);
  const partial = `${tree}.${process.pid}.partial`;
  rmSync(partial, { recursive: true, force: true });
  run('dpkg-deb', ['-x', join(debs, deb), partial]);
  rmSync(tree, { recursive: true, force: true });
  renameSync(partial, tree);
  if (!existsSync(vmlinuz)) throw new Error(`kernel package ${deb} holds no ${vmlinuz}`);
  // A newer kernel replaces the old one: drop the previous versions' packages and trees.
  for (const name of readdirSync(debs)) if (name !== deb) rmSync(join(debs, name), { force: true });
  for (const name of readdirSync(dir)) {
    if (name !== 'debs' && name !== release && !name.endsWith('.partial')) rmSync(join(dir, name), { recursive: true, force: true });
  }
  return { release, vmlinuz, modulesDir };
}
