// The ACPI side of PCI interrupt routing: a _PRT under \_SB.PCI0 that tells the guest which
// IOAPIC GSI each slot's INTA#..INTD# reaches (the swizzle in host-bridge.ts). Entries name
// GSIs directly (Source 0), so the OS programs them level-triggered, active-low.
import { integer, name, pkg } from '../arch/x86/acpi/aml.js';
import type { DsdtPart } from '../arch/x86/acpi/dsdt.js';
import { pciInterruptRoutes } from './host-bridge.js';

/** A DSDT part adding Name(_PRT, Package(){...}) to PCI0; pass it in AcpiOptions.extraDsdt. */
export function pciRoutingDsdtPart(): DsdtPart {
  return {
    scope: '\\_SB.PCI0',
    build: () => name('_PRT', pkg(pciInterruptRoutes().map((r) => pkg([
      integer((r.slot << 16) | 0xffff), // _ADR form: device in the high word, any function
      integer(r.pin),
      integer(0),
      integer(r.gsi),
    ])))),
  };
}
