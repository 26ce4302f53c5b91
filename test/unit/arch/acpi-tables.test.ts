import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { buildAcpiTables } from '../../../src/arch/x86/acpi/build-tables.js';
import { checksumOk } from '../../../src/arch/x86/acpi/tables.js';
import { device, integer, name, pkg } from '../../../src/arch/x86/acpi/aml.js';
import {
  ACPI_RESET_PORT, ACPI_SCI_IRQ, ACPI_TABLES_END, ACPI_TABLES_START, PCIE_ECAM_START,
} from '../../../src/arch/x86/layout.js';

const decoder = new TextDecoder();

function signatureAt(mem: RegionGuestMemory, address: bigint): string {
  return decoder.decode(mem.slice(address, 4));
}

function tableAt(mem: RegionGuestMemory, address: bigint): Uint8Array {
  return mem.slice(address, mem.readU32(address + 4n));
}

interface MadtEntry { type: number; bytes: Uint8Array }
function madtEntries(table: Uint8Array): MadtEntry[] {
  const out: MadtEntry[] = [];
  for (let off = 44; off < table.length;) {
    const len = table[off + 1]!;
    assert.ok(len >= 2, 'MADT entry length');
    out.push({ type: table[off]!, bytes: table.subarray(off, off + len) });
    off += len;
  }
  return out;
}

test('the RSDP chain leads to checksummed FADT, MADT and MCFG in guest memory', () => {
  const mem = RegionGuestMemory.ofSize(64 << 20);
  const { rsdp } = buildAcpiTables(mem, { cpus: 4 });
  assert.ok(rsdp >= ACPI_TABLES_START && rsdp < ACPI_TABLES_END && rsdp % 16n === 0n);
  assert.equal(decoder.decode(mem.slice(rsdp, 8)), 'RSD PTR ');
  assert.ok(checksumOk(mem.slice(rsdp, 20)), 'RSDP v1 checksum');
  assert.ok(checksumOk(mem.slice(rsdp, 36)), 'RSDP extended checksum');
  assert.equal(mem.readU8(rsdp + 15n), 2);

  const xsdt = mem.readU64(rsdp + 24n);
  assert.equal(signatureAt(mem, xsdt), 'XSDT');
  const xsdtBytes = tableAt(mem, xsdt);
  assert.ok(checksumOk(xsdtBytes));
  const found: string[] = [];
  for (let off = 36; off < xsdtBytes.length; off += 8) {
    const addr = new DataView(xsdtBytes.buffer, xsdtBytes.byteOffset).getBigUint64(off, true);
    const sig = signatureAt(mem, addr);
    found.push(sig);
    assert.ok(checksumOk(tableAt(mem, addr)), `${sig} checksum`);
  }
  assert.deepEqual(found.sort(), ['APIC', 'FACP', 'MCFG']);

  // The RSDT lists the same tables with 32-bit pointers.
  const rsdt = BigInt(mem.readU32(rsdp + 16n));
  assert.equal(signatureAt(mem, rsdt), 'RSDT');
  assert.ok(checksumOk(tableAt(mem, rsdt)));
  assert.equal(mem.readU32(rsdt + 4n), 36 + 4 * 3);
});

test('the FADT describes the full ACPI hardware model', () => {
  const mem = RegionGuestMemory.ofSize(64 << 20);
  const { tables } = buildAcpiTables(mem, { cpus: 1 });
  const f = tables['FACP']!;
  assert.equal(mem.readU8(f + 8n), 6, 'revision 6');
  assert.equal(mem.readU32(f + 4n), 276);
  const flags = mem.readU32(f + 112n);
  assert.equal(flags & (1 << 20), 0, 'not hardware-reduced');
  assert.equal(flags & (1 << 4), 0, 'power button is a fixed feature');
  assert.ok(flags & (1 << 10), 'reset register supported');
  assert.ok(mem.readU16(f + 109n) & 2, '8042 present');
  assert.equal(mem.readU16(f + 46n), ACPI_SCI_IRQ);
  assert.equal(mem.readU8(f + 116n), 1, 'reset register in I/O space');
  assert.equal(mem.readU64(f + 120n), BigInt(ACPI_RESET_PORT));
  assert.equal(mem.readU8(f + 128n), 0x06);
  const dsdt = mem.readU64(f + 140n);
  assert.equal(signatureAt(mem, dsdt), 'DSDT');
  assert.ok(checksumOk(tableAt(mem, dsdt)));
  assert.equal(BigInt(mem.readU32(f + 40n)), dsdt);
  const facs = BigInt(mem.readU32(f + 36n));
  assert.equal(mem.readU64(f + 132n), 0n, 'X_FIRMWARE_CTRL stays 0 when the FACS is below 4 GiB');
  assert.equal(signatureAt(mem, facs), 'FACS');
  assert.equal(facs % 64n, 0n, 'FACS is 64-byte aligned');
  assert.equal(mem.readU32(f + 56n), 0x600);
  assert.equal(mem.readU32(f + 64n), 0x604);
  assert.equal(mem.readU32(f + 76n), 0x608);
});

