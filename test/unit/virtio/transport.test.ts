// The virtio-pci transport driven through PCI config space and BAR 4, with virtio-rng as the device.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VirtioRng } from '../../../src/virtio/rng.js';
import type { NotifyDoorbell } from '../../../src/virtio/pci-transport.js';
import {
  cfgRead, F_EVENT_IDX, F_INDIRECT, F_VERSION_1, makeMachine, mmioWrite, plugVirtio, VirtioDriver,
} from './support/driver.js';

const counting = (): ((b: Uint8Array) => void) => {
  let n = 1;
  return (b) => {
    for (let i = 0; i < b.length; i++) b[i] = n++ & 0xff || 1;
  };
};

function rngMachine(options: ConstructorParameters<typeof VirtioRng>[0] = {}) {
  const m = makeMachine();
  const rng = new VirtioRng({ fill: counting(), ...options });
  const { transport, slot } = plugVirtio(m, rng);
  m.bridge.assignBars();
  return { m, rng, transport, slot };
}

test('PCI identity and capabilities as lspci shows them', () => {
  const { m, slot } = rngMachine();
  assert.equal(cfgRead(m, slot, 0, 2), 0x1af4);
  assert.equal(cfgRead(m, slot, 2, 2), 0x1044);
  assert.equal(cfgRead(m, slot, 8, 1), 1, 'modern-only devices have revision 1');
  assert.equal(cfgRead(m, slot, 0x2c, 2), 0x1af4);
  assert.equal(cfgRead(m, slot, 0x2e, 2), 0x1100);
  assert.equal(cfgRead(m, slot, 0x09, 4) >>> 8, 0x00ff00 >> 8);
  assert.equal(cfgRead(m, slot, 0x3d, 1), 1, 'INTA#');
  const caps: Array<[number, number]> = [];
  for (let cap = cfgRead(m, slot, 0x34, 1); cap; cap = cfgRead(m, slot, cap + 1, 1)) {
    caps.push([cfgRead(m, slot, cap, 1), cfgRead(m, slot, cap, 1) === 9 ? cfgRead(m, slot, cap + 3, 1) : 0]);
  }
  assert.deepEqual(caps, [[0x11, 0], [0x10, 0], [9, 1], [9, 3], [9, 4], [9, 2], [9, 5]]);
  assert.equal(cfgRead(m, slot, 0x06, 2) & 0x10, 0x10, 'capability list bit');
});

test('feature negotiation: FEATURES_OK only for a subset of the offer that includes VERSION_1', () => {
  const { m, slot } = rngMachine();
  const d = new VirtioDriver(m, slot);
  d.probePci();
  const offered = d.deviceFeatures();
  assert.equal(offered & (F_VERSION_1 | F_INDIRECT | F_EVENT_IDX), F_VERSION_1 | F_INDIRECT | F_EVENT_IDX);
  assert.equal(d.negotiate(F_INDIRECT), false, 'legacy driver refused');
  assert.ok(m.logs.some((l) => l.includes('virtio-rng0') && l.includes('VIRTIO_F_VERSION_1 missing')));
  d.status = 0;
  d.status = 3;
  d.writeDriverFeatures(F_VERSION_1 | (1n << 40n));
  d.status = 3 | 8;
  assert.equal(d.status & 8, 0, 'unknown feature refused');
  assert.equal(d.negotiate(F_VERSION_1 | F_EVENT_IDX), true);
  // Features are frozen once FEATURES_OK is set.
  d.writeDriverFeatures(F_VERSION_1);
  d.w32(0x08, 0);
  assert.equal(d.c32(0x0c), Number(F_EVENT_IDX));
});

