import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Bus } from '../../../src/devices/bus.js';
import { PciConfigSpace } from '../../../src/pci/config-space.js';
import type { PciDevice, PciSlotContext } from '../../../src/pci/device.js';
import { intxGsi, PciHostBridge, pciInterruptRoutes } from '../../../src/pci/host-bridge.js';
import { buildMcfgTable } from '../../../src/pci/mcfg.js';
import { Msix } from '../../../src/pci/msix.js';
import { cfgRead, cfgWrite, ECAM_BASE, makeMachine, mmioRead, mmioWrite, RecordingSink } from '../virtio/support/driver.js';

class TestDevice implements PciDevice {
  readonly config = new PciConfigSpace({
    vendorId: 0x1234, deviceId: 0x5678, revision: 3, classCode: 0x020000, subsystemVendorId: 0xabcd, subsystemId: 0x0042,
    interruptPin: 1,
  });
  context: PciSlotContext | undefined;
  readonly writes: Array<{ offset: bigint; value: number }> = [];
  constructor(readonly name: string) {
    this.config.defineBar(0, { kind: 'mem32', size: 0x1000n });
    this.config.defineBar(2, { kind: 'mem64', size: 0x4000n, prefetchable: true });
  }
  barRegion(index: number) {
    return {
      read: (offset: bigint, data: Uint8Array) => data.fill(index + Number(offset & 0xffn)),
      write: (offset: bigint, data: Uint8Array) => { this.writes.push({ offset, value: data[0]! }); },
    };
  }
  attached(context: PciSlotContext): void { this.context = context; }
}

test('empty slots read as all ones, the host bridge answers at 00:00.0', () => {
  const m = makeMachine();
  assert.equal(cfgRead(m, 0, 0, 2), 0x1b36);
  assert.equal(cfgRead(m, 0, 0x0a, 2), 0x0600);
  assert.equal(cfgRead(m, 5, 0, 4), 0xffffffff);
  assert.equal(cfgRead(m, 5, 0, 2), 0xffff);
});

test('legacy 0xCF8/0xCFC access reaches the same config space as ECAM', () => {
  const m = makeMachine();
  const dev = new TestDevice('t0');
  const slot = m.bridge.addDevice(dev);
  const address = 0x80000000 | (slot << 11);
  mmioWrite(m.pio, 0xcf8n, 4, address);
  assert.equal(Number(mmioRead(m.pio, 0xcfcn, 4)), 0x56781234);
  mmioWrite(m.pio, 0xcf8n, 4, address | 0x08);
  assert.equal(Number(mmioRead(m.pio, 0xcfen, 2)), 0x0200);
  mmioWrite(m.pio, 0xcf8n, 4, address | 0x3c);
  mmioWrite(m.pio, 0xcfcn, 1, 0x0b);
  assert.equal(cfgRead(m, slot, 0x3c, 1), 0x0b);
  // Without the enable bit the data port reads all ones.
  mmioWrite(m.pio, 0xcf8n, 4, slot << 11);
  assert.equal(Number(mmioRead(m.pio, 0xcfcn, 4)), 0xffffffff);
});

test('BAR sizing: writing all ones reads back the size mask with the type flags', () => {
  const m = makeMachine();
  const slot = m.bridge.addDevice(new TestDevice('t0'));
  cfgWrite(m, slot, 0x10, 4, 0xffffffff);
  assert.equal(cfgRead(m, slot, 0x10, 4), 0xfffff000);
  cfgWrite(m, slot, 0x18, 4, 0xffffffff);
  cfgWrite(m, slot, 0x1c, 4, 0xffffffff);
  assert.equal(cfgRead(m, slot, 0x18, 4), (0xffffc000 | 0xc) >>> 0);
  assert.equal(cfgRead(m, slot, 0x1c, 4), 0xffffffff);
  // Undefined BARs are read-only zero.
  cfgWrite(m, slot, 0x14, 4, 0xffffffff);
  assert.equal(cfgRead(m, slot, 0x14, 4), 0);
});

test('BAR assignment is aligned, inside the window and the same on every run', () => {
  const layouts = [0, 1].map(() => {
    const m = makeMachine();
    m.bridge.addDevice(new TestDevice('a'));
    m.bridge.addDevice(new TestDevice('b'));
    m.bridge.assignBars();
    return m.bridge.list();
  });
  assert.deepEqual(layouts[0], layouts[1]);
  for (const info of layouts[0]!) {
    for (const bar of info.bars) {
      assert.equal(bar.address % bar.size, 0n);
      assert.ok(bar.address >= 0xc000_0000n && bar.address + bar.size <= 0xe000_0000n);
    }
  }
  const all = layouts[0]!.flatMap((i) => i.bars).sort((a, b) => (a.address < b.address ? -1 : 1));
  for (let i = 1; i < all.length; i++) assert.ok(all[i - 1]!.address + all[i - 1]!.size <= all[i]!.address);
});

