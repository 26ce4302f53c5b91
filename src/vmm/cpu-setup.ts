// Per-vCPU architectural setup the VMM applies before the first KVM_RUN: the CPUID table
// (from src/arch's model tables, with the vCPU's own APIC id and topology), the boot MSRs,
// the local APIC's LINT pins (virtual-wire mode, as PC firmware leaves them) and the
// power-on FPU state.
import type { VcpuFd } from '../kvm/index.js';
import { cpuidFor } from '../arch/x86/cpu-models.js';
import { bootMsrs } from '../arch/x86/msrs.js';
import { configureLapicLints } from '../arch/x86/lapic.js';
import type { ResolvedCpuModel } from './cpu-model.js';

export function setupVcpu(vcpu: VcpuFd, model: ResolvedCpuModel, index: number, cpuCount: number): void {
  vcpu.setCpuid2(cpuidFor({ model: model.spec, supported: model.supported, vcpuIndex: index, cpuCount }));
  const msrs = bootMsrs();
  const accepted = vcpu.setMsrs(msrs);
  if (accepted !== msrs.length) {
    throw new Error(`vCPU ${index}: KVM refused boot MSR 0x${msrs[accepted]!.index.toString(16)}`);
  }
  const lapic = vcpu.getLapic();
  configureLapicLints(lapic);
  vcpu.setLapic(lapic);
  // x87 control word and MXCSR after FNINIT/reset: what a kernel entered without firmware expects.
  vcpu.setFpu({ fcw: 0x37f, mxcsr: 0x1f80 });
}
