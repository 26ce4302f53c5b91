import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  e820Map, guestMemoryRegions, pciMmio64Window, E820_RAM, E820_RESERVED, HIGH_RAM_START, LOW_RAM_MAX,
  PCIE_ECAM_START, PCI_MMIO32_START, PCI_MMIO32_SIZE, PCIE_ECAM_SIZE, IOAPIC_START, LAPIC_START,
} from '../../../src/arch/x86/layout.js';

const MiB = 1n << 20n;
const GiB = 1n << 30n;

function sumRam(memorySize: bigint): bigint {
  return e820Map(memorySize).filter((e) => e.type === E820_RAM).reduce((s, e) => s + e.size, 0n);
}

test('small guests get one RAM region and no RAM above the hole', () => {
  assert.deepEqual(guestMemoryRegions(256n * MiB), [{ guestAddress: 0n, size: 256n * MiB }]);
  assert.deepEqual(guestMemoryRegions(3n * GiB), [{ guestAddress: 0n, size: 3n * GiB }]);
});

test('memory above 3 GiB continues at 4 GiB', () => {
  assert.deepEqual(guestMemoryRegions(8n * GiB), [
    { guestAddress: 0n, size: LOW_RAM_MAX },
    { guestAddress: HIGH_RAM_START, size: 5n * GiB },
  ]);
  const regions = guestMemoryRegions(3n * GiB + 4096n);
  assert.equal(regions.length, 2);
  assert.equal(regions[1]!.size, 4096n);
});

test('e820 maps exactly the RAM of the regions minus the reserved low areas', () => {
  for (const size of [2n * MiB, 128n * MiB, 1n * GiB, 3n * GiB, 3n * GiB + 64n * MiB, 6n * GiB, 100n * GiB]) {
    const map = e820Map(size);
    // Sorted, non-overlapping.
    for (let i = 1; i < map.length; i++) {
      assert.ok(map[i - 1]!.address + map[i - 1]!.size <= map[i]!.address, `overlap at ${i} for size ${size}`);
    }
    // Every RAM entry lies inside a memory region.
    const regions = guestMemoryRegions(size);
    for (const e of map.filter((x) => x.type === E820_RAM)) {
      assert.ok(regions.some((r) => e.address >= r.guestAddress && e.address + e.size <= r.guestAddress + r.size));
    }
    // Only the 0x9fc00..1 MiB area of RAM is withheld.
    assert.equal(sumRam(size), size - (0x100000n - 0x9fc00n));
    // No RAM inside the PCI hole.
    for (const e of map.filter((x) => x.type === E820_RAM)) {
      assert.ok(e.address + e.size <= PCI_MMIO32_START || e.address >= HIGH_RAM_START);
    }
  }
});

test('e820 reserves ECAM, IOAPIC and LAPIC', () => {
  const map = e820Map(512n * MiB);
  const reserved = map.filter((e) => e.type === E820_RESERVED).map((e) => e.address);
  assert.ok(reserved.includes(PCIE_ECAM_START));
  assert.ok(reserved.includes(IOAPIC_START));
  assert.ok(reserved.includes(LAPIC_START));
  assert.equal(map.find((e) => e.address === PCIE_ECAM_START)!.size, PCIE_ECAM_SIZE);
});

test('the fixed windows do not overlap each other', () => {
  assert.ok(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCIE_ECAM_START);
  assert.ok(PCIE_ECAM_START + PCIE_ECAM_SIZE <= IOAPIC_START);
});

test('the 64-bit MMIO window starts 1 GiB aligned above RAM and at least at 4 GiB', () => {
  assert.equal(pciMmio64Window(1n * GiB).start, 4n * GiB);
  assert.equal(pciMmio64Window(3n * GiB).start, 4n * GiB);
  assert.equal(pciMmio64Window(4n * GiB).start, 5n * GiB);
  assert.equal(pciMmio64Window(4n * GiB + 4096n).start, 6n * GiB);
  assert.equal(pciMmio64Window(4n * GiB).size, 64n * GiB);
});

test('bad memory sizes are refused with the size named', () => {
  assert.throws(() => guestMemoryRegions(1n * MiB), /1048576 is below the minimum/);
  assert.throws(() => e820Map(64n * MiB + 1n), /not a multiple of the 4 KiB page size/);
});