test('the command register maps and unmaps BARs; moving a BAR moves the mapping', () => {
  const m = makeMachine();
  const dev = new TestDevice('t0');
  const slot = m.bridge.addDevice(dev);
  m.bridge.assignBars();
  const bar0 = BigInt(cfgRead(m, slot, 0x10, 4));
  assert.equal(mmioRead(m.mmio, bar0 + 1n, 1), 0xffn, 'not decoding before memory enable');
  cfgWrite(m, slot, 0x04, 2, 0x2);
  assert.equal(mmioRead(m.mmio, bar0 + 1n, 1), 1n);
  mmioWrite(m.mmio, bar0 + 4n, 1, 9);
  assert.deepEqual(dev.writes, [{ offset: 4n, value: 9 }]);
  cfgWrite(m, slot, 0x10, 4, 0xd000_0000);
  assert.equal(mmioRead(m.mmio, bar0 + 1n, 1), 0xffn);
  assert.equal(mmioRead(m.mmio, 0xd000_0002n, 1), 2n);
  cfgWrite(m, slot, 0x04, 2, 0);
  assert.equal(mmioRead(m.mmio, 0xd000_0002n, 1), 0xffn);
  assert.ok(!m.mmio.list().some((r) => r.name.startsWith('t0')));
});

test('a BAR moved onto another mapping is refused with a log line naming both', () => {
  const m = makeMachine();
  const a = m.bridge.addDevice(new TestDevice('a'));
  const b = m.bridge.addDevice(new TestDevice('b'));
  m.bridge.assignBars();
  cfgWrite(m, a, 0x04, 2, 0x2);
  const aBar0 = cfgRead(m, a, 0x10, 4);
  cfgWrite(m, b, 0x10, 4, aBar0);
  cfgWrite(m, b, 0x04, 2, 0x2);
  assert.ok(m.logs.some((l) => l.includes('b BAR0') && l.includes('overlaps a BAR0')), m.logs.join('\n'));
});

test('slots: fixed addresses, next free otherwise, clear errors for bad or taken slots', () => {
  const m = makeMachine();
  assert.equal(m.bridge.addDevice(new TestDevice('fixed'), 3), 3);
  assert.equal(m.bridge.addDevice(new TestDevice('auto1')), 1);
  assert.equal(m.bridge.addDevice(new TestDevice('auto2')), 2);
  assert.equal(m.bridge.addDevice(new TestDevice('auto3')), 4);
  assert.throws(() => m.bridge.addDevice(new TestDevice('dup'), 3), /dup: PCI slot 3 is already used by fixed/);
  assert.throws(() => m.bridge.addDevice(new TestDevice('big'), 32), /big: PCI slot 32 is out of range/);
  assert.throws(() => m.bridge.addDevice(new TestDevice('zero'), 0), /zero: PCI slot 0 is out of range/);
});

test('INTx: swizzled GSIs, shared lines stay up while any device drives them, INTx disable masks', () => {
  assert.equal(intxGsi(1, 1), 17);
  assert.equal(intxGsi(3, 1), 19);
  assert.equal(intxGsi(4, 2), 17);
  assert.equal(pciInterruptRoutes().length, 128);
  assert.deepEqual(pciInterruptRoutes().find((r) => r.slot === 2 && r.pin === 1), { slot: 2, pin: 1, gsi: 19 });
  const m = makeMachine();
  const a = new TestDevice('a');
  const b = new TestDevice('b');
  m.bridge.addDevice(a, 1);
  m.bridge.addDevice(b, 5); // same line as slot 1
  assert.equal(cfgRead(m, 1, 0x3c, 1), 17, 'interrupt line register holds the GSI');
  a.context!.setIntx(true);
  b.context!.setIntx(true);
  assert.deepEqual(m.sink.lineChanges, [{ gsi: 17, level: true }]);
  assert.equal(cfgRead(m, 1, 0x06, 2) & 0x8, 0x8, 'interrupt status bit');
  a.context!.setIntx(false);
  assert.equal(m.sink.lines.get(17), true);
  b.context!.setIntx(false);
  assert.equal(m.sink.lines.get(17), false);
  cfgWrite(m, 1, 0x04, 2, 0x400);
  a.context!.setIntx(true);
  assert.equal(m.sink.lines.get(17), false, 'INTx disabled');
  cfgWrite(m, 1, 0x04, 2, 0);
  assert.equal(m.sink.lines.get(17), true, 'clearing INTx disable delivers the pending level');
});

