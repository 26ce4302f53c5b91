// How PCI devices raise interrupts. The VMM implements this with KVM (an irqfd with GSI routing
// for MSI, KVM_IRQ_LINE for the IOAPIC pins: pci/kvm-interrupts.ts); tests record calls.

export interface InterruptSink {
  /** Deliver one MSI: the 64-bit address and 32-bit data the guest programmed. */
  signalMsi(address: bigint, data: number): void;
  /** Set an IOAPIC input line (level-triggered; `level` true means asserted). */
  setIntx(gsi: number, level: boolean): void;
}

/** A one-line diagnostic sink; devices name themselves, the queue and the guest address. */
export type LogLine = (line: string) => void;

export const logToStderr: LogLine = (line) => {
  process.stderr.write(`${line}\n`);
};

export function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}
