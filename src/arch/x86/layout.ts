// The x86 machine's guest-physical memory map, fixed boot addresses and legacy I/O ports.
// Every engineer (loader, ACPI, devices, PCI, VMM) reads addresses from here so the
// firmware tables, the e820 map and the devices the VMM registers always agree.
//
// Guest-physical map:
//
//   0x0000_0000 .. 0x0009_FC00   low RAM (boot structures live here, see below)
//   0x0009_FC00 .. 0x000A_0000   EBDA (reserved)
//   0x000A_0000 .. 0x000E_0000   legacy VGA / option ROM hole (RAM, but reserved in e820)
//   0x000E_0000 .. 0x0010_0000   BIOS area: ACPI tables (and optional MP table), reserved
//   0x0010_0000 .. low RAM end   RAM; the kernel is loaded at 1 MiB
//   low RAM ends at min(memory size, 3 GiB)
//   0xC000_0000 .. 0xDFFF_FFFF   32-bit PCI MMIO window (512 MiB)
//   0xE000_0000 .. 0xEFFF_FFFF   PCIe ECAM, buses 0..255 (256 MiB), reserved
//   0xFEC0_0000                  IOAPIC
//   0xFEE0_0000                  local APIC
//   0x1_0000_0000 ..             RAM above 3 GiB continues at 4 GiB
//   align_up(end of RAM, 1 GiB)  64-bit PCI MMIO window (64 GiB)

const KiB = 1024n;
const MiB = 1024n * KiB;
const GiB = 1024n * MiB;

// ---- RAM and holes -------------------------------------------------------------------

/** RAM below this address is "low RAM"; the rest moves above 4 GiB. */
export const LOW_RAM_MAX = 3n * GiB;
/** Start of the 32-bit PCI hole (everything up to 4 GiB is MMIO, never RAM). */
export const PCI_HOLE_START = 0xc000_0000n;
/** RAM beyond LOW_RAM_MAX resumes here. */
export const HIGH_RAM_START = 4n * GiB;

/** 32-bit PCI MMIO window: BARs that must stay below 4 GiB. */
export const PCI_MMIO32_START = 0xc000_0000n;
export const PCI_MMIO32_SIZE = 0x2000_0000n;

/** PCIe enhanced configuration space (ECAM): 1 MiB per bus, buses 0..255. */
export const PCIE_ECAM_START = 0xe000_0000n;
export const PCIE_ECAM_SIZE = 0x1000_0000n;
export const PCIE_ECAM_BUS_START = 0;
export const PCIE_ECAM_BUS_END = 255;

/** The first IOAPIC; its 24 pins are GSIs 0..23. */
export const IOAPIC_START = 0xfec0_0000n;
export const IOAPIC_SIZE = 0x1000n;
export const IOAPIC_ID = 0;
export const IOAPIC_PINS = 24;

/** Every CPU's local APIC (xAPIC MMIO mode) sits at the architectural default. */
export const LAPIC_START = 0xfee0_0000n;
export const LAPIC_SIZE = 0x1000n;

/** The 64-bit PCI MMIO window starts at the first 1 GiB boundary at or after the end of RAM. */
export const PCI_MMIO64_ALIGN = GiB;
export const PCI_MMIO64_SIZE = 64n * GiB;

/** PCI I/O port window handed to the host bridge (everything except the config ports). */
export const PCI_IO_START = 0x1000;
export const PCI_IO_END = 0xffff;

// ---- boot structures in low RAM (all below 1 MiB) ------------------------------------

