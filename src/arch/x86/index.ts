// The x86 machine's pure parts: memory layout, Linux loader and boot CPU state, ACPI tables,
// CPU models and CPUID, boot MSRs and local APIC set-up. Nothing here touches /dev/kvm.
export * from './layout.js';
export * from './boot-state.js';
export * from './linux-loader.js';
export * from './cpuid.js';
export * from './cpu-models.js';
export * from './msrs.js';
export * from './lapic.js';
export * from './acpi/tables.js';
export * from './acpi/dsdt.js';
export * from './acpi/build-tables.js';
/** The AML writer, as a namespace: its builders have short names (name, device, method, ...). */
export * as aml from './acpi/aml.js';
export * from './mptable.js';