test('MSI-X: masked vectors become pending and fire on unmask; function mask holds all', () => {
  const sink = new RecordingSink();
  const config = new PciConfigSpace({
    vendorId: 1, deviceId: 2, revision: 0, classCode: 0, subsystemVendorId: 0, subsystemId: 0, interruptPin: 0,
  });
  const msix = new Msix(config, { vectors: 3, bar: 1, tableOffset: 0, pbaOffset: 0x800 }, sink);
  const cap = msix.capabilityOffset;
  assert.equal(config.getU16(cap + 2) & 0x7ff, 2, 'table size is N-1');
  assert.equal(msix.notify(0), false, 'disabled: caller uses INTx');
  config.write(cap + 2, 2, 0x8000);
  const w32 = (off: number, v: number): void => {
    const d = new Uint8Array(4);
    new DataView(d.buffer).setUint32(0, v, true);
    msix.tableRegion.write(BigInt(off), d);
  };
  w32(16, 0xfee01000);
  w32(24, 0x55);
  assert.equal(msix.notify(1), true);
  assert.equal(sink.msis.length, 0, 'vectors start masked');
  const pba = new Uint8Array(8);
  msix.pbaRegion.read(0n, pba);
  assert.equal(pba[0], 0b10);
  w32(28, 0);
  assert.deepEqual(sink.msis, [{ address: 0xfee01000n, data: 0x55 }]);
  msix.pbaRegion.read(0n, pba);
  assert.equal(pba[0], 0);
  config.write(cap + 2, 2, 0xc000);
  msix.configWritten(cap + 2, 2);
  msix.notify(1);
  assert.equal(sink.msis.length, 1, 'function mask');
  config.write(cap + 2, 2, 0x8000);
  msix.configWritten(cap + 2, 2);
  assert.equal(sink.msis.length, 2);
  assert.equal(msix.notify(7), false, 'vector out of range');
});

test('config space honours read-only bits and write-1-to-clear status bits', () => {
  const config = new PciConfigSpace({
    vendorId: 0x1af4, deviceId: 0x1042, revision: 1, classCode: 0x010000, subsystemVendorId: 0x1af4, subsystemId: 0x1100,
    interruptPin: 1,
  });
  config.write(0, 4, 0);
  assert.equal(config.read(0, 4), 0x10421af4);
  config.setU16(0x06, 0x8000);
  config.write(0x06, 2, 0x8000);
  assert.equal(config.read(0x06, 2), 0);
  assert.equal(config.read(0x1000, 4), 0xffffffff);
  assert.throws(() => config.defineBar(0, { kind: 'mem32', size: 0x1800n }), /not a power of two/);
  assert.throws(() => config.defineBar(5, { kind: 'mem64', size: 0x1000n }), /does not fit/);
});

test('query-pci listing names ids, class, irq and BARs', () => {
  const m = makeMachine();
  m.bridge.addDevice(new TestDevice('nic'), 2);
  m.bridge.assignBars();
  const info = m.bridge.list().find((d) => d.qdevId === 'nic')!;
  assert.equal(info.slot, 2);
  assert.equal(info.vendorId, 0x1234);
  assert.equal(info.subsystemId, 0x42);
  assert.equal(info.classCode, 0x020000);
  assert.equal(info.revision, 3);
  assert.equal(info.irq, intxGsi(2, 1));
  assert.deepEqual(info.bars.map((b) => [b.bar, b.size, b.memType64, b.prefetch]), [[0, 0x1000n, false, false], [2, 0x4000n, true, true]]);
});

test('MCFG table: signature, length, ECAM base and a valid checksum', () => {
  const t = buildMcfgTable({ ecamBase: ECAM_BASE, endBus: 0 });
  assert.equal(String.fromCharCode(...t.subarray(0, 4)), 'MCFG');
  assert.equal(new DataView(t.buffer).getUint32(4, true), t.length);
  assert.equal(new DataView(t.buffer).getBigUint64(44, true), ECAM_BASE);
  assert.equal(t.reduce((s, b) => (s + b) & 0xff, 0), 0);
});

test('the bridge claims ECAM and the legacy config ports on the buses', () => {
  const mmio = new Bus('mmio');
  const pio = new Bus('pio');
  new PciHostBridge({ mmioBus: mmio, pioBus: pio, interrupts: new RecordingSink(), ecam: { base: ECAM_BASE, size: 0x100000n }, mmio32: { base: 0xc0000000n, size: 0x20000000n } });
  assert.deepEqual(mmio.list().map((r) => r.name), ['pci-ecam']);
  assert.deepEqual(pio.list().map((r) => [r.base, r.length]), [[0xcf8n, 1n], [0xcfcn, 4n]]);
  // The machine's reset control register at 0xCF9 still fits next to the bridge.
  pio.insert(0xcf9n, 1n, { read: () => {}, write: () => {} }, 'reset-control');
});

test('the _PRT DSDT part lists every slot and pin with its GSI', async () => {
  const { pciRoutingDsdtPart } = await import('../../../src/pci/acpi.js');
  const part = pciRoutingDsdtPart();
  assert.equal(part.scope, '\\_SB.PCI0');
  const bytes = part.build();
  // NameOp '_PRT' PackageOp: the name comes first.
  assert.equal(bytes[0], 0x08);
  assert.equal(String.fromCharCode(...bytes.subarray(1, 5)), '_PRT');
  // Slot 3 pin B (1) -> GSI 16 + (3 + 2 - 1) % 4 = 16: PackageOp, length 11, 4 elements,
  // DWord 0x0003FFFF, One, Zero, Byte 16.
  const needle = [0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x03, 0x00, 0x01, 0x00, 0x0a, 16];
  const found = bytes.findIndex((_, i) => needle.every((b, j) => bytes[i + j] === b));
  assert.ok(found > 0, 'package { 0x0003FFFF, One, Zero, 16 } present');
});