/** The GDT the loader writes: null, null, code64 (0x10), data (0x18), TSS (0x20). */
export const BOOT_GDT_START = 0x500n;
/** An empty IDT: Linux installs its own before enabling interrupts. */
export const BOOT_IDT_START = 0x520n;
/** Linux's boot_params ("zero page"). */
export const ZERO_PAGE_START = 0x7000n;
/** Initial stack pointer: grows down from just below the page tables. */
export const BOOT_STACK_POINTER = 0x8ff0n;
/** Identity-mapping page tables: one PML4, one PDPT and four page directories (4 GiB in 2 MiB pages). */
export const PML4_START = 0x9000n;
export const PDPT_START = 0xa000n;
export const PD_START = 0xb000n;
export const PD_COUNT = 4;
/** Kernel command line (NUL-terminated), at most CMDLINE_MAX_SIZE bytes including the NUL. */
export const CMDLINE_START = 0x20000n;
export const CMDLINE_MAX_SIZE = 0x10000;
/** Extended BIOS data area: reserved in e820; the optional MP table goes here. */
export const EBDA_START = 0x9fc00n;
/** BIOS data area words Linux reads: the EBDA segment and the base memory size in KiB. */
export const BDA_EBDA_SEGMENT = 0x40en;
export const BDA_BASE_MEMORY_KB = 0x413n;
/** End of conventional memory: from here to 1 MiB is the legacy hole. */
export const LEGACY_HOLE_START = 0xa0000n;
/** ACPI tables (RSDP first, so a scanning OS finds it too) fill the BIOS area up to 1 MiB. */
export const ACPI_TABLES_START = 0xe0000n;
export const ACPI_TABLES_END = 0x100000n;
/** Where the protected-mode kernel is loaded (the boot protocol's default code32_start). */
export const KERNEL_LOAD_ADDRESS = 0x100000n;
/** Smallest guest that can hold the boot structures and a kernel at 1 MiB. */
export const MIN_MEMORY_SIZE = 2n * MiB;

// ---- legacy I/O ports and their ISA IRQs ---------------------------------------------

export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;
export const COM2_PORT = 0x2f8;
export const COM2_IRQ = 3;
/** Each 16550 UART decodes 8 ports. */
export const UART_PORT_COUNT = 8;
export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;
export const I8042_KEYBOARD_IRQ = 1;
export const RTC_PORT = 0x70;
export const RTC_PORT_COUNT = 2;
export const RTC_IRQ = 8;
/** PCI configuration mechanism #1 (CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at 0xcfc). */
export const PCI_CONFIG_PORT = 0xcf8;
export const PCI_CONFIG_PORT_COUNT = 8;

/**
 * ACPI fixed-hardware register block, at the ports QEMU's ICH9 uses. The VMM's power
 * management device must implement: PM1a event block (status u16 at +0, enable u16 at +2),
 * PM1a control (u16; SCI_EN bit 0 must read 1 because there is no SMI_CMD port, so ACPI is
 * always enabled; writing SLP_EN (bit 13) with SLP_TYP (bits 10..12) == ACPI_S5_SLEEP_TYPE
 * powers off), the 24-bit PM timer (u32, 3.579545 MHz), and GPE0 (status bytes then
 * enable bytes, ACPI_GPE0_LENGTH in total, reading 0 when nothing is pending).
 */
export const ACPI_PM_BASE = 0x600;
export const ACPI_PM1A_EVT_PORT = 0x600;
export const ACPI_PM1_EVT_LENGTH = 4;
export const ACPI_PM1A_CNT_PORT = 0x604;
export const ACPI_PM1_CNT_LENGTH = 2;
export const ACPI_PM_TIMER_PORT = 0x608;
export const ACPI_PM_TIMER_LENGTH = 4;
export const ACPI_GPE0_PORT = 0x620;
export const ACPI_GPE0_LENGTH = 16;
/** SLP_TYP value the DSDT's \_S5 package announces: the VMM powers off when the guest writes it. */
export const ACPI_S5_SLEEP_TYPE = 5;
/** Reset control register (like Intel's RST_CNT): writing ACPI_RESET_VALUE resets the machine. */
export const ACPI_RESET_PORT = 0xcf9;
export const ACPI_RESET_VALUE = 0x06;
/** System control interrupt: ISA IRQ 9 = GSI 9, level-triggered, active high (see the MADT). */
export const ACPI_SCI_IRQ = 9;

