// Kernel module selection: find each wanted module in the unpacked package and put its
// dependencies before it. Debian's package ships no modules.dep (depmod writes it at
// install time), so each module's own "depends" field is read with modinfo.
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

export interface ModuleFile {
  name: string;
  /** Path relative to the modules directory, e.g. drivers/virtio/virtio.ko */
  path: string;
}

/** Module names treat '-' and '_' alike (the kernel does too). */
function canonical(name: string): string {
  return name.replace(/-/g, '_');
}

function indexModules(dir: string): Map<string, string> {
  const index = new Map<string, string>();
  const walk = (d: string): void => {
    for (const n of readdirSync(d)) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p);
      else {
        const m = /^(.*)\.ko(\.xz|\.zst|\.gz)?$/.exec(n);
        if (m) index.set(canonical(m[1]!), relative(dir, p));
      }
    }
  };
  walk(dir);
  return index;
}

function dependsOf(file: string): string[] {
  const out = execFileSync('modinfo', ['-F', 'depends', file], { encoding: 'utf8' }).trim();
  return out === '' ? [] : out.split(',').map((s) => canonical(s.trim())).filter((s) => s !== '');
}

/**
 * The wanted modules plus everything they depend on, each after its dependencies
 * (and otherwise in the order asked for). A name the kernel has built in is skipped
 * when `optional` lists it; any other missing module is an error.
 */
export function resolveModules(modulesDir: string, wanted: string[], optional: string[] = []): ModuleFile[] {
  const index = indexModules(modulesDir);
  const optionalSet = new Set(optional.map(canonical));
  const ordered: ModuleFile[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (raw: string): void => {
    const name = canonical(raw);
    if (done.has(name)) return;
    if (visiting.has(name)) throw new Error(`kernel module dependency cycle through ${name}`);
    const path = index.get(name);
    if (!path) {
      if (optionalSet.has(name)) return;
      throw new Error(`kernel module ${name} not found under ${modulesDir}`);
    }
    visiting.add(name);
    for (const dep of dependsOf(join(modulesDir, path))) visit(dep);
    visiting.delete(name);
    done.add(name);
    ordered.push({ name, path });
  };
  for (const w of wanted) visit(w);
  return ordered;
}
