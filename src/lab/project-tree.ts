// What of the project the lab sees at /project: package.json, dist/, the runtime
// node_modules (dependencies, not devDependencies) and the built guest image. The lab has no
// shared filesystem (Debian's cloud kernel has no 9p), so these are packed into a cpio
// archive appended to the lab initramfs at each run: a few MB, written in well under a second.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { CpioWriter } from './cpio.js';
import { labFiles } from './paths.js';

/** The project's directory inside the lab. */
export const LAB_PROJECT_DIR = '/project';

interface PackageJson {
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
}

function readPackage(dir: string): PackageJson {
  return JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as PackageJson;
}

/** Directories of every installed runtime dependency, found the way Node resolves them. */
export function runtimePackages(root: string): string[] {
  const found = new Set<string>();
  const visit = (fromDir: string, name: string, optional: boolean): void => {
    // Node looks in node_modules of the requiring package, then of each parent directory.
    let dir = fromDir;
    while (true) {
      const candidate = join(dir, 'node_modules', name);
      if (existsSync(join(candidate, 'package.json'))) {
        if (found.has(candidate)) return;
        found.add(candidate);
        const pkg = readPackage(candidate);
        for (const dep of Object.keys(pkg.dependencies ?? {})) visit(candidate, dep, false);
        for (const dep of Object.keys(pkg.optionalDependencies ?? {})) visit(candidate, dep, true);
        return;
      }
      if (dir === root || !dir.startsWith(root)) break;
      dir = join(dir, '..');
      if (dir.endsWith('node_modules')) dir = join(dir, '..');
    }
    if (!optional) throw new Error(`runtime dependency ${name} (needed by ${relative(root, fromDir) || 'the project'}) is not installed: run npm ci`);
  };
  const pkg = readPackage(root);
  for (const dep of Object.keys(pkg.dependencies ?? {})) visit(root, dep, false);
  for (const dep of Object.keys(pkg.optionalDependencies ?? {})) visit(root, dep, true);
  return [...found].sort();
}

/** Files a package holds that cannot run in the lab (other platforms' prebuilt binaries). */
function skipInPackage(relPath: string): boolean {
  return /(^|\/)(musl_x64|linux_arm|linux_arm64|linux_ia32|linux_riscv64|darwin_[^/]*|win32_[^/]*|freebsd_[^/]*|openbsd_[^/]*)(\/|$)/.test(relPath);
}

function addTree(cpio: CpioWriter, hostDir: string, archiveDir: string, skip: (rel: string) => boolean, rel = ''): void {
  const here = rel === '' ? hostDir : join(hostDir, rel);
  for (const name of readdirSync(here).sort()) {
    const childRel = rel === '' ? name : `${rel}/${name}`;
    if (skip(childRel)) continue;
    const st = statSync(join(hostDir, childRel));
    if (st.isDirectory()) {
      cpio.directory(`${archiveDir}/${childRel}`);
      addTree(cpio, hostDir, archiveDir, skip, childRel);
    } else if (st.isFile()) cpio.file(`${archiveDir}/${childRel}`, readFileSync(join(hostDir, childRel)), st.mode);
  }
}

/** Adds the project (as seen from `root`) to the archive under LAB_PROJECT_DIR. */
export function addProjectTree(cpio: CpioWriter, root: string): void {
  const base = LAB_PROJECT_DIR.slice(1);
  if (!existsSync(join(root, 'dist'))) throw new Error(`${join(root, 'dist')} missing: run npm run build first`);
  cpio.file(`${base}/package.json`, readFileSync(join(root, 'package.json')));
  cpio.directory(`${base}/dist`);
  addTree(cpio, join(root, 'dist'), `${base}/dist`, () => false);
  for (const pkgDir of runtimePackages(root)) {
    const rel = relative(root, pkgDir);
    cpio.directory(`${base}/${rel}`);
    addTree(cpio, pkgDir, `${base}/${rel}`, skipInPackage);
  }
  // The guest image, where guestKernelPath()/guestInitrdPath() look for it inside the lab.
  for (const file of [labFiles.kernel(), labFiles.guestInitrd(), labFiles.buildInfo()]) {
    const name = file.slice(file.lastIndexOf('/') + 1);
    cpio.file(`${base}/.cache/lab/${name}`, readFileSync(file));
  }
}

/** Translates a host path under the project root to the same file inside the lab. */
export function toLabPath(root: string, hostPath: string): string {
  const rel = relative(root, hostPath);
  if (rel.startsWith('..') || rel.startsWith('/')) throw new Error(`${hostPath} is outside the project ${root}: the lab cannot see it`);
  return rel === '' ? LAB_PROJECT_DIR : `${LAB_PROJECT_DIR}/${rel}`;
}
