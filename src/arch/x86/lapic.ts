// Local APIC set-up on the register page KVM exposes (struct kvm_lapic_state: 1024 bytes,
// the APIC's MMIO registers at their offsets). On a PC the BSP's LINT0 receives the 8259
// PIC's output as ExtINT and LINT1 receives NMI; firmware programs this, and so must we.

export const LAPIC_STATE_SIZE = 1024;
export const APIC_LVT_LINT0 = 0x350;
export const APIC_LVT_LINT1 = 0x360;
export const APIC_DELIVERY_MODE_NMI = 0b100;
export const APIC_DELIVERY_MODE_EXTINT = 0b111;
const DELIVERY_MODE_SHIFT = 8;
const DELIVERY_MODE_MASK = 0b111 << DELIVERY_MODE_SHIFT;

function readU32(regs: Uint8Array, offset: number): number {
  return new DataView(regs.buffer, regs.byteOffset, regs.byteLength).getUint32(offset, true);
}
function writeU32(regs: Uint8Array, offset: number, value: number): void {
  new DataView(regs.buffer, regs.byteOffset, regs.byteLength).setUint32(offset, value >>> 0, true);
}

/** An LVT register value with its delivery mode (bits 8..10) replaced. */
export function withDeliveryMode(lvt: number, mode: number): number {
  return ((lvt & ~DELIVERY_MODE_MASK) | ((mode & 0b111) << DELIVERY_MODE_SHIFT)) >>> 0;
}

/**
 * Sets LINT0 to ExtINT and LINT1 to NMI in a kvm_lapic_state register page (from
 * KVM_GET_LAPIC, written back with KVM_SET_LAPIC); other bits are kept.
 */
export function configureLapicLints(regs: Uint8Array): void {
  if (regs.length < LAPIC_STATE_SIZE) {
    throw new Error(`local APIC state is ${regs.length} bytes, expected ${LAPIC_STATE_SIZE}`);
  }
  writeU32(regs, APIC_LVT_LINT0, withDeliveryMode(readU32(regs, APIC_LVT_LINT0), APIC_DELIVERY_MODE_EXTINT));
  writeU32(regs, APIC_LVT_LINT1, withDeliveryMode(readU32(regs, APIC_LVT_LINT1), APIC_DELIVERY_MODE_NMI));
}