test('rng over INTx: buffers filled, used length reported, ISR read acknowledges and lowers the line', async () => {
  const { m, slot } = rngMachine();
  const d = await VirtioDriver.start(m, slot);
  const q = d.queues[0]!;
  const buf = d.alloc(64, 8);
  q.add([{ address: buf, length: 64, writable: true }]);
  q.kick();
  const used = await q.waitUsed(1);
  assert.deepEqual(used, [{ id: 0, len: 64 }]);
  assert.ok(m.memory.slice(buf, 64).every((b) => b !== 0));
  const gsi = cfgRead(m, slot, 0x3c, 1);
  assert.equal(m.sink.lines.get(gsi), true);
  assert.equal(d.readIsr(), 1);
  assert.equal(m.sink.lines.get(gsi), false);
  assert.equal(d.readIsr(), 0, 'ISR is clear after reading');
});

test('rng over MSI-X: the queue vector fires as an MSI; no INTx', async () => {
  const { m, slot } = rngMachine();
  const d = await VirtioDriver.start(m, slot, { msix: true });
  const q = d.queues[0]!;
  q.add([{ address: d.alloc(16, 8), length: 16, writable: true }], { indirect: true });
  q.kick();
  await q.waitUsed(1);
  assert.deepEqual(m.sink.msis, [{ address: 0xfee01000n, data: 0x41 }]);
  assert.equal(m.sink.lineChanges.length, 0);
});

test('a vector beyond the MSI-X table reads back as NO_VECTOR', async () => {
  const { m, slot } = rngMachine();
  const d = new VirtioDriver(m, slot);
  d.probePci();
  d.w16(0x10, 9);
  assert.equal(d.c16(0x10), 0xffff);
});

test('rate limit: at most N bytes per period, the rest waits for the next period', async () => {
  let now = 1000;
  const { m, slot } = rngMachine({ rateLimit: { bytes: 32, periodMs: 20 }, now: () => now });
  const d = await VirtioDriver.start(m, slot);
  const q = d.queues[0]!;
  for (let i = 0; i < 3; i++) q.add([{ address: d.alloc(24, 8), length: 24, writable: true }]);
  q.kick();
  const first = await q.waitUsed(2);
  assert.deepEqual(first.map((u) => u.len), [24, 8], 'second buffer only gets what the budget leaves');
  assert.deepEqual(q.takeUsed(), []);
  now += 20;
  const rest = await q.waitUsed(1, 1000);
  assert.deepEqual(rest.map((u) => u.len), [24]);
});

test('a bad queue size sets DEVICE_NEEDS_RESET with a log naming device, queue and address', () => {
  const { m, slot } = rngMachine();
  const d = new VirtioDriver(m, slot);
  d.probePci();
  assert.ok(d.negotiate(F_VERSION_1));
  d.setupQueue(0, 6);
  assert.equal(d.status & 0x40, 0x40);
  assert.equal(d.c16(0x1c), 0, 'queue not enabled');
  assert.ok(m.logs.some((l) => /^virtio-rng0: virtio-rng0 queue 0: queue size 6 is not a power of two .* at guest address 0x[0-9a-f]+; device needs reset$/.test(l)), m.logs.join('\n'));
  d.status = 0;
  assert.equal(d.status, 0, 'reset clears NEEDS_RESET');
});

test('a hostile chain at run time: NEEDS_RESET plus a config interrupt, then reset recovers', async () => {
  const { m, slot } = rngMachine();
  const d = await VirtioDriver.start(m, slot, { msix: true });
  const q = d.queues[0]!;
  q.add([{ address: 0x7fff_0000n, length: 64, writable: true }]);
  q.kick();
  assert.equal(d.status & 0x40, 0x40);
  assert.deepEqual(m.sink.msis, [{ address: 0xfee00000n, data: 0x40 }], 'config vector 0');
  assert.ok(m.logs.some((l) => l.includes('virtio-rng0 queue 0: buffer of 64 bytes is outside guest memory at guest address 0x7fff0000')));
  // Further kicks do nothing until the driver resets.
  q.add([{ address: d.alloc(8, 8), length: 8, writable: true }]);
  q.kick();
  assert.equal(q.usedIdx, 0);
  const d2 = await VirtioDriver.start(m, slot);
  const q2 = d2.queues[0]!;
  q2.add([{ address: d2.alloc(8, 8), length: 8, writable: true }]);
  q2.kick();
  assert.deepEqual(await q2.waitUsed(1), [{ id: 0, len: 8 }]);
});

