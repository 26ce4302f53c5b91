// The config reads a vCPU thread serves from the host bridge's shared config space must be
// exactly what the bridge itself answers, and what only the bridge can answer must be left
// to it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_DATA_PORT, PciConfigMirror } from '../../../src/pci/config-mirror.js';
import { VirtioRng } from '../../../src/virtio/rng.js';
import { cfgRead, cfgWrite, makeMachine, mmioRead, mmioWrite, plugVirtio, type Machine } from '../virtio/support/driver.js';

/** A machine with two virtio functions, BARs assigned, and a vCPU thread's view of its mirror. */
function machineWithMirror(): { m: Machine; slots: number[]; vcpuSide: PciConfigMirror } {
  const m = makeMachine();
  const slots = [plugVirtio(m, new VirtioRng()).slot, plugVirtio(m, new VirtioRng(), 7).slot];
  m.bridge.assignBars();
  return { m, slots, vcpuSide: new PciConfigMirror(m.bridge.configMirror) };
}

/** A read of the data port through the mirror: the bytes, or undefined when it must be forwarded. */
function mirrorRead(mirror: PciConfigMirror, port: number, size: number): number | undefined {
  const data = new Uint8Array(size);
  if (!mirror.servePort(port, true, data)) return undefined;
  return data.reduceRight((v, b) => v * 256 + b, 0);
}

function latch(mirror: PciConfigMirror, value: number): void {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, value >>> 0, true);
  assert.equal(mirror.servePort(PCI_CONFIG_ADDRESS_PORT, false, data), true);
}

test('every config read the mirror serves equals the bridge’s own answer, at every offset and width', () => {
  const { m, slots, vcpuSide } = machineWithMirror();
  let served = 0;
  for (const slot of [0, ...slots, 3]) {
    for (let reg = 0; reg < 256; reg += 4) {
      for (const size of [1, 2, 4]) {
        for (let within = 0; within + size <= 4; within += size) {
          latch(vcpuSide, 0x80000000 | (slot << 11) | reg);
          const port = PCI_CONFIG_DATA_PORT + within;
          const mine = mirrorRead(vcpuSide, port, size);
          const bridge = Number(mmioRead(m.pio, BigInt(port), size));
          if (mine !== undefined) {
            served++;
            assert.equal(mine, bridge, `slot ${slot} register 0x${(reg + within).toString(16)} size ${size}`);
          }
        }
      }
    }
  }
  // Everything but each virtio function's PCI_CFG data window is served.
  assert.ok(served > 4 * 64 * 6 - 2 * 6, `${served} reads served`);
});

test('the latch is one: a vCPU thread’s 0xCF8 write steers the bridge’s data port and back', () => {
  const { m, slots, vcpuSide } = machineWithMirror();
  const slot = slots[0]!;
  latch(vcpuSide, 0x80000000 | (slot << 11) | 0x3c);
  mmioWrite(m.pio, 0xcfcn, 1, 0x0b); // a write: the main thread's bridge takes it
  assert.equal(cfgRead(m, slot, 0x3c, 1), 0x0b);
  assert.equal(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT, 1), 0x0b);
  mmioWrite(m.pio, 0xcf8n, 4, 0x80000000 | (slot << 11) | 0x08);
  const data = new Uint8Array(4);
  assert.equal(vcpuSide.servePort(PCI_CONFIG_ADDRESS_PORT, true, data), true);
  assert.equal(new DataView(data.buffer).getUint32(0, true), (0x80000000 | (slot << 11) | 0x08) >>> 0);
});

test('config writes made on the main thread show at once: BAR sizing, command register, machine reset', () => {
  const { m, slots, vcpuSide } = machineWithMirror();
  const slot = slots[1]!;
  const bar = 0x10 + 4 * m.bridge.list().find((d) => d.slot === slot)!.bars[0]!.bar;
  const address = cfgRead(m, slot, bar, 4);
  assert.notEqual(address, 0);
  cfgWrite(m, slot, bar, 4, 0xffffffff);
  latch(vcpuSide, 0x80000000 | (slot << 11) | bar);
  assert.equal(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT, 4), cfgRead(m, slot, bar, 4));
  assert.notEqual(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT, 4), address);
  cfgWrite(m, slot, 0x04, 2, 0x0006);
  latch(vcpuSide, 0x80000000 | (slot << 11) | 0x04);
  assert.equal(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT, 2), 0x0006);
  m.bridge.reset();
  latch(vcpuSide, 0x80000000 | (slot << 11) | bar);
  assert.equal(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT, 4), address);
});

test('what only the bridge can answer is forwarded: the PCI_CFG window, extended registers, writes, odd latch sizes', () => {
  const { m, slots, vcpuSide } = machineWithMirror();
  const slot = slots[0]!;
  // The virtio PCI_CFG capability's data bytes are a window onto a BAR, read on demand.
  const window = m.bridge.deviceAt(slot)!.configReadHook!;
  latch(vcpuSide, 0x80000000 | (slot << 11) | window.offset);
  assert.equal(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT, 4), undefined);
  assert.equal(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT + 2, 1), undefined);
  latch(vcpuSide, 0x80000000 | (slot << 11) | (window.offset - 4));
  assert.notEqual(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT, 4), undefined);
  // AMD's extension bits reach past the first 256 bytes.
  latch(vcpuSide, 0x80000000 | 0x01000000 | (slot << 11));
  assert.equal(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT, 4), undefined);
  // Writes have effects (BAR moves, decode): never served here.
  latch(vcpuSide, 0x80000000 | (slot << 11) | 0x3c);
  assert.equal(vcpuSide.servePort(PCI_CONFIG_DATA_PORT, false, Uint8Array.of(5)), false);
  // Only dword accesses reach the latch (0xCF9, a byte port, is the reset control register).
  assert.equal(vcpuSide.servePort(PCI_CONFIG_ADDRESS_PORT, true, new Uint8Array(1)), false);
  assert.equal(vcpuSide.servePort(PCI_CONFIG_ADDRESS_PORT, false, new Uint8Array(2)), false);
});

test('no config cycle, another bus or function, an empty slot: all ones, as the bridge answers', () => {
  const { m, slots, vcpuSide } = machineWithMirror();
  const cases = [slots[0]! << 11, 0x80000000 | (1 << 16) | (slots[0]! << 11), 0x80000000 | (slots[0]! << 11) | (1 << 8), 0x80000000 | (9 << 11)];
  for (const address of cases) {
    latch(vcpuSide, address);
    for (const size of [1, 2, 4]) {
      assert.equal(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT, size), Number(mmioRead(m.pio, BigInt(PCI_CONFIG_DATA_PORT), size)));
      assert.equal(mirrorRead(vcpuSide, PCI_CONFIG_DATA_PORT, size), 2 ** (8 * size) - 1);
    }
  }
});

test('a mirror of the wrong size is refused', () => {
  assert.throws(() => new PciConfigMirror(new SharedArrayBuffer(64)), /PCI config mirror: 64 bytes/);
});
