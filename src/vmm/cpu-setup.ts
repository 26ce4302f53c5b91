// Per-vCPU architectural setup the VMM applies before the first KVM_RUN: the CPUID table
// each vCPU sees (with its own APIC id and the vCPU count), the local APIC's LINT pins,
// and the power-on FPU state.
import type { CpuidEntry, VcpuFd } from '../kvm/index.js';

const CPUID_FEATURES = 0x1;
const CPUID_EXT_TOPOLOGY = 0xb;
const CPUID_V2_EXT_TOPOLOGY = 0x1f;
const CPUID_KVM_SIGNATURE = 0x40000000;
const CPUID_KVM_FEATURES = 0x40000001;
const ECX_X2APIC = 1 << 21;
const ECX_HYPERVISOR = 1 << 31;
const EDX_HTT = 1 << 28;

/**
 * The CPUID table of vCPU `apicId` in a guest of `cpus` vCPUs, from the model's table: APIC
 * ids in leaves 1 and 0xB/0x1F, the logical processor count, the x2APIC and hypervisor bits
 * (the in-kernel LAPIC emulates x2APIC, so the guest can address more than 255 vCPUs and
 * skip MMIO for APIC accesses). Topology is reported as one core per vCPU in one package.
 */
export function cpuidForVcpu(model: readonly CpuidEntry[], apicId: number, cpus: number): CpuidEntry[] {
  return model.map((source) => {
    const e = { ...source };
    switch (e.function) {
      case CPUID_FEATURES:
        e.ebx = ((apicId & 0xff) << 24) | ((Math.min(cpus, 255) & 0xff) << 16) | (e.ebx & 0xffff);
        e.ecx = (e.ecx | ECX_X2APIC | ECX_HYPERVISOR) >>> 0;
        e.edx = cpus > 1 ? (e.edx | EDX_HTT) >>> 0 : e.edx;
        e.ebx >>>= 0;
        break;
      case CPUID_EXT_TOPOLOGY:
      case CPUID_V2_EXT_TOPOLOGY:
        // Level 0 (SMT): 1 thread per core; level 1 (core): `cpus` cores per package.
        if (e.index === 0) {
          e.eax = 0; e.ebx = 1; e.ecx = (1 << 8) | 0;
        } else if (e.index === 1) {
          e.eax = Math.ceil(Math.log2(Math.max(cpus, 1))); e.ebx = cpus & 0xffff; e.ecx = (2 << 8) | 1;
        } else {
          e.eax = 0; e.ebx = 0; e.ecx = e.index & 0xff;
        }
        e.edx = apicId;
        break;
      default:
        break;
    }
    return e;
  });
}

/** Whether the table has the KVM paravirtual leaves (kvmclock and friends). */
export function hasKvmLeaves(model: readonly CpuidEntry[]): boolean {
  return model.some((e) => e.function === CPUID_KVM_SIGNATURE) && model.some((e) => e.function === CPUID_KVM_FEATURES);
}

const APIC_LVT_LINT0 = 0x350;
const APIC_LVT_LINT1 = 0x360;
const APIC_MODE_EXTINT = 0x7 << 8;
const APIC_MODE_NMI = 0x4 << 8;
const APIC_LVT_MASKED = 1 << 16;
const APIC_DELIVERY_MODE_MASK = 0x7 << 8;

/**
 * Wire LINT0 to the PIC (ExtINT) and LINT1 to NMI, as PC firmware does: Linux expects that
 * virtual-wire setup and routes the legacy timer through it until the IOAPIC takes over.
 */
export function setupLapicLints(vcpu: VcpuFd): void {
  const regs = vcpu.getLapic();
  const view = new DataView(regs.buffer, regs.byteOffset, regs.byteLength);
  const set = (offset: number, mode: number): void => {
    const v = view.getUint32(offset, true);
    view.setUint32(offset, ((v & ~(APIC_DELIVERY_MODE_MASK | APIC_LVT_MASKED)) | mode) >>> 0, true);
  };
  set(APIC_LVT_LINT0, APIC_MODE_EXTINT);
  set(APIC_LVT_LINT1, APIC_MODE_NMI);
  vcpu.setLapic(regs);
}

/** x87 control word and MXCSR after FNINIT/reset: what a kernel entered without firmware expects. */
export function setupFpu(vcpu: VcpuFd): void {
  vcpu.setFpu({ fcw: 0x37f, mxcsr: 0x1f80 });
}
