// Decoding and encoding of struct kvm_cpuid2 buffers, shared by the system and vCPU wrappers.
import { kvm_cpuid2, kvm_cpuid_entry2 } from './abi.js';
import type { CpuidEntry } from './types.js';

/** The fields of struct kvm_cpuid_entry2, in order, each a u32 (its three u32 of padding follow). */
const CPUID_FIELDS = ['function', 'index', 'flags', 'eax', 'ebx', 'ecx', 'edx'] as const;

/**
 * The entries of a struct kvm_cpuid2 in `buf`. Read with a DataView rather than a koffi
 * decode per entry: a vCPU's set-up reads and writes some 80 of them on the way to a guest's
 * first instruction, and the per-entry calls added up under nested virtualization.
 */
export function decodeCpuidEntries(buf: Uint8Array): CpuidEntry[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = view.getUint32(0, true);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = kvm_cpuid2.size + i * kvm_cpuid_entry2.size;
    const e = {} as Record<(typeof CPUID_FIELDS)[number], number>;
    CPUID_FIELDS.forEach((field, k) => { e[field] = view.getUint32(at + 4 * k, true); });
    out.push(e);
  }
  return out;
}

/** A struct kvm_cpuid2 holding `entries` (the inverse of decodeCpuidEntries). */
export function encodeCpuidEntries(entries: readonly CpuidEntry[]): Uint8Array {
  const bytes = new Uint8Array(kvm_cpuid2.size + entries.length * kvm_cpuid_entry2.size);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const at = kvm_cpuid2.size + i * kvm_cpuid_entry2.size;
    CPUID_FIELDS.forEach((field, k) => view.setUint32(at + 4 * k, e[field] >>> 0, true));
  });
  return bytes;
}
