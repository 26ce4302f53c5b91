// The 64-bit long-mode CPU state the boot CPU starts in: a flat GDT, identity page tables
// and the register values the VMM hands to KVM_SET_REGS / KVM_SET_SREGS. Only data here;
// applying it is the VMM's job.
import { GuestMemory } from '../../memory/guest-memory.js';
import type { KvmRegs } from '../../kvm/types.js';
import {
  BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PD_COUNT, PD_START, PDPT_START, PML4_START,
} from './layout.js';

/** One segment register as KVM describes it (struct kvm_segment); limit is in bytes. */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  /** KVM's "unusable" flag: 1 for a null segment. */
  unusable: number;
}

export interface DescriptorTable {
  base: bigint;
  limit: number;
}

/** The general-purpose registers the boot CPU starts with (struct kvm_regs). */
export type BootRegs = KvmRegs;

/** The special registers the boot CPU starts with (the parts of struct kvm_sregs that matter). */
export interface BootSregs {
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  gdt: DescriptorTable;
  idt: DescriptorTable;
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment;
  tr: Segment;
  ldt: Segment;
}

// Control register and EFER bits used below.
export const CR0_PE = 1n << 0n;
export const CR0_ET = 1n << 4n;
/** Native x87 error reporting: VMX requires it set in a guest's CR0. */
export const CR0_NE = 1n << 5n;
export const CR0_PG = 1n << 31n;
export const CR4_PAE = 1n << 5n;
export const EFER_LME = 1n << 8n;
export const EFER_LMA = 1n << 10n;
/** Bit 1 of RFLAGS is reserved and always reads 1. */
export const RFLAGS_RESERVED = 0x2n;

/** Selectors of the boot GDT, matching the boot protocol's __BOOT_CS / __BOOT_DS. */
export const BOOT_CS_SELECTOR = 0x10;
export const BOOT_DS_SELECTOR = 0x18;
export const BOOT_TSS_SELECTOR = 0x20;

/**
 * A segment descriptor (8 bytes) built from base, 20-bit limit and the 12 flag bits
 * (access byte in bits 0..7, then AVL, L, D/B, G in bits 12..15 of `flags`).
 */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base >>> 0);
  const l = BigInt(limit & 0xfffff);
  const f = BigInt(flags & 0xf0ff);
  return ((b & 0xff000000n) << 32n) | ((f & 0xf0ffn) << 40n) | ((l & 0xf0000n) << 32n)
    | ((b & 0x00ffffffn) << 16n) | (l & 0xffffn);
}

/** Decodes a GDT descriptor into KVM's segment form (limit expanded when G is set). */
export function segmentFromGdtEntry(entry: bigint, selector: number): Segment {
  const base = Number(((entry >> 16n) & 0xffffffn) | ((entry >> 32n) & 0xff000000n));
  const rawLimit = Number((entry & 0xffffn) | ((entry >> 32n) & 0xf0000n));
  const access = Number((entry >> 40n) & 0xffn);
  const flags = Number((entry >> 52n) & 0xfn);
  const g = (flags >> 3) & 1;
  const present = (access >> 7) & 1;
  return {
    base: BigInt(base),
    limit: g ? ((rawLimit << 12) | 0xfff) >>> 0 : rawLimit,
    selector,
    type: access & 0xf,
    present,
    dpl: (access >> 5) & 3,
    db: (flags >> 2) & 1,
    s: (access >> 4) & 1,
    l: (flags >> 1) & 1,
    g,
    avl: flags & 1,
    unusable: present ? 0 : 1,
  };
}

/** The boot GDT: null, null, 64-bit code (0x10), flat data (0x18), 64-bit TSS (0x20). */
export const BOOT_GDT: readonly bigint[] = [
  0n,
  0n,
  gdtEntry(0xa09b, 0, 0xfffff), // code: present, DPL 0, execute/read, accessed; L=1, G=1
  gdtEntry(0xc093, 0, 0xfffff), // data: present, read/write, accessed; D/B=1, G=1
  gdtEntry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS; VMX insists on a usable TR
];

