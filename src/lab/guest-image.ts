// The image tsvirt boots as a Linux guest: Debian's cloud kernel plus a small gzip'd
// initramfs (busybox, the virtio modules, an init). Tests add their own script with
// guestInitrdWith(), which appends a second, uncompressed cpio archive: the kernel unpacks
// concatenated archives in order, so the base image never needs rebuilding.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { addBusybox } from './busybox.js';
import { cpioArchive } from './cpio.js';
import type { ModuleFile } from './modules.js';
import { guestInitrdPath, labCacheDir } from './paths.js';

/** Modules a guest needs for tsvirt's virtio devices, before dependency resolution. */
export const GUEST_MODULES = [
  'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci',
  'virtio_blk', 'failover', 'net_failover', 'virtio_net', 'virtio_console',
  'rng_core', 'virtio_rng', 'virtio_balloon',
];
/** Built into Debian's cloud kernel (HW_RANDOM=y), so absent as a module: that is fine. */
export const GUEST_OPTIONAL_MODULES = ['rng_core'];

export const GUEST_USERSPACE_LINE = 'tsvirt-guest: userspace up';

// The guest's init. It prints the userspace line as soon as the modules are in (the boot
// benchmark measures time to it), then runs /test.sh when an overlay supplied one, else
// gives the console an interactive shell (the demo).
const GUEST_INIT = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run && mount -t tmpfs tmpfs /tmp
while read -r m; do
  insmod "/lib/modules/$m.ko" || echo "tsvirt-guest: insmod $m failed"
done < /lib/modules/load-order
# With console=hvc0 the console is a virtio-serial port: the kernel found no console when it
# started init (virtio_console is a module), so our output went nowhere until now. hvc0
# appears once the driver has taken the host's port messages; then it carries us.
case " $(cat /proc/cmdline) " in *" console=hvc0 "*)
  i=0
  while [ ! -c /dev/hvc0 ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
  [ -c /dev/hvc0 ] && exec </dev/hvc0 >/dev/hvc0 2>&1
esac
echo "${GUEST_USERSPACE_LINE}"
if [ -f /test.sh ]; then
  sh /test.sh
  echo "tsvirt-guest: exit $?"
else
  echo "tsvirt-guest: interactive shell; exit it to power off"
  setsid cttyhack sh -l
fi
sync
poweroff -f
`;

/** Writes the base guest initrd to `path`; returns its size. */
export function buildGuestInitrd(path: string, modulesDir: string, modules: ModuleFile[]): number {
  const archive = cpioArchive((cpio) => {
    for (const d of ['dev', 'proc', 'sys', 'tmp', 'run', 'root', 'etc', 'lib/modules']) cpio.directory(d);
    cpio.charDevice('dev/console', 5, 1);
    addBusybox(cpio);
    for (const m of modules) cpio.file(`lib/modules/${m.name}.ko`, readFileSync(join(modulesDir, m.path)));
    cpio.file('lib/modules/load-order', modules.map((m) => m.name).join('\n') + '\n');
    cpio.file('etc/profile', 'export PS1="guest# "\n');
    cpio.file('init', GUEST_INIT, 0o755);
  });
  const gz = gzipSync(archive, { level: 9 });
  writeFileSync(`${path}.${process.pid}.partial`, gz);
  renameSync(`${path}.${process.pid}.partial`, path);
  return gz.length;
}

/**
 * An initrd that boots the guest image and runs `script` (as /test.sh, mode 0755) with
 * `files` (archive path -> content) beside it. The result is cached by content under the lab
 * cache, so asking twice for the same overlay costs nothing.
 */
export async function guestInitrdWith(script: string, files: Record<string, Uint8Array | string> = {}): Promise<string> {
  const base = guestInitrdPath();
  const overlay = cpioArchive((cpio) => {
    cpio.file('test.sh', script, 0o755);
    for (const [path, data] of Object.entries(files).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      cpio.file(path, data, 0o644);
    }
  });
  const baseStat = statSync(base);
  const key = createHash('sha256')
    .update(`${base}:${baseStat.size}:${baseStat.mtimeMs}\n`)
    .update(overlay)
    .digest('hex')
    .slice(0, 24);
  const dir = join(labCacheDir(), 'overlays');
  const out = join(dir, `guest-${key}.img`);
  if (existsSync(out)) {
    const now = new Date();
    utimesSync(out, now, now); // recently used: pruning keeps it
    return out;
  }
  mkdirSync(dir, { recursive: true });
  // The kernel looks for the next archive at a 4-byte boundary after the gzip stream.
  const baseBytes = readFileSync(base);
  const pad = new Uint8Array((4 - (baseBytes.length % 4)) % 4);
  const tmp = `${out}.${process.pid}.partial`;
  writeFileSync(tmp, Buffer.concat([baseBytes, pad, overlay]));
  renameSync(tmp, out);
  pruneOverlays(dir);
  return out;
}

const OVERLAYS_KEPT = 64;

/** Keeps the overlay cache bounded: the least recently written files go first. */
function pruneOverlays(dir: string): void {
  const files = readdirSync(dir)
    .filter((n) => n.startsWith('guest-') && n.endsWith('.img'))
    .map((n) => ({ path: join(dir, n), mtime: statSync(join(dir, n)).mtimeMs }))
    .sort((a, b) => a.mtime - b.mtime);
  for (const f of files.slice(0, Math.max(0, files.length - OVERLAYS_KEPT))) rmSync(f.path, { force: true });
}
