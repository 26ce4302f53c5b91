// The DSDT's contents: \_S5 for poweroff and, under \_SB, the legacy devices and the PCI
// host bridge. The DSDT is a list of builders so other parts of the machine (PCI interrupt
// routing, hot-plug) add their own devices and methods without touching this file.
import {
  ACPI_S5_SLEEP_TYPE, COM1_IRQ, COM1_PORT, I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_KEYBOARD_IRQ,
  PCIE_ECAM_SIZE, PCIE_ECAM_START, PCI_CONFIG_PORT, PCI_MMIO32_SIZE, PCI_MMIO32_START, PCI_CONFIG_PORT_COUNT, PCI_IO_END, PCI_IO_START, RTC_IRQ,
  RTC_PORT, RTC_PORT_COUNT, UART_PORT_COUNT,
} from '../layout.js';
import {
  Aml, and, arg, concat, createDWordField, device, dwordMemory, eisaId, ifElse, integer, io, irqNoFlags, lEqual,
  lNotEqual, local, memory32Fixed, method, name, or, pkg, qwordMemory, ref, resourceTemplate, returnValue, scope, store,
  string, uuid, wordBusNumber, wordIo,
} from './aml.js';

/** Where the PCI host bridge's resources live. */
export interface PciHostConfig {
  ecamBase: bigint;
  ecamSize: bigint;
  busStart: number;
  busEnd: number;
  mmio32: { start: bigint; size: bigint };
  mmio64: { start: bigint; size: bigint };
  /** The I/O port window for PCI devices (BAR allocation range). */
  io: { start: number; end: number };
  /**
   * PCIe features _OSC hands to the OS (bits of the _OSC control dword: 1 native hot-plug,
   * 2 SHPC hot-plug, 4 PME, 8 AER, 0x10 PCIe capability structure, ...). Default 0x1f: the OS
   * drives everything natively, which Linux needs to use pciehp for PCIe hot-plug.
   */
  oscControl?: number;
}

/** The PCI host bridge _OSC UUID from the PCI Firmware Specification. */
export const PCI_HOST_BRIDGE_OSC_UUID = '33DB4D5B-1FF7-401C-9657-7441C03DD766';
const OSC_UNRECOGNIZED_UUID = 0x4;
const OSC_UNRECOGNIZED_REVISION = 0x8;
const OSC_CAPABILITIES_MASKED = 0x10;

/**
 * _OSC of the host bridge: grants the OS the requested controls within `allowed`, and
 * reports masked capabilities, an unknown revision or UUID in the first dword as the spec asks.
 */
export function pciHostBridgeOsc(allowed: number): Aml {
  return method('_OSC', 4, false, [
    createDWordField(arg(3), integer(0), 'CDW1'),
    ifElse(lEqual(arg(0), uuid(PCI_HOST_BRIDGE_OSC_UUID)), [
      createDWordField(arg(3), integer(8), 'CDW3'),
      store(ref('CDW3'), local(0)),
      and(local(0), integer(allowed), local(0)),
      ifElse(lNotEqual(arg(1), integer(1)), [or(ref('CDW1'), integer(OSC_UNRECOGNIZED_REVISION), ref('CDW1'))]),
      ifElse(lNotEqual(ref('CDW3'), local(0)), [or(ref('CDW1'), integer(OSC_CAPABILITIES_MASKED), ref('CDW1'))]),
      store(local(0), ref('CDW3')),
    ], [
      or(ref('CDW1'), integer(OSC_UNRECOGNIZED_UUID), ref('CDW1')),
    ]),
    returnValue(arg(3)),
  ]);
}

/**
 * A DSDT builder: returns AML terms. `scope` says where the terms go: '\\' (the root),
 * '\\_SB' (devices), '\\_SB.PCI0' (inside the host bridge) or '\\_GPE' (event methods).
 */
export interface DsdtPart {
  scope: '\\' | '\\_SB' | '\\_SB.PCI0' | '\\_GPE';
  build(): Aml;
}

/** \_S5: the sleep type values the OS writes to PM1a/PM1b control to power off. */
export function sleepStateS5(): DsdtPart {
  return {
    scope: '\\',
    build: () => name('_S5', pkg([integer(ACPI_S5_SLEEP_TYPE), integer(ACPI_S5_SLEEP_TYPE), integer(0), integer(0)])),
  };
}

/**
 * One processor device (ACPI0007) per vCPU, its _UID equal to the ACPI processor UID of its
 * MADT entry (the vCPU index), so the OS ties namespace objects to CPUs; CPU hot-plug
 * methods attach here later.
 */
export function processors(count: number): DsdtPart {
  if (count > 0xfff) throw new Error(`ACPI: ${count} processor devices exceed the 4095 the C### names allow`);
  return {
    scope: '\\_SB',
    build: () => concat(Array.from({ length: count }, (_, i) => device(`C${i.toString(16).toUpperCase().padStart(3, '0')}`, [
      name('_HID', string('ACPI0007')),
      name('_UID', integer(i)),
    ]))),
  };
}

