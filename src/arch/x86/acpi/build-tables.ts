// Lays the ACPI tables out in the BIOS area (0xE0000..1 MiB) of guest memory and links
// them: RSDP -> XSDT/RSDT -> FADT (-> FACS, DSDT), MADT, MCFG. The RSDP comes first and is
// 16-byte aligned so an OS that scans the BIOS area finds it even without acpi_rsdp_addr.
import { GuestMemory } from '../../../memory/guest-memory.js';
import { ACPI_TABLES_END, ACPI_TABLES_START, pciMmio64Window } from '../layout.js';
import {
  DsdtPart, PciHostConfig, buildDsdtAml, com1, defaultPciHostConfig, pciHostBridge, processors, ps2Keyboard, rtc, sleepStateS5,
} from './dsdt.js';
import { dsdt, facs, fadt, madt, mcfg, rsdp, rsdt, xsdt } from './tables.js';

export interface AcpiOptions {
  /** Number of vCPUs. */
  cpus: number;
  /** APIC ID of each vCPU (defaults to 0..cpus-1). */
  apicIds?: readonly number[];
  /**
   * The PCI host bridge; defaults to the standard layout (needs memorySize for the 64-bit
   * window) or pass a full config. `false` leaves out PCI0 and MCFG.
   */
  pci?: PciHostConfig | false;
  /** Guest memory size, for the default 64-bit PCI MMIO window (defaults to mem.size). */
  memorySize?: bigint;
  /** More DSDT content: PCI interrupt routing, hot-plug methods, extra devices. */
  extraDsdt?: readonly DsdtPart[];
}

export interface AcpiTables {
  /** Guest address of the RSDP (for boot_params.acpi_rsdp_addr). */
  rsdp: bigint;
  /** Guest address of every table by signature (RSDP, XSDT, RSDT, FACP, FACS, DSDT, APIC, MCFG). */
  tables: Record<string, bigint>;
  /** The bytes of each table, for inspection and tests. */
  bytes: Record<string, Uint8Array>;
}

/** The standard DSDT parts of this machine. */
export function standardDsdtParts(pci: PciHostConfig | false, cpus = 1): DsdtPart[] {
  return [sleepStateS5(), processors(cpus), com1(), ps2Keyboard(), rtc(), ...(pci ? pciHostBridge(pci) : [])];
}

/** Builds every table, writes them into guest memory and returns where they are. */
export function buildAcpiTables(mem: GuestMemory, opts: AcpiOptions): AcpiTables {
  if (!Number.isInteger(opts.cpus) || opts.cpus < 1) throw new Error(`ACPI: CPU count ${opts.cpus} must be at least 1`);
  const apicIds = opts.apicIds ?? Array.from({ length: opts.cpus }, (_, i) => i);
  if (apicIds.length !== opts.cpus) {
    throw new Error(`ACPI: ${apicIds.length} APIC IDs given for ${opts.cpus} CPUs`);
  }
  if (new Set(apicIds).size !== apicIds.length) throw new Error('ACPI: APIC IDs are not unique');
  const pci = opts.pci === undefined ? defaultPciHostConfig(pciMmio64Window(opts.memorySize ?? mem.size)) : opts.pci;

  if (!mem.contains(ACPI_TABLES_START, Number(ACPI_TABLES_END - ACPI_TABLES_START))) {
    throw new Error(`ACPI: guest memory does not cover the table area 0x${ACPI_TABLES_START.toString(16)}..0x${ACPI_TABLES_END.toString(16)}`);
  }
  let next = ACPI_TABLES_START;
  const tables: Record<string, bigint> = {};
  const bytes: Record<string, Uint8Array> = {};
  const place = (signature: string, size: number, align: bigint): bigint => {
    const address = ((next + align - 1n) / align) * align;
    if (address + BigInt(size) > ACPI_TABLES_END) {
      throw new Error(`ACPI: table ${signature} (${size} bytes) does not fit below 0x${ACPI_TABLES_END.toString(16)}`);
    }
    next = address + BigInt(size);
    tables[signature] = address;
    return address;
  };
  const put = (signature: string, address: bigint, table: Uint8Array) => {
    mem.write(address, table);
    bytes[signature] = table;
  };

  // Layout order: RSDP first (scan target), FACS 64-byte aligned, then the rest.
  const rsdpAddr = place('RSDP', 36, 16n);
  const facsTable = facs();
  put('FACS', place('FACS', facsTable.length, 64n), facsTable);
  const dsdtTable = dsdt(buildDsdtAml([...standardDsdtParts(pci, opts.cpus), ...(opts.extraDsdt ?? [])]));
  put('DSDT', place('DSDT', dsdtTable.length, 16n), dsdtTable);
  const fadtTable = fadt(tables['FACS']!, tables['DSDT']!);
  put('FACP', place('FACP', fadtTable.length, 16n), fadtTable);
  const madtTable = madt({ apicIds });
  put('APIC', place('APIC', madtTable.length, 16n), madtTable);
  const pointed = [tables['FACP']!, tables['APIC']!];
  if (pci) {
    const mcfgTable = mcfg(pci.ecamBase, pci.busStart, pci.busEnd);
    put('MCFG', place('MCFG', mcfgTable.length, 16n), mcfgTable);
    pointed.push(tables['MCFG']!);
  }
  const xsdtTable = xsdt(pointed);
  put('XSDT', place('XSDT', xsdtTable.length, 16n), xsdtTable);
  const rsdtTable = rsdt(pointed);
  put('RSDT', place('RSDT', rsdtTable.length, 16n), rsdtTable);
  put('RSDP', rsdpAddr, rsdp(tables['XSDT']!, Number(tables['RSDT']!)));
  return { rsdp: rsdpAddr, tables, bytes };
}
