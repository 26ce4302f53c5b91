// The machine's virtio wiring on this host's KVM (no Linux guest needed): a Machine with two
// disks, a virtio-serial channel and a virtio-rng starts, QMP lists the devices on the PCI bus
// with their BARs, and the machine stops cleanly (images closed, socket gone).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../../../src/vmm/machine.js';
import { QmpClient, startQmpServers } from '../../../src/qmp/index.js';
import { createQcow2 } from '../../../src/block/qcow2/create.js';
import { openImage } from '../../../src/block/driver.js';
import { PCI_MMIO32_SIZE, PCI_MMIO32_START } from '../../../src/arch/x86/layout.js';
import { GUEST_ADDRESS, helloGuest } from './micro-guests.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvirt-virtio-wiring-'));

interface QmpRegion { bar: number; type: string; address: number; size: number; mem_type_64?: boolean }
interface QmpDevice {
  bus: number; slot: number; function: number; qdev_id: string;
  id: { vendor: number; device: number; subsystem: number; 'subsystem-vendor': number };
  class_info: { class: number }; irq?: number; regions: QmpRegion[];
}

test('a machine with disks, a channel and an rng: query-pci lists them with their BARs; stop closes everything', { timeout: 60_000 }, async () => {
  const raw = join(dir, 'raw.img');
  writeFileSync(raw, Buffer.alloc(4 << 20));
  const qcow2 = join(dir, 'disk.qcow2');
  await createQcow2(qcow2, { size: 64n << 20n });
  const channel = join(dir, 'port.sock');
  const machine = await Machine.create({
    cpus: 2, memory: '64M',
    disks: [`${raw},format=raw,serial=RAW0`, `${qcow2},format=qcow2,readonly,physical_block_size=4096`],
    channels: [`name=org.tsvirt.test,path=${channel}`],
    rng: 'rate=1024/100',
  }, { rawBoot: { code: helloGuest('V'), address: GUEST_ADDRESS } });
  const qmpSocket = join(dir, 'qmp.sock');
  const server = await startQmpServers(machine, [`unix:${qmpSocket},server=on,wait=off`]);
  const qmp = await QmpClient.connect(qmpSocket, { timeoutMs: 10_000 });
  try {
    await machine.start();
    const buses = await qmp.execute('query-pci') as Array<{ bus: number; devices: QmpDevice[] }>;
    assert.deepEqual(buses.map((b) => b.bus), [0]);
    const devices = buses[0]!.devices;
    assert.deepEqual(devices.map((d) => [d.slot, d.qdev_id]), [
      [0, 'pcie-host-bridge'], [1, 'virtio-blk0'], [2, 'virtio-blk1'], [3, 'virtio-serial0'], [4, 'virtio-rng0'],
    ]);
    // Modern virtio-pci: vendor 0x1af4, device 0x1040 + virtio device type (2 blk, 3 console, 4 rng).
    assert.deepEqual(devices.slice(1).map((d) => [d.id.vendor, d.id.device]), [
      [0x1af4, 0x1042], [0x1af4, 0x1042], [0x1af4, 0x1043], [0x1af4, 0x1044],
    ]);
    assert.deepEqual(devices.slice(1).map((d) => d.class_info.class), [0x0100, 0x0100, 0x0780, 0x00ff]);
    const bars = devices.flatMap((d) => d.regions.map((r) => ({ ...r, owner: d.qdev_id })));
    for (const d of devices.slice(1)) assert.ok(d.regions.length > 0, `${d.qdev_id} has no BAR`);
    for (const b of bars) {
      assert.equal(b.type, 'memory', `${b.owner} BAR${b.bar}`);
      assert.ok(b.size > 0 && (b.size & (b.size - 1)) === 0, `${b.owner} BAR${b.bar} size ${b.size} is a power of two`);
      assert.equal(b.address % b.size, 0, `${b.owner} BAR${b.bar} at 0x${b.address.toString(16)} is aligned to its size`);
      assert.ok(b.address >= Number(PCI_MMIO32_START) && b.address + b.size <= Number(PCI_MMIO32_START + PCI_MMIO32_SIZE),
        `${b.owner} BAR${b.bar} at 0x${b.address.toString(16)} lies in the 32-bit PCI window`);
    }
    const sorted = [...bars].sort((a, b) => a.address - b.address);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!;
      assert.ok(prev.address + prev.size <= sorted[i]!.address, `${prev.owner} BAR${prev.bar} overlaps ${sorted[i]!.owner} BAR${sorted[i]!.bar}`);
    }

    const block = machine.blockDevices();
    assert.deepEqual(block.map((b) => [b.device, b.filename, b.format, b.readOnly, b.virtualSize]), [
      ['virtio-blk0', raw, 'raw', false, 4 << 20],
      ['virtio-blk1', qcow2, 'qcow2', true, 64 << 20],
    ]);

    // The channel's unix socket server accepts a connection while the machine runs.
    await new Promise<void>((resolve, reject) => {
      const s = connect(channel);
      const timer = setTimeout(() => { s.destroy(); reject(new Error(`no connection to ${channel}`)); }, 5000);
      s.once('connect', () => { clearTimeout(timer); s.end(); resolve(); });
      s.once('error', (err) => { clearTimeout(timer); reject(err); });
    });

    await machine.stop();
    assert.deepEqual(await machine.waitForExit(), { code: 0, reason: 'host-stop' });
    assert.equal(existsSync(channel), false, 'the channel socket is removed at stop');
    // The images were closed: the raw one opens read-write again and keeps its size.
    const again = await openImage(raw, { format: 'raw' });
    assert.equal(again.size(), 4n << 20n);
    await again.close();
  } finally {
    qmp.close();
    await server.close();
    if (!machine.result) await machine.stop();
  }
});

