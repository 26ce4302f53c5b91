// attachVirtioDevices as the VMM uses it: buses, an interrupt sink, ioeventfds, a disk opener.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Bus } from '../../../src/devices/bus.js';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { attachVirtioDevices, type VirtioMachineHooks } from '../../../src/virtio/attach.js';
import { parseChannelOption, parseDiskOption, parseRngOption } from '../../../src/virtio/config.js';
import { RecordingSink } from './support/driver.js';
import { MemoryDisk } from './support/memory-disk.js';

function hooks(overrides: Partial<VirtioMachineHooks> = {}): VirtioMachineHooks & { doorbells: Set<bigint>; opened: string[] } {
  const doorbells = new Set<bigint>();
  const opened: string[] = [];
  return {
    memory: RegionGuestMemory.ofSize(1 << 20),
    pioBus: new Bus('pio'),
    mmioBus: new Bus('mmio'),
    interrupts: new RecordingSink(),
    ioeventfds: { register: (d) => doorbells.add(d.address), unregister: (d) => doorbells.delete(d.address) },
    vcpuCount: 2,
    openDisk: async (d) => {
      opened.push(d.path);
      return new MemoryDisk(1 << 20, d.readOnly);
    },
    log: () => {},
    doorbells,
    opened,
    ...overrides,
  };
}

test('disks, channels and rng get stable slots; fixed addr= slots are honoured', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-attach-'));
  try {
    const config = {
      disks: [parseDiskOption('a.img'), parseDiskOption('b.img,addr=1,readonly'), parseDiskOption('c.img,num_queues=1')],
      channels: [parseChannelOption(`name=agent,path=${join(dir, 'agent.sock')}`)],
      rng: parseRngOption('rate=100/10'),
    };
    const runs = [];
    for (let i = 0; i < 2; i++) {
      const h = hooks();
      const attached = await attachVirtioDevices(h, config);
      runs.push(attached.devices.map((d) => `${d.slot}:${d.name}`));
      const listing = attached.bridge.list();
      assert.deepEqual(listing.map((d) => d.slot), [0, 1, 2, 3, 4, 5]);
      assert.equal(listing.find((d) => d.qdevId === 'virtio-blk0')!.deviceId, 0x1042);
      assert.equal(listing.find((d) => d.qdevId === 'virtio-serial0')!.deviceId, 0x1043);
      assert.equal(listing.find((d) => d.qdevId === 'virtio-rng0')!.classCode, 0x00ff00);
      // Default queue count follows the vCPU count; num_queues overrides it.
      assert.equal(attached.devices.find((d) => d.name === 'virtio-blk0')!.transport.queues.length, 2);
      assert.equal(attached.devices.find((d) => d.name === 'virtio-blk2')!.transport.queues.length, 1);
      assert.equal(String.fromCharCode(...attached.mcfg.subarray(0, 4)), 'MCFG');
      assert.equal(attached.mcfg[55], 255, 'end bus from a 256 MiB ECAM window');
      assert.equal(attached.routes.length, 128);
      assert.deepEqual(h.opened, ['a.img', 'b.img', 'c.img']);
      await attached.close();
    }
    assert.deepEqual(runs[0], ['2:virtio-blk0', '1:virtio-blk1', '3:virtio-blk2', '4:virtio-serial0', '5:virtio-rng0']);
    assert.deepEqual(runs[0], runs[1]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a failing disk open is reported and nothing stays open', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-attach-'));
  try {
    let closed = 0;
    const h = hooks({
      openDisk: async (d) => {
        if (d.path === 'bad.img') throw new Error('bad.img: cannot open: ENOENT');
        const disk = new MemoryDisk(1 << 20);
        return Object.assign(disk, { close: async () => { closed++; } });
      },
    });
    await assert.rejects(attachVirtioDevices(h, { disks: [parseDiskOption('ok.img'), parseDiskOption('bad.img')], channels: [] }), /bad.img: cannot open/);
    assert.equal(closed, 1);
    await assert.rejects(
      attachVirtioDevices(hooks(), { disks: [parseDiskOption('x.img,addr=3'), parseDiskOption('y.img,addr=3')], channels: [] }),
      /virtio-blk1: PCI slot 3 is already used by virtio-blk0/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
