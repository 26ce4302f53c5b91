// Builders for the static ACPI tables of the x86 machine: RSDP, XSDT/RSDT, FADT, FACS,
// MADT, MCFG and the DSDT wrapper. Each returns the table's bytes with its checksum set;
// placing them in guest memory and linking addresses is build-tables.ts's job.
// Field offsets follow the ACPI 6.x specification, chapter 5.2.
import {
  ACPI_GPE0_LENGTH, ACPI_GPE0_PORT, ACPI_PM1A_CNT_PORT, ACPI_PM1A_EVT_PORT, ACPI_PM1_CNT_LENGTH,
  ACPI_PM1_EVT_LENGTH, ACPI_PM_TIMER_LENGTH, ACPI_PM_TIMER_PORT, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SCI_IRQ,
  IOAPIC_ID, IOAPIC_START, LAPIC_START,
} from '../layout.js';

export const OEM_ID = 'TSVIRT';
export const OEM_TABLE_ID = 'TSVIRTVM';
export const CREATOR_ID = 'TSVT';
export const SDT_HEADER_SIZE = 36;

/** The byte that makes the sum of `bytes` zero modulo 256. */
export function checksumByte(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

/** Whether a byte range sums to zero modulo 256, the ACPI checksum rule. */
export function checksumOk(bytes: Uint8Array): boolean {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return sum === 0;
}

function ascii(dv: DataView, offset: number, text: string, width: number): void {
  for (let i = 0; i < width; i++) dv.setUint8(offset + i, i < text.length ? text.charCodeAt(i) : 0x20);
}

/**
 * A system description table: the 36-byte header, then `body`, with the length and checksum
 * filled in.
 */
export function sdt(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const table = new Uint8Array(SDT_HEADER_SIZE + body.length);
  const dv = new DataView(table.buffer);
  ascii(dv, 0, signature, 4);
  dv.setUint32(4, table.length, true);
  dv.setUint8(8, revision);
  ascii(dv, 10, OEM_ID, 6);
  ascii(dv, 16, OEM_TABLE_ID, 8);
  dv.setUint32(24, 1, true); // OEM revision
  ascii(dv, 28, CREATOR_ID, 4);
  dv.setUint32(32, 1, true); // creator revision
  table.set(body, SDT_HEADER_SIZE);
  table[9] = checksumByte(table);
  return table;
}

/** RSDP revision 2 (36 bytes): checksum over the first 20 bytes, extended checksum over all. */
export function rsdp(xsdtAddress: bigint, rsdtAddress: number): Uint8Array {
  const t = new Uint8Array(36);
  const dv = new DataView(t.buffer);
  ascii(dv, 0, 'RSD PTR ', 8);
  ascii(dv, 9, OEM_ID, 6);
  dv.setUint8(15, 2);
  dv.setUint32(16, rsdtAddress, true);
  dv.setUint32(20, 36, true);
  dv.setBigUint64(24, xsdtAddress, true);
  t[8] = checksumByte(t.subarray(0, 20));
  t[32] = checksumByte(t);
  return t;
}

/** XSDT: 64-bit pointers to every other table except the DSDT and FACS. */
export function xsdt(tableAddresses: readonly bigint[]): Uint8Array {
  const body = new Uint8Array(tableAddresses.length * 8);
  const dv = new DataView(body.buffer);
  tableAddresses.forEach((a, i) => dv.setBigUint64(i * 8, a, true));
  return sdt('XSDT', 1, body);
}

/** RSDT: the same list with 32-bit pointers, for ACPI 1.0 readers. */
export function rsdt(tableAddresses: readonly bigint[]): Uint8Array {
  const body = new Uint8Array(tableAddresses.length * 4);
  const dv = new DataView(body.buffer);
  tableAddresses.forEach((a, i) => {
    if (a > 0xffffffffn) throw new Error(`ACPI table at 0x${a.toString(16)} is not reachable from the RSDT`);
    dv.setUint32(i * 4, Number(a), true);
  });
  return sdt('RSDT', 1, body);
}

/** FACS (64 bytes, no header checksum): needed by a FADT that is not hardware-reduced. */
export function facs(): Uint8Array {
  const t = new Uint8Array(64);
  const dv = new DataView(t.buffer);
  ascii(dv, 0, 'FACS', 4);
  dv.setUint32(4, 64, true);
  dv.setUint8(32, 2); // version
  return t;
}

/** Generic Address Structure for a system I/O register. */
function gasIo(dv: DataView, offset: number, port: number, bitWidth: number, accessSize: number): void {
  dv.setUint8(offset, 1); // system I/O space
  dv.setUint8(offset + 1, bitWidth);
  dv.setUint8(offset + 2, 0);
  dv.setUint8(offset + 3, accessSize); // 1 byte, 2 word, 3 dword
  dv.setBigUint64(offset + 4, BigInt(port), true);
}

// FADT flags (ACPI 6.x table 5.10).
const FADT_WBINVD = 1 << 0;
const FADT_PROC_C1 = 1 << 2;
const FADT_SLP_BUTTON = 1 << 5; // set: no fixed-feature sleep button
const FADT_RESET_REG_SUP = 1 << 10;
// IA-PC boot architecture flags.
const IAPC_LEGACY_DEVICES = 1 << 0;
const IAPC_8042 = 1 << 1;
const IAPC_VGA_NOT_PRESENT = 1 << 2;

/**
 * FADT revision 6, full (not hardware-reduced) ACPI hardware model: the PM1a event and
 * control blocks, the PM timer, GPE0, SCI on IRQ 9 and the 0xCF9 reset register. The power
 * button is a fixed feature (PWR_BUTTON flag clear). There is no SMI_CMD port: ACPI is always
 * enabled, so the VMM's PM1a control register must read with SCI_EN set. The PM timer is the
 * 24-bit kind (TMR_VAL_EXT clear).
 */
export function fadt(facsAddress: bigint, dsdtAddress: bigint): Uint8Array {
  const body = new Uint8Array(276 - SDT_HEADER_SIZE);
  const dv = new DataView(body.buffer);
  const at = (fieldOffset: number) => fieldOffset - SDT_HEADER_SIZE;
  // The FACS pointer goes in exactly one of FIRMWARE_CTRL / X_FIRMWARE_CTRL (the spec says an
  // OS ignores the 32-bit one when the 64-bit one is set; Linux would list the FACS twice).
  const facs32 = facsAddress <= 0xffffffffn;
  if (facs32) dv.setUint32(at(36), Number(facsAddress), true);
  if (dsdtAddress <= 0xffffffffn) dv.setUint32(at(40), Number(dsdtAddress), true);
  dv.setUint8(at(45), 0); // preferred PM profile: unspecified
  dv.setUint16(at(46), ACPI_SCI_IRQ, true);
  dv.setUint32(at(56), ACPI_PM1A_EVT_PORT, true);
  dv.setUint32(at(64), ACPI_PM1A_CNT_PORT, true);
  dv.setUint32(at(76), ACPI_PM_TIMER_PORT, true);
  dv.setUint32(at(80), ACPI_GPE0_PORT, true);
  dv.setUint8(at(88), ACPI_PM1_EVT_LENGTH);
  dv.setUint8(at(89), ACPI_PM1_CNT_LENGTH);
  dv.setUint8(at(91), ACPI_PM_TIMER_LENGTH);
  dv.setUint8(at(92), ACPI_GPE0_LENGTH);
  // C2/C3 latencies above 100/1000 us tell the OS those states are unsupported.
  dv.setUint16(at(96), 0x0fff, true);
  dv.setUint16(at(98), 0x0fff, true);
  dv.setUint8(at(108), 0x32); // CMOS index of the RTC century register
  dv.setUint16(at(109), IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT, true);
  dv.setUint32(at(112), FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RESET_REG_SUP, true);
  gasIo(dv, at(116), ACPI_RESET_PORT, 8, 1);
  dv.setUint8(at(128), ACPI_RESET_VALUE);
  dv.setUint8(at(131), 0); // FADT minor version
  if (!facs32) dv.setBigUint64(at(132), facsAddress, true);
  dv.setBigUint64(at(140), dsdtAddress, true);
  gasIo(dv, at(148), ACPI_PM1A_EVT_PORT, ACPI_PM1_EVT_LENGTH * 8, 2);
  gasIo(dv, at(172), ACPI_PM1A_CNT_PORT, ACPI_PM1_CNT_LENGTH * 8, 2);
  gasIo(dv, at(208), ACPI_PM_TIMER_PORT, ACPI_PM_TIMER_LENGTH * 8, 3);
  gasIo(dv, at(220), ACPI_GPE0_PORT, ACPI_GPE0_LENGTH * 8, 1);
  ascii(dv, at(268), 'TSVIRT', 8); // hypervisor vendor identity
  return sdt('FACP', 6, body);
}

// MADT structure types.
const MADT_LOCAL_APIC = 0;
const MADT_IO_APIC = 1;
const MADT_INTERRUPT_OVERRIDE = 2;
const MADT_LOCAL_APIC_NMI = 4;
const MADT_LOCAL_X2APIC = 9;
const MADT_LOCAL_X2APIC_NMI = 10;
const MADT_PCAT_COMPAT = 1;
const MADT_ENABLED = 1;
/** MPS INTI flags: polarity in bits 0..1 (1 = active high), trigger in bits 2..3 (3 = level). */
const INTI_ACTIVE_HIGH_LEVEL = 0x0001 | 0x000c;
const INTI_CONFORMS = 0;
/** The largest APIC ID a (legacy) local APIC entry can describe; 0xff means "broadcast". */
export const MAX_XAPIC_ID = 254;

export interface MadtOptions {
  /** APIC ID of each CPU, in ACPI processor UID order (UID = index). */
  apicIds: readonly number[];
}

/**
 * MADT: one local APIC entry per CPU whose APIC ID fits in 8 bits (< 255) and a local x2APIC
 * entry for larger IDs, the IOAPIC with GSI base 0, the ISA overrides IRQ0 -> GSI2 (the PIT
 * is wired to IOAPIC pin 2) and SCI -> GSI 9 level/active-high (the VMM's IOAPIC must program
 * pin 9 as level-triggered; KVM's in-kernel IOAPIC takes its trigger mode from the redirection
 * entry the guest writes, which follows this override), and LINT1 as NMI on every CPU.
 */
export function madt(opts: MadtOptions): Uint8Array {
  const parts: number[] = [];
  const u16 = (v: number) => parts.push(v & 0xff, (v >> 8) & 0xff);
  const u32 = (v: number) => parts.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  u32(Number(LAPIC_START));
  u32(MADT_PCAT_COMPAT);
  let needX2apicNmi = false;
  opts.apicIds.forEach((apicId, uid) => {
    if (apicId <= MAX_XAPIC_ID && uid <= 0xfe) {
      parts.push(MADT_LOCAL_APIC, 8, uid, apicId);
      u32(MADT_ENABLED);
    } else {
      parts.push(MADT_LOCAL_X2APIC, 16, 0, 0);
      u32(apicId);
      u32(MADT_ENABLED);
      u32(uid);
      needX2apicNmi = true;
    }
  });
  parts.push(MADT_IO_APIC, 12, IOAPIC_ID, 0);
  u32(Number(IOAPIC_START));
  u32(0); // GSI base
  parts.push(MADT_INTERRUPT_OVERRIDE, 10, 0, 0);
  u32(2);
  u16(INTI_CONFORMS);
  parts.push(MADT_INTERRUPT_OVERRIDE, 10, 0, ACPI_SCI_IRQ);
  u32(ACPI_SCI_IRQ);
  u16(INTI_ACTIVE_HIGH_LEVEL);
  // LINT1 is the NMI pin on every local APIC (processor UID 0xff = all).
  parts.push(MADT_LOCAL_APIC_NMI, 6, 0xff);
  u16(INTI_CONFORMS);
  parts.push(1);
  if (needX2apicNmi) {
    parts.push(MADT_LOCAL_X2APIC_NMI, 12);
    u16(INTI_CONFORMS);
    u32(0xffffffff);
    parts.push(1, 0, 0, 0);
  }
  return sdt('APIC', 5, Uint8Array.from(parts));
}

/** MCFG: one ECAM allocation for PCI segment 0. */
export function mcfg(ecamBase: bigint, busStart: number, busEnd: number): Uint8Array {
  const body = new Uint8Array(8 + 16);
  const dv = new DataView(body.buffer);
  dv.setBigUint64(8, ecamBase, true);
  dv.setUint16(16, 0, true);
  dv.setUint8(18, busStart);
  dv.setUint8(19, busEnd);
  return sdt('MCFG', 1, body);
}

/** DSDT: the header around the AML definition block. */
export function dsdt(aml: Uint8Array): Uint8Array {
  return sdt('DSDT', 2, aml);
}