/** Writes the GDT and an empty IDT; returns the descriptor-table registers. */
export function writeGdt(mem: GuestMemory): { gdt: DescriptorTable; idt: DescriptorTable } {
  BOOT_GDT.forEach((entry, i) => mem.writeU64(BOOT_GDT_START + BigInt(i * 8), entry));
  mem.writeU64(BOOT_IDT_START, 0n);
  return {
    gdt: { base: BOOT_GDT_START, limit: BOOT_GDT.length * 8 - 1 },
    idt: { base: BOOT_IDT_START, limit: 7 },
  };
}

const PTE_PRESENT = 1;
const PTE_WRITABLE = 2;
const PTE_PAGE_SIZE = 1 << 7;

/**
 * Identity page tables for the first PD_COUNT GiB using 2 MiB pages (1 GiB pages need a
 * CPU feature the guest's CPU model may lack). Returns the value for CR3. The PML4, the PDPT
 * and the directories lie one after the other: built in one buffer with plain numbers (every
 * entry is below 2^32, and a boot's start-up should not spend its time on BigInt arithmetic
 * for 2048 entries) and written at once.
 */
export function writeIdentityPageTables(mem: GuestMemory): bigint {
  const tables = new DataView(new ArrayBuffer((2 + PD_COUNT) * 4096));
  const at = (table: bigint): number => Number(table - PML4_START);
  const entry = (offset: number, value: number): void => {
    tables.setUint32(offset, value % 2 ** 32, true);
    tables.setUint32(offset + 4, Math.floor(value / 2 ** 32), true);
  };
  entry(0, Number(PDPT_START) | PTE_PRESENT | PTE_WRITABLE);
  for (let d = 0; d < PD_COUNT; d++) {
    const pd = PD_START + BigInt(d * 4096);
    entry(at(PDPT_START) + d * 8, Number(pd) | PTE_PRESENT | PTE_WRITABLE);
    for (let i = 0; i < 512; i++) {
      entry(at(pd) + i * 8, (d * 2 ** 30 + i * 2 ** 21) + (PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE));
    }
  }
  mem.write(PML4_START, new Uint8Array(tables.buffer));
  return PML4_START;
}

const NULL_SEGMENT: Segment = {
  base: 0n, limit: 0, selector: 0, type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1,
};

/** Writes GDT, IDT and page tables; returns the long-mode special registers. */
export function setupLongMode(mem: GuestMemory): BootSregs {
  const { gdt, idt } = writeGdt(mem);
  const cr3 = writeIdentityPageTables(mem);
  const code = segmentFromGdtEntry(BOOT_GDT[BOOT_CS_SELECTOR / 8]!, BOOT_CS_SELECTOR);
  const data = segmentFromGdtEntry(BOOT_GDT[BOOT_DS_SELECTOR / 8]!, BOOT_DS_SELECTOR);
  const tss = segmentFromGdtEntry(BOOT_GDT[BOOT_TSS_SELECTOR / 8]!, BOOT_TSS_SELECTOR);
  return {
    cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
    cr2: 0n,
    cr3,
    cr4: CR4_PAE,
    cr8: 0n,
    efer: EFER_LME | EFER_LMA,
    gdt,
    idt,
    cs: code,
    ds: { ...data }, es: { ...data }, fs: { ...data }, gs: { ...data }, ss: { ...data },
    tr: tss,
    ldt: { ...NULL_SEGMENT },
  };
}

/** General-purpose registers for a 64-bit entry at `rip` with boot_params in RSI. */
export function bootRegs(rip: bigint, bootParams: bigint): BootRegs {
  return {
    rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n,
    rsi: bootParams, rdi: 0n, rsp: BOOT_STACK_POINTER, rbp: BOOT_STACK_POINTER,
    r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n,
    rip,
    rflags: RFLAGS_RESERVED,
  };
}