test('machines without virtio options have no PCI bus; a system_reset keeps the devices', { timeout: 60_000 }, async () => {
  const plain = await Machine.create({ memory: '32M' }, { rawBoot: { code: helloGuest('P'), address: GUEST_ADDRESS } });
  assert.deepEqual(plain.pciDevices(), []);
  await plain.stop();

  const machine = await Machine.create({ memory: '32M', rng: true }, { rawBoot: { code: helloGuest('R'), address: GUEST_ADDRESS } });
  try {
    await machine.start();
    const before = machine.pciDevices();
    assert.deepEqual(before.map((d) => d.qdevId), ['pcie-host-bridge', 'virtio-rng0']);
    await machine.reset();
    assert.deepEqual(machine.pciDevices(), before, 'BARs as firmware left them after a reset');
  } finally {
    await machine.stop();
  }
  assert.deepEqual(machine.result, { code: 0, reason: 'host-stop' });
});

test('bad virtio options and images fail Machine.create with one line naming the entry or file', { timeout: 60_000 }, async () => {
  const boot = { rawBoot: { code: helloGuest('E'), address: GUEST_ADDRESS } };
  const rejects = async (config: Parameters<typeof Machine.create>[0], pattern: RegExp): Promise<void> => {
    await assert.rejects(Machine.create({ memory: '32M', ...config }, boot), (err: Error) => {
      assert.equal(err.message.split('\n').length, 1, err.message);
      assert.match(err.message, pattern);
      return true;
    });
  };
  const raw = join(dir, 'small.img');
  writeFileSync(raw, Buffer.alloc(1 << 20));
  await rejects({ disks: [`${raw},format=vmdk`] }, /^config: disks\[0\]: format=vmdk is not raw or qcow2$/);
  await rejects({ disks: [raw, `${raw},logical_block_size=1000`] }, /^config: disks\[1\]: logical_block_size=1000 is not a power of two$/);
  await rejects({ channels: ['name=a,path=/x', 'name=a,path=/y'] }, /^config: channels\[1\]: name=a is used by an earlier channel$/);
  await rejects({ channels: ['path=/x'] }, /^config: channels\[0\]: name=\.\.\. is missing in 'path=\/x'$/);
  await rejects({ rng: 'rate=fast' }, /^config: rng: rate=fast is not BYTES\/PERIOD_MS with both positive$/);
  const missing = join(dir, 'missing.qcow2');
  await rejects({ disks: [`${missing},format=qcow2`] }, new RegExp(missing.replace(/[.]/g, '\\.')));
  await rejects({ disks: [`${raw},addr=3`], rng: 'addr=3' }, /slot 3 is already used by virtio-blk0/);
});

test('consoleDevice "virtio" alone gives the machine a PCI bus with a virtio-serial device; bad values name the field', { timeout: 60_000 }, async () => {
  const machine = await Machine.create({ memory: '32M', consoleDevice: 'virtio' }, { rawBoot: { code: helloGuest('C'), address: GUEST_ADDRESS } });
  try {
    await machine.start();
    const devices = machine.pciDevices();
    assert.deepEqual(devices.map((d) => d.qdevId), ['pcie-host-bridge', 'virtio-serial0']);
    assert.deepEqual([devices[1]!.vendorId, devices[1]!.deviceId], [0x1af4, 0x1043]);
  } finally {
    await machine.stop();
  }
  const serial = await Machine.create({ memory: '32M', consoleDevice: 'serial' }, { rawBoot: { code: helloGuest('S'), address: GUEST_ADDRESS } });
  assert.deepEqual(serial.pciDevices(), [], 'the serial console needs no PCI bus');
  await serial.stop();
  await assert.rejects(Machine.create({ memory: '32M', consoleDevice: 'hvc' as 'virtio' }), /^ConfigError: config: consoleDevice: must be equal to one of the allowed values$/);
});
