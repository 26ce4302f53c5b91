// struct kvm_cpuid2 written and read by hand (cpuid-list.ts) against koffi's own encoding of
// the ABI structs (abi.ts): the same bytes both ways.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { kvm_cpuid2, kvm_cpuid_entry2 } from '../../../src/kvm/abi.js';
import { decodeBytes, encodeToBytes } from '../../../src/kvm/layout.js';
import { decodeCpuidEntries, encodeCpuidEntries } from '../../../src/kvm/cpuid-list.js';
import type { CpuidEntry } from '../../../src/kvm/types.js';

const entries: CpuidEntry[] = Array.from({ length: 37 }, (_, i) => ({
  function: i < 30 ? i : 0x80000000 + i, index: i % 3, flags: i & 1,
  eax: (0x9e3779b9 * (i + 1)) >>> 0, ebx: 0xffffffff - i, ecx: i << 24 >>> 0, edx: 0x80000000 >>> (i % 32),
}));

test('kvm_cpuid2 by hand: the bytes koffi encodes, and back', () => {
  const bytes = encodeCpuidEntries(entries);
  assert.equal(bytes.length, kvm_cpuid2.size + entries.length * kvm_cpuid_entry2.size);
  assert.equal(new DataView(bytes.buffer).getUint32(0, true), entries.length);
  entries.forEach((e, i) => {
    const at = kvm_cpuid2.size + i * kvm_cpuid_entry2.size;
    assert.deepEqual(bytes.subarray(at, at + kvm_cpuid_entry2.size), encodeToBytes(kvm_cpuid_entry2, e), `entry ${i}`);
    const viaKoffi = decodeBytes(kvm_cpuid_entry2, bytes, at) as unknown as CpuidEntry;
    assert.equal(viaKoffi.edx, e.edx);
  });
  assert.deepEqual(decodeCpuidEntries(bytes), entries);
  // A buffer with room for more entries than nent says: only nent are read.
  const roomy = new Uint8Array(bytes.length + 4 * kvm_cpuid_entry2.size);
  roomy.set(bytes);
  assert.deepEqual(decodeCpuidEntries(roomy), entries);
});
