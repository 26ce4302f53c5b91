// How a device model drives its interrupt line. Device models stay free of KVM: the
// machine hands each one a trigger that ends in KVM_IRQ_LINE (ISA lines) or an irqfd, and a
// unit test hands it a recorder.

/** Called with the new level of the device's interrupt output whenever it changes. */
export type IrqTrigger = (level: boolean) => void;