test('the MADT has local APICs, x2APICs above ID 254, the IOAPIC and the ISA overrides', () => {
  const mem = RegionGuestMemory.ofSize(64 << 20);
  const apicIds = [0, 1, 2, 254, 255, 300];
  const { tables } = buildAcpiTables(mem, { cpus: apicIds.length, apicIds });
  const entries = madtEntries(tableAt(mem, tables['APIC']!));
  const local = entries.filter((e) => e.type === 0);
  assert.deepEqual(local.map((e) => e.bytes[3]), [0, 1, 2, 254]);
  assert.deepEqual(local.map((e) => e.bytes[2]), [0, 1, 2, 3], 'processor UIDs follow the CPU index');
  const x2 = entries.filter((e) => e.type === 9).map((e) => new DataView(e.bytes.buffer, e.bytes.byteOffset));
  assert.deepEqual(x2.map((v) => v.getUint32(4, true)), [255, 300]);
  assert.deepEqual(x2.map((v) => v.getUint32(12, true)), [4, 5]);
  assert.ok(x2.every((v) => v.getUint32(8, true) === 1), 'x2APIC entries enabled');
  const ioapic = entries.filter((e) => e.type === 1);
  assert.equal(ioapic.length, 1);
  assert.equal(new DataView(ioapic[0]!.bytes.buffer, ioapic[0]!.bytes.byteOffset).getUint32(8, true), 0, 'GSI base 0');
  const overrides = entries.filter((e) => e.type === 2).map((e) => {
    const v = new DataView(e.bytes.buffer, e.bytes.byteOffset);
    return { irq: e.bytes[3], gsi: v.getUint32(4, true), flags: v.getUint16(8, true) };
  });
  assert.deepEqual(overrides, [{ irq: 0, gsi: 2, flags: 0 }, { irq: 9, gsi: 9, flags: 0x0d }]);
  assert.equal(entries.filter((e) => e.type === 4).length, 1, 'local APIC NMI');
  assert.equal(entries.filter((e) => e.type === 10).length, 1, 'local x2APIC NMI');

  const small = RegionGuestMemory.ofSize(64 << 20);
  const two = buildAcpiTables(small, { cpus: 2 });
  const smallEntries = madtEntries(tableAt(small, two.tables['APIC']!));
  assert.equal(smallEntries.filter((e) => e.type === 9 || e.type === 10).length, 0, 'no x2APIC entries when not needed');
});

test('the MCFG points at the ECAM for buses 0..255', () => {
  const mem = RegionGuestMemory.ofSize(64 << 20);
  const { tables } = buildAcpiTables(mem, { cpus: 1 });
  const m = tables['MCFG']!;
  assert.equal(mem.readU64(m + 44n), PCIE_ECAM_START);
  assert.equal(mem.readU8(m + 54n), 0);
  assert.equal(mem.readU8(m + 55n), 255);
});

test('extra DSDT parts land in the DSDT and leave it checksummed', () => {
  const mem = RegionGuestMemory.ofSize(64 << 20);
  const plain = buildAcpiTables(RegionGuestMemory.ofSize(64 << 20), { cpus: 1 });
  const extra = device('PTST', [name('_ADR', integer(0x10000)), name('XPKG', pkg([integer(1), integer(2)]))]);
  const { tables } = buildAcpiTables(mem, { cpus: 1, extraDsdt: [{ scope: '\\_SB.PCI0', build: () => extra }] });
  const dsdt = tableAt(mem, tables['DSDT']!);
  assert.ok(checksumOk(dsdt));
  assert.ok(dsdt.length > plain.bytes['DSDT']!.length + extra.length - 1);
  assert.ok(Buffer.from(dsdt).includes(Buffer.from(extra)), 'extra AML is embedded verbatim');
});

test('the DSDT has one processor device per CPU, named by index', () => {
  const mem = RegionGuestMemory.ofSize(64 << 20);
  const { bytes } = buildAcpiTables(mem, { cpus: 20 });
  const dsdt = Buffer.from(bytes['DSDT']!);
  const count = (needle: string) => dsdt.toString('latin1').split(needle).length - 1;
  assert.equal(count('ACPI0007'), 20);
  assert.equal(count('C013'), 1, 'the 20th CPU is C013');
  assert.equal(count('C014'), 0);
});

test('no PCI leaves out PCI0 and the MCFG', () => {
  const mem = RegionGuestMemory.ofSize(64 << 20);
  const { tables, bytes } = buildAcpiTables(mem, { cpus: 1, pci: false });
  assert.equal(tables['MCFG'], undefined);
  assert.ok(!Buffer.from(bytes['DSDT']!).includes(Buffer.from('PCI0')));
});

test('bad ACPI options are refused in one line', () => {
  const mem = RegionGuestMemory.ofSize(64 << 20);
  assert.throws(() => buildAcpiTables(mem, { cpus: 0 }), /CPU count 0 must be at least 1/);
  assert.throws(() => buildAcpiTables(mem, { cpus: 2, apicIds: [0] }), /1 APIC IDs given for 2 CPUs/);
  assert.throws(() => buildAcpiTables(mem, { cpus: 2, apicIds: [3, 3] }), /not unique/);
  assert.throws(() => buildAcpiTables(mem, { cpus: 4000 }), /table \w+ \(\d+ bytes\) does not fit below 0x100000/);
  assert.throws(() => buildAcpiTables(mem, { cpus: 5000 }), /5000 processor devices exceed the 4095/);
  assert.throws(() => buildAcpiTables(RegionGuestMemory.ofSize(0x80000), { cpus: 1, pci: false }), /0xe0000/);
});
