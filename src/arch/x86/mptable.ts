// The Intel MultiProcessor Specification 1.4 tables: a floating pointer and a configuration
// table listing the CPUs, the ISA bus, the IOAPIC and how the 16 ISA IRQs reach it. Linux
// only reads them when it does not use ACPI (acpi=off, or a kernel without ACPI), so they
// are a fallback; they describe the same machine as the MADT.
import { GuestMemory } from '../../memory/guest-memory.js';
import { EBDA_START, IOAPIC_ID, IOAPIC_START, LAPIC_START, LEGACY_HOLE_START } from './layout.js';

const MP_SPEC_REVISION = 4; // MP specification 1.4
const LAPIC_VERSION = 0x14;
const IOAPIC_VERSION = 0x11;
const ENTRY_PROCESSOR = 0;
const ENTRY_BUS = 1;
const ENTRY_IOAPIC = 2;
const ENTRY_IO_INTERRUPT = 3;
const ENTRY_LOCAL_INTERRUPT = 4;
const INT_TYPE_INT = 0;
const INT_TYPE_NMI = 1;
const INT_TYPE_EXTINT = 3;
const CPU_ENABLED = 1;
const CPU_BSP = 2;
const ISA_BUS_ID = 0;
/** Polarity/trigger "conforms to the bus" (ISA: active high, edge). */
const FLAGS_CONFORM = 0;
/** SCI: active high (1), level triggered (3 << 2), as in the MADT override. */
const FLAGS_HIGH_LEVEL = 0x1 | (0x3 << 2);

export interface MpTableOptions {
  cpus: number;
  /** APIC ID per CPU (defaults to 0..cpus-1); the MP table only holds 8-bit IDs. */
  apicIds?: readonly number[];
  /** ISA IRQs wired level/active-high instead of edge (the SCI, IRQ 9). */
  levelIrqs?: readonly number[];
  /** Guest address (16-byte aligned); defaults to the start of the EBDA where Linux scans. */
  address?: bigint;
  /** End (exclusive) of the space the table may use; defaults to the end of the EBDA. */
  limit?: bigint;
}

function checksumOf(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

/** Writes the floating pointer and configuration table; returns the floating pointer's address. */
export function buildMpTable(mem: GuestMemory, opts: MpTableOptions): bigint {
  const apicIds = opts.apicIds ?? Array.from({ length: opts.cpus }, (_, i) => i);
  if (opts.cpus < 1 || apicIds.length !== opts.cpus) {
    throw new Error(`MP table: ${apicIds.length} APIC IDs for ${opts.cpus} CPUs`);
  }
  const tooBig = apicIds.find((id) => id > 254);
  if (tooBig !== undefined) throw new Error(`MP table: APIC ID ${tooBig} does not fit in 8 bits (use ACPI)`);
  const levelIrqs = new Set(opts.levelIrqs ?? [9]);
  const address = opts.address ?? EBDA_START;
  const limit = opts.limit ?? LEGACY_HOLE_START;

  const entries: number[] = [];
  let count = 0;
  const u16 = (v: number) => entries.push(v & 0xff, (v >> 8) & 0xff);
  const u32 = (v: number) => entries.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  apicIds.forEach((id, i) => {
    entries.push(ENTRY_PROCESSOR, id, LAPIC_VERSION, CPU_ENABLED | (i === 0 ? CPU_BSP : 0));
    u32(0x600); // CPU signature: family 6 (informational only)
    u32(0x201); // feature flags: FPU, APIC
    u32(0);
    u32(0);
    count++;
  });
  entries.push(ENTRY_BUS, ISA_BUS_ID, ...[...'ISA   '].map((c) => c.charCodeAt(0)));
  count++;
  entries.push(ENTRY_IOAPIC, IOAPIC_ID, IOAPIC_VERSION, 1);
  u32(Number(IOAPIC_START));
  count++;
  // ISA IRQ n goes to IOAPIC pin n, except IRQ 0 (the PIT) which is wired to pin 2; pin 0
  // gets the 8259's ExtINT output.
  entries.push(ENTRY_IO_INTERRUPT, INT_TYPE_EXTINT);
  u16(FLAGS_CONFORM);
  entries.push(ISA_BUS_ID, 0, IOAPIC_ID, 0);
  count++;
  for (let irq = 0; irq < 16; irq++) {
    if (irq === 2) continue; // the cascade
    entries.push(ENTRY_IO_INTERRUPT, INT_TYPE_INT);
    u16(levelIrqs.has(irq) ? FLAGS_HIGH_LEVEL : FLAGS_CONFORM);
    entries.push(ISA_BUS_ID, irq, IOAPIC_ID, irq === 0 ? 2 : irq);
    count++;
  }
  entries.push(ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT);
  u16(FLAGS_CONFORM);
  entries.push(ISA_BUS_ID, 0, 0xff, 0); // LINT0 of every local APIC
  count++;
  entries.push(ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI);
  u16(FLAGS_CONFORM);
  entries.push(ISA_BUS_ID, 0, 0xff, 1); // LINT1
  count++;

  const config = new Uint8Array(44 + entries.length);
  const dv = new DataView(config.buffer);
  config.set([...'PCMP'].map((c) => c.charCodeAt(0)), 0);
  dv.setUint16(4, config.length, true);
  dv.setUint8(6, MP_SPEC_REVISION);
  config.set([...'TSVIRT  '].map((c) => c.charCodeAt(0)), 8);
  config.set([...'TSVIRT-VM   '].map((c) => c.charCodeAt(0)), 16);
  dv.setUint16(34, count, true);
  dv.setUint32(36, Number(LAPIC_START), true);
  config.set(entries, 44);
  config[7] = checksumOf(config);

  const floating = new Uint8Array(16);
  const configAddress = address + 16n;
  if (address % 16n !== 0n) throw new Error(`MP table address 0x${address.toString(16)} is not 16-byte aligned`);
  if (configAddress + BigInt(config.length) > limit) {
    throw new Error(`MP table for ${opts.cpus} CPUs (${16 + config.length} bytes) does not fit below 0x${limit.toString(16)}`);
  }
  floating.set([...'_MP_'].map((c) => c.charCodeAt(0)), 0);
  new DataView(floating.buffer).setUint32(4, Number(configAddress), true);
  floating[8] = 1; // length in 16-byte units
  floating[9] = MP_SPEC_REVISION;
  floating[10] = checksumOf(floating);
  mem.write(address, floating);
  mem.write(configAddress, config);
  return address;
}
