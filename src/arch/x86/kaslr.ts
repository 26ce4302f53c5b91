// Kernel address space layout randomization for a kernel the VMM unpacked (kernel-payload.ts).
//
// A kernel built with CONFIG_RANDOMIZE_BASE carries a relocation table after its ELF image:
// the kernel-virtual addresses of every absolute reference in it, as 32-bit values that sign-
// extend to addresses in the kernel's mapping at __START_KERNEL_map. Read from the end of the
// unpacked payload backwards, it holds three lists, each ended by a zero entry: 32-bit fields
// to add the offset to, 32-bit fields to subtract it from (references from per-CPU data), and
// 64-bit fields to add it to. Moving the kernel's virtual base up by a multiple of its
// alignment and patching those fields is what the bzImage decompressor does; here a stub of
// guest code does the patching before it enters the kernel. The physical address stays where
// the ELF image asks (the decompressor may also move it; we do not).

import { closeSync, openSync, readSync } from 'node:fs';

/** How far into the kernel mapping the image may be moved (KERNEL_IMAGE_SIZE with KASLR on x86-64). */
export const KERNEL_IMAGE_SIZE = 1n << 30n;

/**
 * How many positions the kernel's virtual base can take: from its link address
 * (`loadAddress`, the physical load address) up to KERNEL_IMAGE_SIZE, in steps of `alignment`,
 * with `imageSize` bytes of image above it.
 */
export function virtualSlots(loadAddress: bigint, imageSize: bigint, alignment: bigint): number {
  if (alignment <= 0n || loadAddress + imageSize > KERNEL_IMAGE_SIZE) return 1;
  return Number((KERNEL_IMAGE_SIZE - loadAddress - imageSize) / alignment) + 1;
}

/**
 * A uniformly random slot, 0 <= slot < slots, from the kernel's random source. (/dev/urandom
 * rather than node:crypto, which costs tens of milliseconds to load in a nested start-up;
 * the modulo's bias over 2^32 is below one in a million for the few hundred slots there are.)
 */
export function randomSlot(slots: number): number {
  const bytes = new Uint8Array(4);
  const fd = openSync('/dev/urandom', 'r');
  try {
    readSync(fd, bytes, 0, 4, null);
  } finally {
    closeSync(fd);
  }
  return new DataView(bytes.buffer).getUint32(0, true) % slots;
}

export interface RelocationStubOptions {
  /** Guest-physical address just past the relocation table, copied into guest memory. */
  tableEnd: bigint;
  /** How far the kernel's virtual base moves. */
  delta: bigint;
  /** Where the kernel's 64-bit entry point is (the stub jumps there when done). */
  kernelEntry: bigint;
}

/**
 * x86-64 code that applies the relocation table to the kernel in guest memory and then
 * enters the kernel, run by the boot vCPU first (long mode, identity-mapped, RSI pointing at
 * boot_params, which the stub leaves alone). The guest runs this loop as machine code, far
 * faster than the VMM's JavaScript could walk some 200 000 entries (0.4 s of a nested
 * start-up); and a table that does not fit its kernel can only harm that guest.
 *
 *   r8  = the table's end; each list is read backwards, 4 bytes at a time, to its zero entry
 *   r9  = 2^31: a sign-extended entry plus 2^31 is the field's physical address
 *   r10 = the offset to add (subtract, for the inverse list)
 */
export function relocationStub(options: RelocationStubOptions): Uint8Array {
  const code: number[] = [];
  const imm64 = (v: bigint): void => {
    for (let i = 0n; i < 8n; i++) code.push(Number((BigInt.asUintN(64, v) >> (8n * i)) & 0xffn));
  };
  code.push(0x49, 0xb8); imm64(options.tableEnd); // movabs r8, tableEnd
  code.push(0x49, 0xb9); imm64(0x80000000n); // movabs r9, 2^31
  code.push(0x49, 0xba); imm64(options.delta); // movabs r10, delta
  // One loop per list: the same head, a different patch.
  const lists: number[][] = [
    [0x44, 0x01, 0x10], // add dword [rax], r10d
    [0x44, 0x29, 0x10], // sub dword [rax], r10d
    [0x4c, 0x01, 0x10], // add qword [rax], r10
  ];
  for (const patch of lists) {
    const top = code.length;
    code.push(0x49, 0x83, 0xe8, 0x04); // sub r8, 4
    code.push(0x49, 0x63, 0x00); // movsxd rax, dword [r8]
    code.push(0x48, 0x85, 0xc0); // test rax, rax
    const tail = [0x4c, 0x01, 0xc8, ...patch]; // add rax, r9; patch
    code.push(0x74, tail.length + 2); // jz past the loop's tail and jump back
    code.push(...tail);
    code.push(0xeb, (top - (code.length + 2)) & 0xff); // jmp top
  }
  code.push(0x48, 0xb8); imm64(options.kernelEntry); // movabs rax, kernelEntry
  code.push(0xff, 0xe0); // jmp rax
  return Uint8Array.from(code);
}
