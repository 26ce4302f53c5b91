// Decodes the ACPI tables with ACPICA's disassembler (Debian package acpica-tools): every
// table must disassemble without errors, and the DSDT must show the devices we meant.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { buildAcpiTables } from '../../../src/arch/x86/acpi/build-tables.js';
import {
  add, arg, device, field, ifElse, integer, lEqual, local, method, name, notify, operationRegion, pkg, ref, returnValue, store,
  string,
} from '../../../src/arch/x86/acpi/aml.js';

/** The PCI host bridge _OSC UUID as the 16 bytes ToUUID() produces. */
const OSC_UUID_BYTES = '5b 4d db 33 f7 1f 1c 40 96 57 74 41 c0 3d d7 66';

function iasl(args: string[], cwd: string): { status: number | null; output: string } {
  const r = spawnSync('iasl', args, { cwd, encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw new Error(`cannot run iasl (install the Debian package acpica-tools): ${r.error.message}`);
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

test('iasl disassembles every table without errors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-acpi-'));
  try {
    const mem = RegionGuestMemory.ofSize(256 << 20);
    const apicIds = Array.from({ length: 260 }, (_, i) => i);
    const prt = {
      scope: '\\_SB.PCI0' as const,
      build: () => name('_PRT', pkg([pkg([integer(0x0001ffff), integer(0), integer(0), integer(16)])])),
    };
    const extraDevice = {
      scope: '\\_SB' as const,
      build: () => device('TST0', [
        name('_HID', string('TSV0001')),
        method('_STA', 0, false, [returnValue(integer(0xf))]),
        method('ECHO', 1, true, [returnValue(arg(0))]),
        operationRegion('HPRG', 'SystemIO', 0xae00, 0x14),
        field('HPRG', 'DWordAcc', [{ name: 'PCIU', bits: 32 }, { bits: 32 }, { name: 'B0EJ', bits: 32 }]),
        method('SCAN', 0, false, [
          store(add(ref('PCIU'), integer(1)), local(1)),
          ifElse(lEqual(local(1), integer(2)), [notify(ref('\\_SB.TST0'), integer(1))], [store(integer(0), ref('B0EJ'))]),
        ]),
      ]),
    };
    const { bytes } = buildAcpiTables(mem, { cpus: apicIds.length, apicIds, memorySize: 6n << 30n, extraDsdt: [prt, extraDevice] });
    for (const [signature, table] of Object.entries(bytes)) {
      if (signature === 'RSDP') continue; // iasl only disassembles RSDPs found in a memory dump
      const file = join(dir, `${signature.toLowerCase()}.dat`);
      writeFileSync(file, table);
      const r = iasl(['-d', file], dir);
      assert.equal(r.status, 0, `iasl -d ${signature} failed:\n${r.output}`);
      assert.doesNotMatch(r.output, /\b(Error|Warning)\b/i, `${signature}:\n${r.output}`);
      const dsl = readFileSync(join(dir, `${signature.toLowerCase()}.dsl`), 'utf8');
      assert.doesNotMatch(dsl, /Invalid|Unknown|\*\*\*\*/, `${signature} disassembly reports a problem`);
    }
    const dsdt = readFileSync(join(dir, 'dsdt.dsl'), 'utf8');
    for (const want of ['Name (_S5, Package (0x04)', 'EisaId ("PNP0501")', 'EisaId ("PNP0303")', 'EisaId ("PNP0B00")',
      'EisaId ("PNP0A08")', 'EisaId ("PNP0A03")', 'EisaId ("PNP0C02")', 'WordBusNumber (ResourceProducer',
      'QWordMemory (ResourceProducer', 'DWordMemory (ResourceProducer', 'Memory32Fixed (ReadWrite',
      'Name (_PRT, Package (0x01)', 'Method (ECHO, 1, Serialized)', 'Device (TST0)',
      'OperationRegion (HPRG, SystemIO, 0xAE00, 0x14)', 'PCIU,   32', 'B0EJ,   32', 'Notify (\\_SB.TST0, One)',
      'ToUUID ("33db4d5b-1ff7-401c-9657-7441c03dd766") /* PCI Host Bridge Device */', '0x00000001C0000000' /* 64-bit window above 7 GiB of RAM end */]) {
      assert.ok(dsdt.includes(want), `DSDT disassembly lacks ${want}`);
    }
    assert.equal(dsdt.match(/Name \(_HID, "ACPI0007"/g)?.length, apicIds.length, 'one processor device per CPU');
    const madt = readFileSync(join(dir, 'apic.dsl'), 'utf8');
    assert.equal(madt.match(/Subtable Type : 00 \[Processor Local APIC\]/g)?.length, 255);
    assert.equal(madt.match(/Subtable Type : 09 \[Processor Local x2APIC\]/g)?.length, 5);
    const fadt = readFileSync(join(dir, 'facp.dsl'), 'utf8');
    assert.match(fadt, /8042 Present on ports 60\/64 \(V2\) : 1/);
    assert.match(fadt, /Hardware Reduced \(V5\) : 0/);
    assert.match(fadt, /Control Method Power Button \(V1\) : 0/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('acpiexec loads the tables and evaluates \\_S5 and a method added by an extra DSDT part', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-acpi-'));
  try {
    const mem = RegionGuestMemory.ofSize(64 << 20);
    const extra = {
      scope: '\\_SB' as const,
      build: () => method('ADD1', 1, false, [returnValue(arg(0))]),
    };
    const { bytes } = buildAcpiTables(mem, { cpus: 2, extraDsdt: [extra] });
    const files = ['DSDT', 'FACP', 'APIC', 'MCFG'].map((sig) => {
      const file = join(dir, `${sig.toLowerCase()}.dat`);
      writeFileSync(file, bytes[sig]!);
      return file;
    });
    const r = spawnSync('acpiexec', ['-b', ['evaluate \\_S5', 'evaluate \\_SB.ADD1 0x1234', 'evaluate \\_SB.PCI0._HID',
      // _OSC with the PCI host bridge UUID asking for everything, then with a foreign UUID.
      `evaluate \\_SB.PCI0._OSC (${OSC_UUID_BYTES}) 1 3 (00 00 00 00 1f 00 00 00 ff 00 00 00)`,
      'evaluate \\_SB.PCI0._OSC (00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f) 1 3 (00 00 00 00 1f 00 00 00 ff 00 00 00)',
    ].join('; '), ...files],
      { cwd: dir, encoding: 'utf8', timeout: 30_000 });
    if (r.error) throw new Error(`cannot run acpiexec (install the Debian package acpica-tools): ${r.error.message}`);
    const out = `${r.stdout}${r.stderr}`;
    assert.equal(r.status, 0, out);
    assert.match(out, /Evaluation of \\_S5 returned[\s\S]*?Contains 4 Elements:\s+\[Integer\] = 0000000000000005/);
    assert.match(out, /Evaluation of \\_SB\.ADD1 returned[\s\S]*?\[Integer\] = 0000000000001234/);
    assert.match(out, /Evaluation of \\_SB\.PCI0\._HID returned[\s\S]*?\[Integer\] = 00000000080AD041/);
    const osc = [...out.matchAll(/Evaluation of \\_SB\.PCI0\._OSC returned[\s\S]*?0000: ((?:[0-9A-F]{2} ){12})/g)].map((m) => m[1]!.trim());
    // Granted controls masked to 0x1f, with "capabilities masked" (0x10) reported in CDW1.
    assert.equal(osc[0], '10 00 00 00 1F 00 00 00 1F 00 00 00');
    // Unknown UUID: CDW1 gets "unrecognized UUID" (0x04) and nothing is granted.
    assert.equal(osc[1], '04 00 00 00 1F 00 00 00 FF 00 00 00');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
