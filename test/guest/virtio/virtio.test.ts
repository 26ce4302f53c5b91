// virtio devices in a real Linux guest (the lab's Debian cloud kernel on tsvirt). Boots are
// expensive in the lab, so there are three: the first checks everything it can (PCI enumeration,
// disk serials and topology, a read-only disk, an ext2 filesystem made, written and synced on
// a qcow2 disk, virtio-serial both ways, virtio-rng), the second re-reads the filesystem; a
// third boots with the guest console on virtio-serial (hvc0).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, type MachineExit } from '../../../src/vmm/machine.js';
import type { MachineConfig } from '../../../src/vmm/config.js';
import { guestKernelPath } from '../../../src/lab/paths.js';
import { GUEST_USERSPACE_LINE, guestInitrdWith } from '../../../src/lab/guest-image.js';
import { createQcow2 } from '../../../src/block/qcow2/create.js';
import { openImage } from '../../../src/block/driver.js';
import { BufferIO, runImg } from '../../../src/img/index.js';
import { watchForStalls } from '../../support/stall-watchdog.js';

watchForStalls(); // a blocked main thread fails this file with a diagnosis instead of hanging the suite

const BOOT_TIMEOUT_MS = 300_000;
const APPEND = 'console=ttyS0 reboot=k panic=-1 quiet';
const CHANNEL = 'org.tsvirt.test';
const RO_MARKER = 'tsvirt-readonly-disk';

const dir = mkdtempSync(join(tmpdir(), 'tsvirt-guest-virtio-'));
const dataDisk = join(dir, 'data.qcow2');
const roDisk = join(dir, 'ro.img');
const channelSocket = join(dir, 'channel.sock');

// Finds the disks by serial (probe order is not guaranteed), sets DATA and RO.
const FIND_DISKS = `
for b in /sys/block/vd*; do
  n=\${b##*/}; s=$(cat $b/serial 2>/dev/null)
  case "$s" in DATA0) DATA=$n;; RO0) RO=$n;; esac
done
echo "fact data=\${DATA:-none} ro=\${RO:-none}"
`;

const FIRST_BOOT = `${FIND_DISKS}
echo "fact pci=$(for d in /sys/bus/pci/devices/*; do printf '%s:%s ' $(cat $d/vendor) $(cat $d/device); done)"
q=/sys/block/$RO/queue
echo "fact ro_topology=$(cat $q/logical_block_size) $(cat $q/physical_block_size) $(cat $q/minimum_io_size) $(cat $q/optimal_io_size) $(cat /sys/block/$RO/alignment_offset)"
echo "fact data_topology=$(cat /sys/block/$DATA/queue/logical_block_size) $(cat /sys/block/$DATA/queue/physical_block_size)"
echo "fact ro_flag=$(cat /sys/block/$RO/ro)"
echo "fact ro_marker=$(dd if=/dev/$RO bs=${RO_MARKER.length} count=1 2>/dev/null)"
if dd if=/dev/zero of=/dev/$RO bs=4096 count=1 conv=fsync 2>/dev/null; then echo "fact ro_write=accepted"; else echo "fact ro_write=refused"; fi

echo "fact rng_current=$(cat /sys/class/misc/hw_random/rng_current)"
mke2fs -q /dev/$DATA >/dev/null 2>&1 || mke2fs /dev/$DATA
mkdir -p /mnt && mount /dev/$DATA /mnt && echo "fact mounted=yes"
dd if=/dev/hwrng of=/mnt/random.bin bs=4096 count=64 conv=fsync 2>/dev/null
echo "written by the first boot" > /mnt/hello.txt
sync
echo "fact random_size=$(wc -c < /mnt/random.bin)"
echo "fact random_md5=$(md5sum /mnt/random.bin | cut -d' ' -f1)"
umount /mnt && echo "fact umount=ok"

PORT=none
for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name 2>/dev/null)" = ${CHANNEL} ] && PORT=/dev/\${p##*/}; done
echo "fact port=$PORT"
exec 3<>$PORT
echo "fact port_open=yes"
# Until the host side connects, a read of the port returns end-of-file at once (Linux's
# virtio_console reports no host as EOF), so poll until the host's line arrives.
line=
for i in $(seq 100); do
  line=$(timeout 60 head -n1 <&3)
  [ -n "$line" ] && break
  sleep 0.2
done
echo "guest-got:$line" >&3
echo "fact port_line=$line"
exec 3>&-
`;

const SECOND_BOOT = `${FIND_DISKS}
mkdir -p /mnt && mount -o ro /dev/$DATA /mnt && echo "fact mounted=yes"
echo "fact random_size=$(wc -c < /mnt/random.bin)"
echo "fact random_md5=$(md5sum /mnt/random.bin | cut -d' ' -f1)"
echo "fact hello=$(cat /mnt/hello.txt)"
umount /mnt && echo "fact umount=ok"
`;

