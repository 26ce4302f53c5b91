// Stages the lab host's /usr: Node.js and QEMU with every shared library `ldd` lists and
// the firmware QEMU loads for -kernel boots. Files are copied from this machine, so the lab
// runs exactly the node and QEMU the project is tested with outside it.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readlinkSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';

/** Where QEMU looks for firmware on Debian (its configured firmware path). */
const FIRMWARE_DIRS: Array<{ dir: string; keep: RegExp }> = [
  { dir: '/usr/share/seabios', keep: /./ },
  { dir: '/usr/share/qemu', keep: /^(bios|linuxboot|kvmvapic|pvh|multiboot|qboot|sgabios|vgabios|efi-|pxe-)/ },
  { dir: '/usr/lib/ipxe/qemu', keep: /\.rom$/ },
];

function which(program: string): string {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = join(dir, program);
    if (existsSync(p)) return realpathSync(p);
  }
  throw new Error(`${program} not found on PATH (needed inside the lab)`);
}

/** Shared libraries of an executable, as the absolute paths ldd names (loader included). */
export function sharedLibraries(executable: string): string[] {
  const out = execFileSync('ldd', [executable], { encoding: 'utf8' });
  const libs: string[] = [];
  for (const line of out.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.push(m[1]!);
    else if (/=>\s*not found/.test(line)) throw new Error(`${executable}: shared library ${line.trim()}`);
  }
  return libs;
}

export class SysrootStager {
  private readonly copied = new Set<string>();

  constructor(private readonly root: string) {
    rmSync(root, { recursive: true, force: true });
    mkdirSync(root, { recursive: true });
  }

  /** Copies a host file to the same path in the stage, recreating the symlink it was reached by. */
  addHostFile(path: string, as = path): void {
    const real = realpathSync(path);
    this.copy(real, as === path ? real : as);
    if (as === path) {
      // e.g. /lib/x86_64-linux-gnu/libc.so.6 reached via the /lib -> usr/lib link: keep the
      // name the loader asks for as a link to the real file.
      const linkDir = realpathSync(dirname(path));
      const asked = join(linkDir, basename(path));
      if (asked !== real) this.link(asked, real);
    }
  }

  addExecutable(program: string, as: string): void {
    const path = which(program);
    this.addHostFile(path, as);
    for (const lib of sharedLibraries(path)) this.addHostFile(lib);
  }

  addFirmware(): void {
    for (const { dir, keep } of FIRMWARE_DIRS) {
      if (!existsSync(dir)) continue;
      for (const name of readdirSync(dir)) {
        if (!keep.test(name)) continue;
        const p = join(dir, name);
        if (lstatSync(p).isSymbolicLink()) this.link(p, readlinkSync(p));
        else if (lstatSync(p).isFile()) this.copy(p, p);
      }
    }
  }

  private copy(from: string, to: string): void {
    if (this.copied.has(to)) return;
    underUsr(to);
    const dest = join(this.root, to);
    mkdirSync(dirname(dest), { recursive: true });
    copyFileSync(from, dest);
    this.copied.add(to);
  }

  private link(at: string, target: string): void {
    if (this.copied.has(at)) return;
    underUsr(at);
    const dest = join(this.root, at);
    mkdirSync(dirname(dest), { recursive: true });
    // Relative targets keep working wherever the tree is mounted.
    const t = target.startsWith('/') ? relative(dirname(at), target) : target;
    symlinkSync(t, dest);
    this.copied.add(at);
  }
}

// The stage becomes the lab's /usr (with /lib and /lib64 linked into it, as on a merged-/usr
// Debian), so everything must live below /usr.
function underUsr(path: string): void {
  if (!path.startsWith('/usr/')) {
    throw new Error(`lab sysroot: ${path} is outside /usr (the lab expects a merged-/usr system like Debian 12)`);
  }
}