test('ioeventfd doorbells follow the BAR: one per queue with datamatch = queue index', async () => {
  const m = makeMachine();
  const registered = new Map<bigint, { d: NotifyDoorbell; fire: () => void }>();
  const { slot } = plugVirtio(m, new VirtioRng({ fill: counting() }), undefined, {
    register: (d, fire) => registered.set(d.address, { d, fire }),
    unregister: (d) => registered.delete(d.address),
  });
  m.bridge.assignBars();
  assert.equal(registered.size, 0);
  const d = await VirtioDriver.start(m, slot);
  const [entry] = [...registered.values()];
  assert.deepEqual(entry!.d, { address: d.bar4 + 0x3000n, length: 2, datamatch: 0, queue: 0 });
  const q = d.queues[0]!;
  q.add([{ address: d.alloc(8, 8), length: 8, writable: true }]);
  entry!.fire();
  assert.equal((await q.waitUsed(1)).length, 1);
  // Moving the BAR moves the doorbell.
  mmioWrite(m.mmio, 0n, 1, 0);
  const { cfgWrite } = await import('./support/driver.js');
  cfgWrite(m, slot, 0x20, 4, 0xd000_000c);
  assert.deepEqual([...registered.keys()], [0xd000_3000n]);
  cfgWrite(m, slot, 0x04, 2, 0);
  assert.equal(registered.size, 0);
});

test('event index suppresses interrupts the driver did not ask for', async () => {
  const { m, slot } = rngMachine();
  const d = await VirtioDriver.start(m, slot, { msix: true });
  const q = d.queues[0]!;
  q.setUsedEvent(0);
  q.add([{ address: d.alloc(8, 8), length: 8, writable: true }]);
  q.kick();
  await q.waitUsed(1);
  assert.equal(m.sink.msis.length, 1);
  assert.equal(q.availEvent, 1, 'device asks to be notified after the next buffer');
  // used_event stays 0: the driver wants no more interrupts.
  q.add([{ address: d.alloc(8, 8), length: 8, writable: true }]);
  q.kick();
  await q.waitUsed(1);
  assert.equal(m.sink.msis.length, 1);
});

