// A read-only ext2 disk with Debian's fio for benchmarks inside guests. fio needs some sixty
// shared libraries (ceph, gluster, rdma clients linked in: about 80 MB), far too much for the
// guest initramfs, so they go on a disk both VMMs attach. The disk is built once from Debian
// packages (apt-get download, dpkg-deb -x: no root mounts, nothing installed on the host) and
// cached under the lab cache. Only the files `ldd` names are kept; fio runs through the
// dynamic loader on the disk, so the guest needs no /lib of its own:
//   mount -o ro /dev/vdX /tools && /tools/fio.sh --name=...
import {
  chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync,
  statSync, writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { labCacheDir } from './paths.js';
import { runTool } from './run-tool.js';

/** Bump when the disk's layout changes, so cached disks are rebuilt. */
const TOOLS_FORMAT = 1;
const ROOT_PACKAGE = 'fio';
const LOADER = 'ld-linux-x86-64.so.2';

export interface ToolsDisk {
  /** The ext2 image (attach it read-only). */
  image: string;
  /** Debian packages (name=version) the files came from. */
  packages: string[];
  /** Bytes of files on the disk. */
  contentBytes: number;
}

/** Inside the guest, with the disk mounted at MOUNT: the command that runs fio. */
export const TOOLS_FIO = 'fio.sh';
/** The volume label of the tools disk. */
export const TOOLS_LABEL = 'tsvirt-tools';

export function toolsDir(): string {
  return join(labCacheDir(), 'tools');
}

const run = (command: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string =>
  runTool(command, args, { ...opts, purpose: 'build the tools disk' });

/**
 * Parse `apt-cache depends` output: package -> its first-choice hard dependencies. A line
 * `|Depends: A` is followed by the alternative to A, which is skipped; `<name>` is virtual.
 */
export function parseAptDepends(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current: string[] | undefined;
  let skipNext = false;
  for (const line of text.split('\n')) {
    if (line.length === 0) continue;
    if (!line.startsWith(' ')) {
      current = [];
      out.set(line.trim(), current);
      skipNext = false;
      continue;
    }
    const m = /^\s+(\|)?(?:Pre)?Depends:\s+(\S+)/.exec(line);
    if (!m || !current) {
      skipNext = false;
      continue;
    }
    if (!skipNext && !m[2]!.startsWith('<')) current.push(m[2]!);
    skipNext = m[1] === '|';
  }
  return out;
}

/**
 * The shared-library packages fio needs: its hard dependencies, then theirs, following only
 * library packages (lib*, zlib*): the others (python3 for fio's helper scripts, init-system
 * helpers) hold nothing the fio binary loads.
 */
function libraryClosure(root: string): string[] {
  const isLibrary = (p: string): boolean => /^(lib|zlib)/.test(p);
  const seen = new Set<string>([root]);
  let todo = [root];
  while (todo.length > 0) {
    const deps = parseAptDepends(run('apt-cache', ['depends', '--no-recommends', '--no-suggests', '--no-conflicts',
      '--no-breaks', '--no-replaces', '--no-enhances', ...todo]));
    const next: string[] = [];
    for (const list of deps.values()) {
      for (const d of list.map((n) => n.replace(/:amd64$/, ''))) {
        if (isLibrary(d) && !seen.has(d)) {
          seen.add(d);
          next.push(d);
        }
      }
    }
    todo = next;
  }
  if (seen.size === 1) throw new Error(`apt-cache depends ${root} names no library packages (run apt-get update?)`);
  return [...seen].sort();
}

/** Follows symlinks inside `root`: absolute targets are taken relative to root, not the host. */
function resolveInside(root: string, path: string): string {
  let p = path;
  for (let hops = 0; hops < 40; hops++) {
    if (!existsSync(p) && !isSymlink(p)) throw new Error(`${p} is missing from the unpacked packages`);
    if (!isSymlink(p)) return p;
    const target = readlinkSync(p);
    p = target.startsWith('/') ? join(root, target) : join(dirname(p), target);
  }
  throw new Error(`${path}: too many levels of symbolic links`);
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** `ldd` lines `libx.so.1 => /path/libx.so.1 (0x...)`: soname -> path (or "not found"). */
export function parseLdd(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\s*(\S+) => (.+?)(?: \(0x[0-9a-f]+\))?\s*$/.exec(line);
    if (m) out.set(m[1]!, m[2]!);
  }
  return out;
}

function debVersion(deb: string): string {
  const m = /^[^_]+_([^_]+)_/.exec(deb);
  return m ? decodeURIComponent(m[1]!) : '?';
}

function treeBytes(dir: string): number {
  let n = 0;
  for (const name of readdirSync(dir)) {
    const st = statSync(join(dir, name));
    n += st.isDirectory() ? treeBytes(join(dir, name)) : st.size;
  }
  return n;
}

const FIO_WRAPPER = `#!/bin/sh
# fio through the disk's own dynamic loader and libraries: the guest has no /lib.
d=$(dirname "$0")
exec "$d/lib/${LOADER}" --library-path "$d/lib" "$d/bin/fio" "$@"
`;

/**
 * Builds (once; later calls return the cached disk) the fio tools disk under the lab cache.
 * Needs apt-get, apt-cache, dpkg-deb, ldd and mkfs.ext2 (e2fsprogs) on the host.
 */
export function buildFioToolsDisk(log: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): ToolsDisk {
  const dir = toolsDir();
  const image = join(dir, 'fio-tools.ext2');
  const infoFile = join(dir, 'fio-tools.json');
  if (existsSync(image) && existsSync(infoFile)) {
    const info = JSON.parse(readFileSync(infoFile, 'utf8')) as ToolsDisk & { format?: number };
    if (info.format === TOOLS_FORMAT) return { image, packages: info.packages, contentBytes: info.contentBytes };
  }
  const debs = join(dir, 'debs');
  mkdirSync(debs, { recursive: true });
  const packages = libraryClosure(ROOT_PACKAGE);
  const have = (p: string): string | undefined => readdirSync(debs).find((n) => n.startsWith(`${p}_`) && n.endsWith('.deb'));
  const missing = packages.filter((p) => !have(p));
  if (missing.length > 0) {
    log(`tools disk: downloading ${missing.length} Debian packages (fio and its libraries)`);
    run('apt-get', ['download', '-q', ...missing], { cwd: debs });
  }
  const stage = join(dir, `stage.${process.pid}.partial`);
  const tree = join(dir, `tree.${process.pid}.partial`);
  rmSync(stage, { recursive: true, force: true });
  rmSync(tree, { recursive: true, force: true });
  try {
    const versions: string[] = [];
    for (const p of packages) {
      const deb = have(p);
      if (!deb) throw new Error(`apt-get download ${p} left no .deb in ${debs}`);
      run('dpkg-deb', ['-x', join(debs, deb), stage]);
      versions.push(`${p}=${debVersion(deb)}`);
    }
    const fio = join(stage, 'usr', 'bin', 'fio');
    if (!existsSync(fio)) throw new Error(`package ${ROOT_PACKAGE} holds no usr/bin/fio`);
    // Every directory of the unpacked packages that holds shared objects, so ldd resolves
    // each library from the packages and never from the host.
    const libDirs = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib', 'usr/lib']
      .map((d) => join(stage, d)).filter((d) => existsSync(d));
    for (const d of [...libDirs]) {
      for (const name of readdirSync(d)) {
        const sub = join(d, name);
        if (!isSymlink(sub) && statSync(sub).isDirectory() && readdirSync(sub).some((f) => f.includes('.so'))) libDirs.push(sub);
      }
    }
    const libs = parseLdd(run('ldd', [fio], { env: { ...process.env, LD_LIBRARY_PATH: libDirs.join(':') } }));
    mkdirSync(join(tree, 'bin'), { recursive: true });
    mkdirSync(join(tree, 'lib'), { recursive: true });
    copyFileSync(fio, join(tree, 'bin', 'fio'));
    chmodSync(join(tree, 'bin', 'fio'), 0o755);
    for (const [soname, path] of libs) {
      if (path === 'not found') throw new Error(`tools disk: fio's library ${soname} is in none of the downloaded packages`);
      if (!path.startsWith(stage)) {
        throw new Error(`tools disk: fio's library ${soname} resolved to ${path}, not to the downloaded packages`);
      }
      copyFileSync(resolveInside(stage, path), join(tree, 'lib', soname));
    }
    const loader = [join(stage, 'lib64', LOADER), join(stage, 'lib', 'x86_64-linux-gnu', LOADER), join(stage, 'usr', 'lib', 'x86_64-linux-gnu', LOADER)]
      .find((p) => existsSync(p) || isSymlink(p));
    if (!loader) throw new Error(`tools disk: libc6 holds no ${LOADER}`);
    copyFileSync(resolveInside(stage, loader), join(tree, 'lib', LOADER));
    chmodSync(join(tree, 'lib', LOADER), 0o755);
    writeFileSync(join(tree, TOOLS_FIO), FIO_WRAPPER, { mode: 0o755 });
    writeFileSync(join(tree, 'PACKAGES'), versions.join('\n') + '\n');
    const contentBytes = treeBytes(tree);
    // Room for ext2's metadata (inode tables, bitmaps) on top of the files.
    const sizeMiB = Math.ceil((contentBytes * 1.1) / (1 << 20)) + 16;
    const partial = `${image}.${process.pid}.partial`;
    log(`tools disk: ${libs.size} libraries, ${(contentBytes / 1e6).toFixed(1)} MB; mkfs.ext2 -d (${sizeMiB} MiB)`);
    run('mkfs.ext2', ['-q', '-F', '-L', TOOLS_LABEL, '-m', '0', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, partial, `${sizeMiB}M`]);
    renameSync(partial, image);
    const info = { format: TOOLS_FORMAT, image, packages: versions, contentBytes, builtAt: new Date().toISOString() };
    writeFileSync(infoFile, JSON.stringify(info, null, 2) + '\n');
    return { image, packages: versions, contentBytes };
  } finally {
    rmSync(stage, { recursive: true, force: true });
    rmSync(tree, { recursive: true, force: true });
  }
}