interface Boot {
  exit: MachineExit;
  output: string;
  facts: Map<string, string>;
}

function factsOf(output: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of output.matchAll(/^fact (\w+)=(.*?)\r?$/gm)) if (!out.has(m[1]!)) out.set(m[1]!, m[2]!.trim());
  return out;
}

/** How long a boot may take to reach userspace before it counts as hung (and is stopped). */
const USERSPACE_TIMEOUT_MS = 60_000;
const TEST_TIMEOUT_MS = BOOT_TIMEOUT_MS + USERSPACE_TIMEOUT_MS;

type OutputWatcher = (output: string, machine: Machine) => void;

/** Boot with `script`; `onOutput` sees the console output as it grows. */
async function boot(config: MachineConfig, script: string, onOutput?: OutputWatcher, append = APPEND): Promise<Boot> {
  const initrd = await guestInitrdWith(script);
  const machine = await Machine.create({ kernel: guestKernelPath(), initrd, append, memory: '256M', cpus: 2, ...config });
  let output = '';
  machine.console.on('data', (d: Buffer) => {
    output += d.toString('latin1');
    onOutput?.(output, machine);
  });
  const timer = setTimeout(() => void machine.stop(), BOOT_TIMEOUT_MS);
  const hung = setTimeout(() => {
    if (!output.includes(GUEST_USERSPACE_LINE)) void machine.stop();
  }, USERSPACE_TIMEOUT_MS);
  try {
    await machine.start();
    const exit = await machine.waitForExit();
    return { exit, output, facts: factsOf(output) };
  } finally {
    clearTimeout(timer);
    clearTimeout(hung);
  }
}

/** The image checker's verdict: tsvirt img check, and qemu-img check where it is installed. */
async function checkImage(path: string): Promise<void> {
  const io = new BufferIO();
  const rc = await runImg(['check', path], io);
  assert.equal(rc, 0, `tsvirt img check ${path}: ${io.stdout}${io.stderr}`);
  assert.match(io.stdout, /No errors were found on the image/);
  let qemuImg = false;
  try {
    execFileSync('qemu-img', ['--version'], { stdio: 'ignore' });
    qemuImg = true;
  } catch { /* not in this environment */ }
  if (qemuImg) execFileSync('qemu-img', ['check', path], { stdio: 'pipe', timeout: 60_000 });
}

const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

let firstMd5 = '';

test('first boot: disks, topology, read-only disk, ext2 on qcow2, virtio-serial both ways, virtio-rng', { timeout: TEST_TIMEOUT_MS }, async () => {
  await createQcow2(dataDisk, { size: 64n << 20n });
  const ro = Buffer.alloc(8 << 20);
  ro.write(RO_MARKER, 0, 'latin1');
  writeFileSync(roDisk, ro);
  const roHash = sha256(roDisk);
  // What the guest should see: physical_block_size=4096 from the option; the minimum and
  // optimal I/O sizes and the alignment from the host file (Linux raises the minimum to the
  // physical block size, and leaves the optimum 0 when the device reports none).
  const hostImage = await openImage(roDisk, { format: 'raw', readOnly: true });
  const topo = hostImage.topology();
  await hostImage.close();
  const minIo = Math.max(4096, Math.floor(topo.minimumIoSize / 512) * 512);
  const optIo = Math.floor(topo.optimalIoSize / 512) * 512;
  const alignment = Math.floor(topo.alignmentOffset / 512) * 512;

  let socket: Socket | undefined;
  let fromGuest = '';
  let sent = false;
  const r = await boot({
    disks: [`${dataDisk},format=qcow2,serial=DATA0`, `${roDisk},format=raw,readonly,serial=RO0,physical_block_size=4096`],
    channels: [`name=${CHANNEL},path=${channelSocket}`],
    rng: true,
  }, FIRST_BOOT, (output) => {
    // The guest has the port open: answer it (data sent before that could be dropped).
    if (!sent && output.includes('fact port_open=yes')) {
      sent = true;
      socket = connect(channelSocket);
      socket.on('data', (d: Buffer) => { fromGuest += d.toString('latin1'); });
      socket.on('error', () => undefined);
      socket.write('hello-from-host\n');
    }
  });
  socket?.destroy();
  const f = r.facts;
  assert.ok(r.output.includes(GUEST_USERSPACE_LINE), `no userspace line in:\n${r.output.slice(-3000)}`);
  assert.ok(r.output.includes('tsvirt-guest: exit 0'), r.output.slice(-3000));
  assert.deepEqual(r.exit, { code: 0, reason: 'guest-shutdown' });

  // Two virtio-blk, a virtio-console, a virtio-rng (modern device ids) and the host bridge.
  const pci = f.get('pci')!.split(/\s+/).sort();
  assert.deepEqual(pci, ['0x1af4:0x1042', '0x1af4:0x1042', '0x1af4:0x1043', '0x1af4:0x1044', '0x1b36:0x0008']);
  assert.notEqual(f.get('data'), undefined);
  assert.doesNotMatch(f.get('data')!, /none/, 'both disks found by serial');

  assert.equal(f.get('ro_topology'), `512 4096 ${minIo} ${optIo} ${alignment}`);
  assert.equal(f.get('data_topology'), '512 512');
  assert.equal(f.get('ro_flag'), '1');
  assert.equal(f.get('ro_marker'), RO_MARKER);
  assert.equal(f.get('ro_write'), 'refused');
  assert.equal(sha256(roDisk), roHash, 'the read-only image is unchanged');

  assert.match(f.get('rng_current')!, /^virtio_rng/);
  assert.equal(f.get('mounted'), 'yes');
  assert.equal(f.get('random_size'), String(64 * 4096));
  assert.match(f.get('random_md5')!, /^[0-9a-f]{32}$/);
  assert.notEqual(f.get('random_md5'), createHash('md5').update(Buffer.alloc(64 * 4096)).digest('hex'), 'random data, not zeroes');
  assert.equal(f.get('umount'), 'ok');
  firstMd5 = f.get('random_md5')!;

  assert.match(f.get('port')!, /^\/dev\/vport\d+p\d+$/);
  assert.equal(f.get('port_line'), 'hello-from-host');
  assert.equal(fromGuest, 'guest-got:hello-from-host\n');

  await checkImage(dataDisk);
});

