// Decoding of struct kvm_cpuid2 buffers, shared by the system and vCPU wrappers.
import { kvm_cpuid2, kvm_cpuid_entry2 } from './abi.js';
import { decodeBytes } from './layout.js';
import type { CpuidEntry } from './types.js';

/** Entries of a filled struct kvm_cpuid2 buffer. */
export function decodeCpuidEntries(buf: Uint8Array): CpuidEntry[] {
  const n = new DataView(buf.buffer, buf.byteOffset).getUint32(0, true);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const e = decodeBytes(kvm_cpuid_entry2, buf, kvm_cpuid2.size + i * kvm_cpuid_entry2.size) as unknown as CpuidEntry;
    out.push({ function: e.function, index: e.index, flags: e.flags, eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx });
  }
  return out;
}