test('save and load state: a restored device continues where the old one stopped', async () => {
  const { m, slot, transport } = rngMachine();
  const d = await VirtioDriver.start(m, slot);
  const q = d.queues[0]!;
  q.add([{ address: d.alloc(8, 8), length: 8, writable: true }]);
  q.kick();
  await q.waitUsed(1);
  const state = JSON.parse(JSON.stringify(transport.saveState()));
  // A second machine sharing the same guest RAM contents.
  const m2 = makeMachine();
  m2.memory.write(0n, m.memory.slice(0n, Number(m.memory.size)));
  const second = plugVirtio(m2, new VirtioRng({ fill: counting() }), slot);
  m2.bridge.assignBars();
  second.transport.loadState(state);
  assert.equal(second.transport.deviceStatus, 0xf);
  const d2 = new VirtioDriver(m2, slot, 0x200000n);
  d2.probePci();
  // The driver's view of the ring carries over: the next buffer completes with used idx 2.
  const buf = d2.alloc(8, 8);
  const desc = q.desc + 16n * 1n;
  m2.memory.writeU64(desc, buf);
  m2.memory.writeU32(desc + 8n, 8);
  m2.memory.writeU16(desc + 12n, 2);
  m2.memory.writeU16(q.avail + 4n + 2n, 1);
  m2.memory.writeU16(q.avail + 2n, 2);
  d2.kick(0);
  const deadline = Date.now() + 1000;
  while (m2.memory.readU16(q.used + 2n) !== 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
  assert.equal(m2.memory.readU16(q.used + 2n), 2);
  assert.throws(() => second.transport.loadState({ ...state, version: 7 }), /virtio-rng0: unsupported virtio-pci state version 7/);
});

test('machine reset: config space back to firmware state, virtio status 0, MSI-X off, INTx low', async () => {
  const { m, slot, transport } = rngMachine();
  const d = await VirtioDriver.start(m, slot);
  const q = d.queues[0]!;
  q.add([{ address: d.alloc(8, 8), length: 8, writable: true }]);
  q.kick();
  await q.waitUsed(1);
  const gsi = cfgRead(m, slot, 0x3c, 1);
  assert.equal(m.sink.lines.get(gsi), true);
  const bar4 = d.bar4;
  m.bridge.reset();
  assert.equal(transport.deviceStatus, 0);
  assert.equal(m.sink.lines.get(gsi), false);
  assert.equal(cfgRead(m, slot, 0x04, 2), 0, 'decoding off');
  assert.ok(!m.mmio.list().some((r) => r.name.startsWith('virtio-rng0')), 'BARs unmapped');
  assert.equal(BigInt((cfgRead(m, slot, 0x20, 4) & ~0xf) >>> 0), bar4 & 0xffffffffn, 'BAR keeps its assigned address');
  assert.equal(transport.msix.enabled, false);
  // The guest can bring the device up again from scratch.
  const d2 = await VirtioDriver.start(m, slot);
  d2.queues[0]!.add([{ address: d2.alloc(8, 8), length: 8, writable: true }]);
  d2.queues[0]!.kick();
  assert.equal((await d2.queues[0]!.waitUsed(1)).length, 1);
});

test('too many queues for the MSI-X table is a construction error naming the device', () => {
  const m = makeMachine();
  const many = new VirtioRng({ name: 'rng-big' });
  Object.assign(many, { queueSizes: new Array(200).fill(8) });
  assert.throws(() => plugVirtio(m, many), /rng-big: 200 queues need more MSI-X vectors than the table holds/);
});

test('the PCI_CFG capability gives config-space access to BAR 4', async () => {
  const { m, slot } = rngMachine();
  const d = new VirtioDriver(m, slot);
  d.probePci();
  let cap = cfgRead(m, slot, 0x34, 1);
  for (let guard = 0; guard < 48 && cap && !(cfgRead(m, slot, cap, 1) === 9 && cfgRead(m, slot, cap + 3, 1) === 5); guard++) {
    cap = cfgRead(m, slot, cap + 1, 1);
  }
  assert.ok(cap, 'PCI_CFG capability present');
  const { cfgWrite } = await import('./support/driver.js');
  cfgWrite(m, slot, cap + 4, 1, 4);
  cfgWrite(m, slot, cap + 8, 4, 0x14); // device_status
  cfgWrite(m, slot, cap + 12, 4, 1);
  cfgWrite(m, slot, cap + 16, 1, 1); // ACKNOWLEDGE through the window
  assert.equal(d.status, 1);
  d.status = 3;
  assert.equal(cfgRead(m, slot, cap + 16, 1), 3);
  cfgWrite(m, slot, cap + 8, 4, 0x12); // num_queues, 16 bits
  cfgWrite(m, slot, cap + 12, 4, 2);
  assert.equal(cfgRead(m, slot, cap + 16, 4), 1);
  // An invalid window (length 3) does nothing.
  cfgWrite(m, slot, cap + 12, 4, 3);
  cfgWrite(m, slot, cap + 16, 4, 0);
  assert.equal(d.status, 3);
});

test('without MSI-X a protocol error raises INTx with the ISR config bit', async () => {
  const { m, slot } = rngMachine();
  const d = await VirtioDriver.start(m, slot);
  const q = d.queues[0]!;
  m.memory.writeU16(q.avail + 2n, 200); // avail index jumps past the queue size
  q.kick();
  assert.equal(d.status & 0x40, 0x40);
  assert.equal(m.sink.lines.get(cfgRead(m, slot, 0x3c, 1)), true);
  assert.equal(d.readIsr(), 2, 'config change bit');
  assert.ok(m.logs.some((l) => l.includes('available index moved 200 entries past the 64')));
});
