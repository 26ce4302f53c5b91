// The lab host: Debian's cloud kernel booted by QEMU (TCG, with AMD SVM emulated) with an
// init that loads kvm_amd, so that inside it /dev/kvm is a real, fast hardware-style KVM.
//
// How the bulky parts (node ~95 MB, QEMU and its libraries ~50 MB, ~160 MB in all) get in.
// Both ways were built and timed on a 2-core machine, from QEMU start to the command running
// (`node -e 1` inside, two runs each):
//   * one big uncompressed initramfs (161 MB): 8.7-9.9 s to the command, 12.9-13.0 s in all.
//     The kernel copies every byte into its page cache at each boot, under TCG, used or not
//     (and gzip would be slower still: decompression under TCG is the expensive part);
//   * a read-only ext4 image (mkfs.ext4 -d, no journal) on virtio-blk mounted as /usr, with a
//     5.8 MB initramfs: 5.2-5.6 s to the command, 7.6-8.0 s in all. Only the pages node and
//     QEMU touch are read.
// So the disk is the default; TSVIRT_LAB_LAYOUT=initramfs builds the other one to re-measure.
// The build itself takes a few seconds either way (mkfs.ext4 -d copies at disk speed).

import { execFileSync } from 'node:child_process';
import { readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { addBusybox } from './busybox.js';
import { writeCpioFile } from './cpio.js';
import type { ModuleFile } from './modules.js';
import { SysrootStager } from './sysroot.js';

export type LabLayout = 'disk' | 'initramfs';

export function labLayout(): LabLayout {
  const v = process.env.TSVIRT_LAB_LAYOUT;
  if (v === undefined || v === '' || v === 'disk') return 'disk';
  if (v === 'initramfs') return 'initramfs';
  throw new Error(`TSVIRT_LAB_LAYOUT=${v}: expected disk or initramfs`);
}

/** Modules of the lab host; kvm's chain first, in this order, then what later work needs. */
export const HOST_MODULES = [
  'irqbypass', 'kvm', 'kvm_amd',
  'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_blk',
  'vhost', 'tun', 'tap', 'vhost_net', 'vfio', 'vfio_iommu_type1', 'vfio_pci',
];

/** Serial number of the virtio disk holding the lab's /usr, and of the results disk. */
export const ROOT_DISK_SERIAL = 'tsvirt-lab-usr';
export const RESULTS_DISK_SERIAL = 'tsvirt-lab-results';

// The lab host's init. Kernel messages and the "tsvirt-lab:" status lines go to ttyS0 (a
// log the host keeps); the command's stdout/stderr get ttyS1/ttyS2 to themselves, so the
// two never mix. /lab/command.sh (added per run by labExec) sets the command and options.
// Every wait is bounded; any failure prints one "tsvirt-lab: error:" line and powers off.
export const HOST_INIT = `#!/bin/sh
export PATH=/bin:/usr/bin
say() { echo "tsvirt-lab: $*"; }
fail() { say "error: $*"; poweroff -f; sleep 10; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o size=50% tmpfs /tmp
while read -r m; do
  insmod "/lib/modules-lab/$m.ko" 2>/dev/null || say "warning: insmod $m failed"
done < /lib/modules-lab/load-order
grep -q svm /proc/cpuinfo || fail "the lab CPU offers no svm (QEMU must run with -cpu ...,+svm)"
[ -c /dev/kvm ] || fail "/dev/kvm did not appear in the lab (kvm_amd did not load)"
disk_with_serial() {
  for d in /sys/block/vd*; do
    [ -e "$d/serial" ] && [ "$(cat "$d/serial")" = "$1" ] && { echo "/dev/\${d##*/}"; return 0; }
  done
  return 1
}
if [ -f /lab/usr-on-disk ]; then
  i=0
  until dev=$(disk_with_serial ${ROOT_DISK_SERIAL}); do
    i=$((i+1)); [ $i -gt 200 ] && fail "the lab /usr disk did not appear"
    sleep 0.05
  done
  mount -t ext4 -o ro "$dev" /usr || fail "cannot mount the lab /usr disk $dev"
fi
[ -f /lab/command.sh ] || fail "no /lab/command.sh in the lab initramfs"
. /lab/command.sh
[ -d "$LAB_DIR" ] || fail "project directory $LAB_DIR missing in the lab"
cd "$LAB_DIR"
say "running: $LAB_TITLE"
if [ "$LAB_INTERACTIVE" = 1 ]; then
  # QEMU's stdio backend already turns \n into \r\n on the user's terminal: no onlcr here.
  # The command runs as a child of a session-leading shell that drains the terminal (stty
  # sets attributes with TCSADRAIN) before it exits: a session leader's exit hangs the
  # terminal up, which would discard output still queued.
  stty -F /dev/ttyS1 sane -onlcr 2>/dev/null
  setsid -c sh -c '"$@"; rc=$?; stty -onlcr 2>/dev/null; exit $rc' lab "$@" <>/dev/ttyS1 >&0 2>&0 &
else
  stty -F /dev/ttyS1 raw -echo 2>/dev/null
  stty -F /dev/ttyS2 raw -echo 2>/dev/null
  "$@" </dev/null >/dev/ttyS1 2>/dev/ttyS2 &
fi
pid=$!
# A sign of life for the host side, which ends a lab that falls silent (labExec's silenceSeconds).
( while sleep "\${LAB_HEARTBEAT:-30}"; do say "alive"; done ) 2>/dev/null &
heartbeat=$!
# The run's time limit, enforced here so that what the command wrote can still be copied
# back: the rest of LAB_TIMEOUT (counted from the lab's power-on), then TERM, then KILL.
left=$((LAB_TIMEOUT - $(cut -d. -f1 /proc/uptime)))
[ $left -lt 1 ] && left=1
( sleep $left; say "timeout"; kill -TERM $pid; sleep 5; kill -KILL $pid ) 2>/dev/null &
watchdog=$!
wait $pid
rc=$?
kill $watchdog $heartbeat 2>/dev/null
if [ -n "$LAB_COPY_BACK" ] && out=$(disk_with_serial ${RESULTS_DISK_SERIAL}); then
  keep=""
  for p in $LAB_COPY_BACK; do [ -e "$p" ] && keep="$keep $p"; done
  [ -n "$keep" ] && tar -cf "$out" $keep 2>/dev/null
  sync
fi
say "exit $rc"
poweroff -f
sleep 10
`;

export interface HostImage {
  initrd: string;
  disk: string | null;
  stageBytes: number;
}

/**
 * Builds the lab host image into `dir`: the initramfs (busybox, init, modules) and, for the
 * disk layout, the ext4 image of /usr. Returns the paths.
 */
export function buildHostImage(
  dir: string, modulesDir: string, modules: ModuleFile[], layout: LabLayout, log: (line: string) => void,
): HostImage {
  const stage = join(dir, `stage-usr-${process.pid}`);
  const stager = new SysrootStager(stage);
  log('staging node, qemu-system-x86_64, their libraries and firmware');
  stager.addExecutable('node', '/usr/bin/node');
  stager.addExecutable('qemu-system-x86_64', '/usr/bin/qemu-system-x86_64');
  stager.addFirmware();
  const stageBytes = Number(execFileSync('du', ['-sb', stage], { encoding: 'utf8' }).split('\t')[0]);

  let disk: string | null = null;
  if (layout === 'disk') {
    disk = join(dir, 'host-root.ext4');
    const sizeMiB = Math.ceil((stageBytes * 1.15) / (1 << 20)) + 16;
    log(`making ${sizeMiB} MiB ext4 image of /usr (mkfs.ext4 -d)`);
    rmSync(disk, { force: true });
    execFileSync('mkfs.ext4', [
      '-q', '-F', '-L', 'tsvirt-lab-usr', '-O', '^has_journal', '-m', '0', '-E', 'root_owner=0:0',
      '-d', join(stage, 'usr'), `${disk}.${process.pid}.partial`, `${sizeMiB}M`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    renameSync(`${disk}.${process.pid}.partial`, disk);
  }

  const initrd = join(dir, 'host-initrd.cpio');
  log(`writing the lab initramfs (${layout === 'disk' ? 'small' : 'with /usr inside'})`);
  // Uncompressed: decompressing under TCG costs more than copying the extra bytes.
  writeCpioFile(`${initrd}.${process.pid}.partial`, (cpio) => {
    for (const d of ['dev', 'proc', 'sys', 'tmp', 'run', 'root', 'etc', 'lab', 'usr', 'lib/modules-lab']) cpio.directory(d);
    cpio.charDevice('dev/console', 5, 1);
    // Merged /usr, as on Debian 12: the loader and libraries are found through these.
    cpio.symlink('lib64', 'usr/lib64');
    cpio.symlink('lib/x86_64-linux-gnu', '../usr/lib/x86_64-linux-gnu');
    addBusybox(cpio);
    for (const m of modules) cpio.file(`lib/modules-lab/${m.name}.ko`, readFileSync(join(modulesDir, m.path)));
    cpio.file('lib/modules-lab/load-order', modules.map((m) => m.name).join('\n') + '\n');
    cpio.file('init', HOST_INIT, 0o755);
    if (layout === 'disk') cpio.file('lab/usr-on-disk', '');
    else cpio.copyFromHost(join(stage, 'usr'), 'usr');
  });
  renameSync(`${initrd}.${process.pid}.partial`, initrd);
  rmSync(stage, { recursive: true, force: true });
  log(`lab initramfs ${(statSync(initrd).size / 1e6).toFixed(1)} MB${disk ? `, /usr disk ${(statSync(disk).size / 1e6).toFixed(1)} MB` : ''}`);
  return { initrd, disk, stageBytes };
}
