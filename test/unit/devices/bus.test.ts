import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Bus, BusDevice } from '../../../src/devices/bus.js';

class Recorder implements BusDevice {
  writes: Array<[bigint, number[]]> = [];
  read(offset: bigint, data: Uint8Array): void {
    data.fill(Number(offset & 0xffn));
  }
  write(offset: bigint, data: Uint8Array): void {
    this.writes.push([offset, [...data]]);
  }
}

test('routes accesses to the device with the offset inside its range', () => {
  const bus = new Bus('pio');
  const a = new Recorder();
  const b = new Recorder();
  bus.insert(0x3f8n, 8n, a, 'serial');
  bus.insert(0x60n, 1n, b, 'i8042');
  const data = new Uint8Array(1);
  assert.equal(bus.read(0x3fdn, data), true);
  assert.equal(data[0], 5);
  assert.equal(bus.write(0x60n, Uint8Array.of(0xfe)), true);
  assert.deepEqual(b.writes, [[0n, [0xfe]]]);
  assert.equal(a.writes.length, 0);
});

test('unmapped reads float to all ones and writes are dropped', () => {
  const bus = new Bus('mmio');
  const data = new Uint8Array(4);
  assert.equal(bus.read(0x1000n, data), false);
  assert.deepEqual([...data], [0xff, 0xff, 0xff, 0xff]);
  assert.equal(bus.write(0x1000n, data), false);
});

test('refuses overlapping ranges, naming both devices', () => {
  const bus = new Bus('mmio');
  bus.insert(0x1000n, 0x1000n, new Recorder(), 'bar0');
  assert.throws(() => bus.insert(0x1800n, 0x100n, new Recorder(), 'bar1'), /bar1 overlaps bar0/);
  assert.equal(bus.remove(0x1000n), true);
  bus.insert(0x1800n, 0x100n, new Recorder(), 'bar1');
  assert.equal(bus.list().length, 1);
});

test('the port claims map follows ranges as they are mapped and removed', () => {
  const bus = new Bus('pio');
  bus.insert(0x3f8n, 8n, new Recorder(), 'serial');
  const claims = new Uint8Array(bus.claimsMap());
  assert.equal(claims.length, 0x10000);
  assert.deepEqual([claims[0x3f7], claims[0x3f8], claims[0x3ff], claims[0x400]], [0, 1, 1, 0], 'ranges mapped before the map was made');
  bus.insert(0xcf8n, 1n, new Recorder(), 'pci-config-address');
  assert.equal(claims[0xcf8], 1, 'a range mapped later');
  assert.equal(claims[0xcf9], 0);
  assert.equal(bus.remove(0x3f8n), true);
  assert.equal(claims.slice(0x3f8, 0x400).some((b) => b !== 0), false, 'a removed range is unclaimed again');
  assert.equal(bus.claimsMap(), claims.buffer, 'one map per bus');
  assert.throws(() => new Bus('mmio').claimsMap(), /port I\/O/);
});
