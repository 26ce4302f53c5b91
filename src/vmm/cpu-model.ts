// Resolving `--cpu MODEL` to the CPUID table every vCPU starts from.
import type { CpuidEntry, Kvm } from '../kvm/index.js';

export class CpuModelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CpuModelError';
  }
}

/**
 * The CPUID table for `model`: "host" passes through everything this host's KVM supports
 * (KVM_GET_SUPPORTED_CPUID, which already includes the KVM paravirtual leaves with
 * kvmclock).
 */
export function resolveCpuModel(kvm: Kvm, model: string): CpuidEntry[] {
  const supported = kvm.supportedCpuid();
  if (model === 'host') return supported;
  throw new CpuModelError(`unknown CPU model "${model}" (available: host)`);
}
