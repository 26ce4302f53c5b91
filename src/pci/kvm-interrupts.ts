// The InterruptSink on top of KVM: MSI through KVM_SIGNAL_MSI, INTx through KVM_IRQ_LINE on
// the in-kernel IOAPIC. Structural on purpose (any object with these two methods, a VmFd
// included), so tests and other back ends can stand in.
import type { MsiMessage } from '../kvm/types.js';
import type { InterruptSink } from './interrupt.js';

export interface KvmIrqTarget {
  signalMsi(msi: MsiMessage): number;
  irqLine(irq: number, level: boolean): void;
}

/**
 * `vm` may be a getter: the machine builds a new VM on reset, and interrupts must go to the
 * current one.
 */
export function kvmInterruptSink(vm: KvmIrqTarget | (() => KvmIrqTarget)): InterruptSink {
  const current = typeof vm === 'function' ? vm : () => vm;
  return {
    signalMsi: (address, data) => {
      current().signalMsi({ addressLo: Number(address & 0xffffffffn), addressHi: Number(address >> 32n), data });
    },
    setIntx: (gsi, level) => current().irqLine(gsi, level),
  };
}