/** A 16550 UART on COM1: PNP0501, its 8 ports and IRQ 4. */
export function com1(): DsdtPart {
  return {
    scope: '\\_SB',
    build: () => device('COM1', [
      name('_HID', eisaId('PNP0501')),
      name('_UID', integer(1)),
      name('_STA', integer(0xf)),
      name('_CRS', resourceTemplate([io(COM1_PORT, COM1_PORT, 8, UART_PORT_COUNT), irqNoFlags([COM1_IRQ])])),
    ]),
  };
}

/** The i8042 keyboard controller: PNP0303, data and command ports, IRQ 1. */
export function ps2Keyboard(): DsdtPart {
  return {
    scope: '\\_SB',
    build: () => device('PS2K', [
      name('_HID', eisaId('PNP0303')),
      name('_STA', integer(0xf)),
      name('_CRS', resourceTemplate([
        io(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1),
        io(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1),
        irqNoFlags([I8042_KEYBOARD_IRQ]),
      ])),
    ]),
  };
}

/** The MC146818 RTC: PNP0B00, ports 0x70-0x71, IRQ 8. */
export function rtc(): DsdtPart {
  return {
    scope: '\\_SB',
    build: () => device('RTC', [
      name('_HID', eisaId('PNP0B00')),
      name('_STA', integer(0xf)),
      name('_CRS', resourceTemplate([io(RTC_PORT, RTC_PORT, 1, RTC_PORT_COUNT), irqNoFlags([RTC_IRQ])])),
    ]),
  };
}

/**
 * The PCIe host bridge PCI0 (PNP0A08, compatible PNP0A03) with the bus range, the 0xCF8
 * config ports, the I/O window and both MMIO windows in _CRS. Also a motherboard-resources
 * device (PNP0C02) claiming the ECAM: Linux only trusts an MCFG region reserved there or in e820.
 */
export function pciHostBridge(cfg: PciHostConfig): DsdtPart[] {
  const lowIoEnd = PCI_CONFIG_PORT - 1;
  const highIoStart = PCI_CONFIG_PORT + PCI_CONFIG_PORT_COUNT;
  const resources: Uint8Array[] = [
    wordBusNumber(cfg.busStart, cfg.busEnd),
    io(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORT_COUNT),
    // The legacy ports below 0xCF8 stay routable to the ISA devices; everything else goes
    // to the I/O window for PCI BARs.
    wordIo(0, lowIoEnd),
  ];
  if (cfg.io.end >= highIoStart) {
    resources.push(wordIo(Math.max(cfg.io.start, highIoStart), cfg.io.end));
  }
  resources.push(dwordMemory(cfg.mmio32.start, cfg.mmio32.start + cfg.mmio32.size - 1n));
  if (cfg.mmio64.size > 0n) resources.push(qwordMemory(cfg.mmio64.start, cfg.mmio64.start + cfg.mmio64.size - 1n));
  return [
    {
      scope: '\\_SB',
      build: () => device('PCI0', [
        name('_HID', eisaId('PNP0A08')),
        name('_CID', eisaId('PNP0A03')),
        name('_ADR', integer(0)),
        name('_SEG', integer(0)),
        name('_UID', integer(0)),
        name('_BBN', integer(cfg.busStart)),
        name('_CRS', resourceTemplate(resources)),
        pciHostBridgeOsc(cfg.oscControl ?? 0x1f),
      ]),
    },
    {
      scope: '\\_SB',
      build: () => device('MRES', [
        name('_HID', eisaId('PNP0C02')),
        name('_UID', string('ECAM')),
        name('_CRS', resourceTemplate([memory32Fixed(cfg.ecamBase, cfg.ecamSize)])),
      ]),
    },
  ];
}

/** The host bridge configuration for the standard layout. */
export function defaultPciHostConfig(mmio64: { start: bigint; size: bigint }): PciHostConfig {
  return {
    ecamBase: PCIE_ECAM_START,
    ecamSize: PCIE_ECAM_SIZE,
    busStart: 0,
    busEnd: Number(PCIE_ECAM_SIZE >> 20n) - 1,
    mmio32: { start: PCI_MMIO32_START, size: PCI_MMIO32_SIZE },
    mmio64,
    io: { start: PCI_IO_START, end: PCI_IO_END },
  };
}

const SCOPE_ORDER: DsdtPart['scope'][] = ['\\', '\\_SB', '\\_SB.PCI0', '\\_GPE'];

/**
 * The DSDT's AML from a list of parts. Parts for the same scope are emitted in list order
 * inside one Scope() term; '\\_SB.PCI0' parts follow the device that defines PCI0.
 */
export function buildDsdtAml(parts: readonly DsdtPart[]): Aml {
  const out: Aml[] = [];
  for (const s of SCOPE_ORDER) {
    const terms = parts.filter((p) => p.scope === s).map((p) => p.build());
    if (terms.length === 0) continue;
    out.push(s === '\\' ? concat(terms) : scope(s, terms));
  }
  return concat(out);
}