// ---- maps -----------------------------------------------------------------------------

/** A range of guest RAM the VMM registers with KVM (a memory slot). */
export interface GuestRamRegion {
  guestAddress: bigint;
  size: bigint;
}

function checkMemorySize(memorySize: bigint): void {
  if (memorySize < MIN_MEMORY_SIZE) {
    throw new Error(`guest memory size ${memorySize} is below the minimum of ${MIN_MEMORY_SIZE} bytes`);
  }
  if (memorySize % 4096n !== 0n) {
    throw new Error(`guest memory size ${memorySize} is not a multiple of the 4 KiB page size`);
  }
}

/** End (exclusive) of RAM below the PCI hole. */
export function lowRamEnd(memorySize: bigint): bigint {
  return memorySize < LOW_RAM_MAX ? memorySize : LOW_RAM_MAX;
}

/** Bytes of RAM placed above 4 GiB (0 for guests of 3 GiB or less). */
export function highRamSize(memorySize: bigint): bigint {
  return memorySize > LOW_RAM_MAX ? memorySize - LOW_RAM_MAX : 0n;
}

/** End (exclusive) of the highest RAM address. */
export function ramEnd(memorySize: bigint): bigint {
  const high = highRamSize(memorySize);
  return high > 0n ? HIGH_RAM_START + high : lowRamEnd(memorySize);
}

/** RAM split around the 32-bit PCI hole: one region, or two when memory exceeds 3 GiB. */
export function guestMemoryRegions(memorySize: bigint): GuestRamRegion[] {
  checkMemorySize(memorySize);
  const regions: GuestRamRegion[] = [{ guestAddress: 0n, size: lowRamEnd(memorySize) }];
  const high = highRamSize(memorySize);
  if (high > 0n) regions.push({ guestAddress: HIGH_RAM_START, size: high });
  return regions;
}

/** The 64-bit PCI MMIO window: above all RAM (and never below 4 GiB), 1 GiB aligned. */
export function pciMmio64Window(memorySize: bigint): { start: bigint; size: bigint } {
  const end = ramEnd(memorySize);
  const floor = end > HIGH_RAM_START ? end : HIGH_RAM_START;
  const start = ((floor + PCI_MMIO64_ALIGN - 1n) / PCI_MMIO64_ALIGN) * PCI_MMIO64_ALIGN;
  return { start, size: PCI_MMIO64_SIZE };
}

/** e820 entry types (Linux boot protocol / ACPI address range types). */
export const E820_RAM = 1;
export const E820_RESERVED = 2;

export interface E820Entry {
  address: bigint;
  size: bigint;
  type: number;
}

/**
 * The e820 map handed to the kernel: usable RAM plus the reserved ranges it must not use
 * (EBDA, legacy hole and BIOS area holding the ACPI tables, ECAM, IOAPIC/LAPIC pages).
 * Reserving the ECAM also lets Linux trust the MCFG table early.
 */
export function e820Map(memorySize: bigint): E820Entry[] {
  checkMemorySize(memorySize);
  const low = lowRamEnd(memorySize);
  const map: E820Entry[] = [
    { address: 0n, size: EBDA_START, type: E820_RAM },
    { address: EBDA_START, size: ACPI_TABLES_END - EBDA_START, type: E820_RESERVED },
    { address: ACPI_TABLES_END, size: low - ACPI_TABLES_END, type: E820_RAM },
    { address: PCIE_ECAM_START, size: PCIE_ECAM_SIZE, type: E820_RESERVED },
    { address: IOAPIC_START, size: IOAPIC_SIZE, type: E820_RESERVED },
    { address: LAPIC_START, size: LAPIC_SIZE, type: E820_RESERVED },
  ];
  const high = highRamSize(memorySize);
  if (high > 0n) map.push({ address: HIGH_RAM_START, size: high, type: E820_RAM });
  return map;
}
