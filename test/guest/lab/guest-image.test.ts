// The guest image, checked where Linux guests run (inside the lab on a machine with a slow
// /dev/kvm): it exists, carries the virtio modules in dependency order, and a guest booted
// from it with QEMU on this KVM loads them, runs an overlay's /test.sh and reports its status.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { guestInitrdWith } from '../../../src/lab/guest-image.js';
import { guestInitrdPath, guestKernelPath } from '../../../src/lab/paths.js';
import { watchForStalls } from '../../support/stall-watchdog.js';

watchForStalls(); // a blocked main thread fails this file with a diagnosis instead of hanging the suite

const VIRTIO_MODULES = [
  'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_blk',
  'failover', 'net_failover', 'virtio_net', 'virtio_console', 'virtio_rng', 'virtio_balloon',
];

test('the guest kernel and initrd exist', () => {
  assert.ok(statSync(guestKernelPath()).size > 1 << 20, 'kernel smaller than 1 MiB');
  assert.ok(statSync(guestInitrdPath()).size > 100_000, 'initrd smaller than 100 kB');
});

test('the guest initrd lists the virtio modules, each after its dependencies', () => {
  const archive = gunzipSync(readFileSync(guestInitrdPath()));
  const r = spawnSync('cpio', ['-t'], { input: archive, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const names = r.stdout.split('\n').map((l) => l.trim());
  const position = (m: string): number => names.indexOf(`lib/modules/${m}.ko`);
  for (const m of VIRTIO_MODULES) assert.ok(position(m) >= 0, `lib/modules/${m}.ko missing from ${guestInitrdPath()}`);
  assert.ok(names.includes('init') && names.includes('bin/busybox'));
  const before = (a: string, b: string): void => assert.ok(position(a) < position(b), `${a} must load before ${b}`);
  before('virtio_ring', 'virtio');
  before('virtio', 'virtio_pci');
  before('virtio_pci_modern_dev', 'virtio_pci');
  before('failover', 'net_failover');
  before('net_failover', 'virtio_net');
});

test('a guest booted from the image with QEMU on this KVM loads the modules and runs /test.sh', async () => {
  const script = [
    'for m in virtio_pci virtio_blk virtio_net virtio_console virtio_rng virtio_balloon; do',
    '  grep -q "^$m " /proc/modules || { echo "module $m not loaded"; exit 1; }',
    'done',
    'echo "virtio devices: $(ls /sys/bus/virtio/devices | wc -l)"',
    'cat /data/word.txt',
    'exit 5',
  ].join('\n');
  const initrd = await guestInitrdWith(script, { 'data/word.txt': 'overlay-file-ok\n' });
  const args = [
    '-enable-kvm', '-cpu', 'host', '-m', '256', '-smp', '1', '-nodefaults', '-display', 'none', '-no-reboot',
    '-serial', 'stdio', '-kernel', guestKernelPath(), '-initrd', initrd,
    '-append', 'console=ttyS0 panic=-1 quiet',
    '-device', 'virtio-rng-pci', '-device', 'virtio-balloon-pci', '-device', 'virtio-serial-pci',
    '-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0',
  ];
  const output = await new Promise<string>((resolve, reject) => {
    const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (c: Buffer) => { text += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { text += c.toString(); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`guest did not power off within 90 s:\n${text}`)); }, 90_000);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', () => { clearTimeout(timer); resolve(text); });
  });
  assert.match(output, /tsvirt-guest: userspace up/);
  assert.doesNotMatch(output, /insmod .* failed|not loaded/);
  const devices = /virtio devices: (\d+)/.exec(output);
  assert.ok(devices && Number(devices[1]) >= 4, `expected the 4 virtio devices to be bound:\n${output}`);
  assert.match(output, /overlay-file-ok/);
  assert.match(output, /tsvirt-guest: exit 5/);
});
