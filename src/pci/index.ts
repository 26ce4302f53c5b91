// PCI Express: host bridge, config space, MSI-X, ACPI routing (library namespace `pci`).
export * from './interrupt.js';
export * from './config-space.js';
export * from './device.js';
export * from './msix.js';
export * from './host-bridge.js';
export * from './mcfg.js';
export * from './acpi.js';
export * from './kvm-interrupts.js';
