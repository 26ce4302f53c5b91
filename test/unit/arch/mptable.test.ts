import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { buildMpTable } from '../../../src/arch/x86/mptable.js';
import { EBDA_START } from '../../../src/arch/x86/layout.js';

const sum = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);

function parse(mem: RegionGuestMemory, fp: bigint) {
  const config = BigInt(mem.readU32(fp + 4n));
  const length = mem.readU16(config + 4n);
  const bytes = mem.slice(config, length);
  const entries: Uint8Array[] = [];
  for (let off = 44; off < length;) {
    const len = bytes[off] === 0 ? 20 : 8;
    entries.push(bytes.subarray(off, off + len));
    off += len;
  }
  return { config, bytes, entries, count: mem.readU16(config + 34n) };
}

test('the MP floating pointer and configuration table are checksummed and complete', () => {
  const mem = RegionGuestMemory.ofSize(4 << 20);
  const fp = buildMpTable(mem, { cpus: 4, apicIds: [0, 2, 4, 6] });
  assert.equal(fp, EBDA_START);
  assert.equal(new TextDecoder().decode(mem.slice(fp, 4)), '_MP_');
  assert.equal(sum(mem.slice(fp, 16)), 0);
  const { bytes, entries, count } = parse(mem, fp);
  assert.equal(new TextDecoder().decode(bytes.subarray(0, 4)), 'PCMP');
  assert.equal(sum(bytes), 0);
  assert.equal(count, entries.length);
  const cpus = entries.filter((e) => e[0] === 0);
  assert.deepEqual(cpus.map((e) => e[1]), [0, 2, 4, 6]);
  assert.deepEqual(cpus.map((e) => e[3]! & 2), [2, 0, 0, 0], 'only the first CPU is the BSP');
  const irqs = entries.filter((e) => e[0] === 3 && e[1] === 0).map((e) => ({ irq: e[5], pin: e[7], flags: e[2]! | (e[3]! << 8) }));
  assert.equal(irqs.find((i) => i.irq === 0)!.pin, 2, 'PIT on pin 2');
  assert.equal(irqs.find((i) => i.irq === 9)!.flags, 0xd, 'SCI level, active high');
  assert.equal(irqs.find((i) => i.irq === 4)!.pin, 4);
  assert.equal(irqs.length, 15);
  const lints = entries.filter((e) => e[0] === 4).map((e) => [e[1], e[7]]);
  assert.deepEqual(lints, [[3, 0], [1, 1]], 'LINT0 ExtINT, LINT1 NMI');
});

test('MP table limits are reported in one line', () => {
  const mem = RegionGuestMemory.ofSize(4 << 20);
  assert.throws(() => buildMpTable(mem, { cpus: 2, apicIds: [0, 300] }), /APIC ID 300 does not fit in 8 bits/);
  assert.throws(() => buildMpTable(mem, { cpus: 64 }), /MP table for 64 CPUs \(\d+ bytes\) does not fit below 0xa0000/);
  assert.throws(() => buildMpTable(mem, { cpus: 2, apicIds: [0] }), /1 APIC IDs for 2 CPUs/);
  assert.throws(() => buildMpTable(mem, { cpus: 1, address: 0x9fc04n }), /not 16-byte aligned/);
});