test('second boot: the files written by the first boot read back', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  if (!firstMd5) {
    t.skip('the first boot did not write the filesystem');
    return;
  }
  const r = await boot({ disks: [`${dataDisk},format=qcow2,serial=DATA0`] }, SECOND_BOOT);
  assert.ok(r.output.includes('tsvirt-guest: exit 0'), r.output.slice(-3000));
  assert.equal(r.facts.get('mounted'), 'yes');
  assert.equal(r.facts.get('random_size'), String(64 * 4096));
  assert.equal(r.facts.get('random_md5'), firstMd5);
  assert.equal(r.facts.get('hello'), 'written by the first boot');
  assert.equal(r.facts.get('umount'), 'ok');
  await checkImage(dataDisk);
});

// The guest console on virtio-serial port 0 (hvc0). The kernel also keeps ttyS0 here (hvc0
// alone is console-only.test.ts), so a kernel message written after hvc0 is up arrives
// twice (once per console), while the script's output, whose stdout is /dev/hvc0, arrives
// once; input goes to the virtio port only. The two consoles reach the host's output by
// different paths, so the script prints nothing more until its input line arrives, which
// the host sends once both copies of the kernel message are in.
const CONSOLE_BOOT = `
echo "fact console_tty=$(cat /sys/class/tty/console/active)"
echo "fact stdout=$(readlink /proc/$$/fd/1)"
echo "<3>tsvirt-kmsg: from the kernel log" > /dev/kmsg
line=$(timeout 60 head -n1)
echo "fact console_line=$line"
`;

test('virtio console: kernel messages and script output reach the host through hvc0, input reaches the guest', { timeout: TEST_TIMEOUT_MS }, async () => {
  // Both consoles feed one host stream and the UART writes a byte per exit, so the script
  // stays quiet (waiting for its input line) until both copies of the kernel message are in.
  const kmsgLines = (output: string): string[] => output.match(/^\[ *\d+\.\d+\] tsvirt-kmsg: from the kernel log\r?$/gm) ?? [];
  let sent = false;
  const r = await boot({ consoleDevice: 'virtio' }, CONSOLE_BOOT, (output, machine) => {
    if (!sent && kmsgLines(output).length === 2) {
      sent = true;
      machine.console.write('hello-console\n');
    }
  }, 'console=ttyS0 console=hvc0 reboot=k panic=-1 quiet');
  const { output, exit } = r;
  const f = factsOf(output);
  assert.equal(kmsgLines(output).length, 2, `the kernel message once from ttyS0 and once from hvc0 in:\n${output.slice(-3000)}`);
  assert.equal(output.split('fact stdout=').length - 1, 1, 'script output only through hvc0');
  assert.ok(output.includes(GUEST_USERSPACE_LINE), output.slice(-3000));
  assert.equal(f.get('console_tty'), 'ttyS0 hvc0');
  assert.equal(f.get('stdout'), '/dev/hvc0');
  assert.equal(f.get('console_line'), 'hello-console');
  assert.ok(output.includes('tsvirt-guest: exit 0'), output.slice(-3000));
  assert.deepEqual(exit, { code: 0, reason: 'guest-shutdown' });
});
