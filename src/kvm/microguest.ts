// Micro-guests: VMs of a few hand-assembled instructions, for exercising the KVM plumbing
// (tests, and the lab's speed calibration) without any firmware or kernel.
//
// GuestCode emits the handful of x86 instructions these guests need, each method named
// after its mnemonic, with the encoding spelled out next to it. Two CPU modes:
//   'real' - 16-bit real mode, CS base 0: the state a vCPU starts in, only CS:IP set.
//   'long' - 64-bit long mode at CPL 0 with the first 1 GiB identity-mapped by 2 MiB
//            pages; setupLongMode() writes the GDT and page tables and sets CR0/CR4/EFER.
//
// Guest-physical layout of a micro-VM (all in the first 64 KiB):
//   0x0500 GDT   0x1000 PML4   0x2000 PDPT   0x3000 PD   0x7000 stack top   0x8000 code
import { MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, mmap, munmap, nativeView, PROT_READ, PROT_WRITE } from './libc.js';
import { Kvm } from './system.js';
import type { KvmSegment } from './types.js';
import type { VcpuFd } from './vcpu.js';
import type { VmFd } from './vm.js';

export type CpuMode = 'real' | 'long';

export const MICRO_GDT = 0x500;
export const MICRO_PML4 = 0x1000;
export const MICRO_PDPT = 0x2000;
export const MICRO_PD = 0x3000;
export const MICRO_STACK_TOP = 0x7000;
export const MICRO_CODE = 0x8000;

/** Assembler for the few instructions micro-guests use. Addresses and immediates are numbers. */
export class GuestCode {
  private readonly out: number[] = [];

  constructor(readonly mode: CpuMode) {}

  /** Offset of the next instruction from the start of the code. */
  get offset(): number {
    return this.out.length;
  }

  bytes(): Uint8Array {
    return Uint8Array.from(this.out);
  }

  private emit(...bytes: number[]): this {
    this.out.push(...bytes.map((b) => b & 0xff));
    return this;
  }

  private imm(value: number | bigint, size: number): number[] {
    let v = BigInt.asUintN(size * 8, BigInt(value));
    const out: number[] = [];
    for (let i = 0; i < size; i++) {
      out.push(Number(v & 0xffn));
      v >>= 8n;
    }
    return out;
  }

  /** Operand-size prefix (0x66) when the wanted size is not the mode's default. */
  private opsize(bits: 16 | 32): number[] {
    const defaultBits = this.mode === 'real' ? 16 : 32;
    return bits === defaultBits ? [] : [0x66];
  }

  /** mov al, imm8 — B0 ib */
  movAlImm8(value: number): this {
    return this.emit(0xb0, value);
  }

  /** mov dx, imm16 — [66] BA iw */
  movDxImm16(value: number): this {
    return this.emit(...this.opsize(16), 0xba, ...this.imm(value, 2));
  }

  /** mov eax, imm32 — [66] B8 id */
  movEaxImm32(value: number): this {
    return this.emit(...this.opsize(32), 0xb8, ...this.imm(value, 4));
  }

  /** mov ecx, imm32 — [66] B9 id (in long mode this also clears the top half of rcx) */
  movEcxImm32(value: number): this {
    return this.emit(...this.opsize(32), 0xb9, ...this.imm(value, 4));
  }

  /** mov rcx, imm64 — REX.W B9 iq (long mode only) */
  movRcxImm64(value: bigint): this {
    this.requireLong('mov rcx, imm64');
    return this.emit(0x48, 0xb9, ...this.imm(value, 8));
  }

  /** add al, imm8 — 04 ib */
  addAlImm8(value: number): this {
    return this.emit(0x04, value);
  }

  /** out dx, al — EE */
  outDxAl(): this {
    return this.emit(0xee);
  }

  /** out dx, ax — [66] EF */
  outDxAx(): this {
    return this.emit(...this.opsize(16), 0xef);
  }

  /** out dx, eax — [66] EF */
  outDxEax(): this {
    return this.emit(...this.opsize(32), 0xef);
  }

  /** out imm8, al — E6 ib */
  outImm8Al(port: number): this {
    return this.emit(0xe6, port);
  }

  /** in al, dx — EC */
  inAlDx(): this {
    return this.emit(0xec);
  }

  /** in ax, dx — [66] ED */
  inAxDx(): this {
    return this.emit(...this.opsize(16), 0xed);
  }

  /** in eax, dx — [66] ED */
  inEaxDx(): this {
    return this.emit(...this.opsize(32), 0xed);
  }

  /** mov [abs32], al — 88 04 25 disp32 (long mode; SIB with no base: an absolute address below 2 GiB) */
  storeAl(address: number): this {
    return this.emit(0x88, 0x04, 0x25, ...this.absolute(address));
  }

  /** mov [abs32], eax — 89 04 25 disp32 (long mode) */
  storeEax(address: number): this {
    return this.emit(0x89, 0x04, 0x25, ...this.absolute(address));
  }

  /** mov [abs32], rax — REX.W 89 04 25 disp32 (long mode) */
  storeRax(address: number): this {
    return this.emit(0x48, 0x89, 0x04, 0x25, ...this.absolute(address));
  }

  /** mov eax, [abs32] — 8B 04 25 disp32 (long mode) */
  loadEax(address: number): this {
    return this.emit(0x8b, 0x04, 0x25, ...this.absolute(address));
  }

  /** mov al, [abs32] — 8A 04 25 disp32 (long mode) */
  loadAl(address: number): this {
    return this.emit(0x8a, 0x04, 0x25, ...this.absolute(address));
  }

  /** mov rax, imm64 — REX.W B8 iq (long mode) */
  movRaxImm64(value: bigint): this {
    this.requireLong('mov rax, imm64');
    return this.emit(0x48, 0xb8, ...this.imm(value, 8));
  }

  /** dec rcx — REX.W FF C9 (long mode); dec ecx — 66 49 (real mode) */
  decCounter(): this {
    return this.mode === 'long' ? this.emit(0x48, 0xff, 0xc9) : this.emit(0x66, 0x49);
  }

  /** jnz to an earlier offset — 75 rel8 */
  jnzBack(target: number): this {
    const rel = target - (this.offset + 2);
    if (rel < -128) throw new Error(`jnz target ${target} is out of rel8 range`);
    return this.emit(0x75, rel);
  }

  /** hlt — F4 */
  hlt(): this {
    return this.emit(0xf4);
  }

  private absolute(address: number): number[] {
    this.requireLong('absolute addressing');
    if (address < 0 || address >= 0x80000000) {
      throw new Error(`absolute address 0x${address.toString(16)} must be below 2 GiB (disp32 is sign-extended)`);
    }
    return this.imm(address, 4);
  }

  private requireLong(what: string): void {
    if (this.mode !== 'long') throw new Error(`${what} is only encoded for long mode here`);
  }
}

function segment(selector: number, type: number, long: boolean): KvmSegment {
  return {
    base: 0n, limit: 0xffffffff, selector, type, present: 1, dpl: 0,
    db: long ? 0 : 1, s: 1, l: long ? 1 : 0, g: 1, avl: 0, unusable: 0, padding: 0,
  };
}

const CR0_PE = 1n;
const CR0_ET = 1n << 4n;
const CR0_NE = 1n << 5n;
const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;

/**
 * Writes a flat GDT (null, 64-bit code at 0x08, data at 0x10) and page tables identity-mapping
 * the first 1 GiB with 2 MiB pages into guest RAM `memory` (guest address 0 = memory[0]),
 * then puts the vCPU in 64-bit mode at `entry` with rsp at MICRO_STACK_TOP.
 */
export function setupLongMode(vcpu: VcpuFd, memory: Uint8Array, entry: bigint): void {
  if (memory.length < MICRO_CODE) throw new Error(`micro-guest RAM of ${memory.length} bytes is below the 32 KiB layout`);
  const view = new DataView(memory.buffer, memory.byteOffset, memory.byteLength);
  view.setBigUint64(MICRO_GDT, 0n, true);
  view.setBigUint64(MICRO_GDT + 8, 0x00af9a000000ffffn, true); // code: present, DPL0, exec/read, L=1, G=1
  view.setBigUint64(MICRO_GDT + 16, 0x00cf92000000ffffn, true); // data: present, DPL0, read/write, D/B=1, G=1
  const present = 1n;
  const writable = 2n;
  const pageSize = 0x80n;
  view.setBigUint64(MICRO_PML4, BigInt(MICRO_PDPT) | present | writable, true);
  view.setBigUint64(MICRO_PDPT, BigInt(MICRO_PD) | present | writable, true);
  for (let i = 0; i < 512; i++) {
    view.setBigUint64(MICRO_PD + i * 8, (BigInt(i) << 21n) | present | writable | pageSize, true);
  }
  const sregs = vcpu.getSregs();
  sregs.cs = segment(0x08, 0xb, true);
  for (const s of ['ds', 'es', 'fs', 'gs', 'ss'] as const) sregs[s] = segment(0x10, 0x3, false);
  sregs.gdt = { base: BigInt(MICRO_GDT), limit: 3 * 8 - 1, padding: [0, 0, 0] };
  sregs.cr3 = BigInt(MICRO_PML4);
  sregs.cr4 = CR4_PAE;
  sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
  sregs.efer = EFER_LME | EFER_LMA;
  vcpu.setSregs(sregs);
  vcpu.setRegs({ rip: entry, rsp: BigInt(MICRO_STACK_TOP), rflags: 2n });
}

/** Puts the vCPU in real mode with CS base 0 so that IP = `entry` (below 64 KiB). */
export function setupRealMode(vcpu: VcpuFd, entry: number): void {
  if (entry >= 0x10000) throw new Error(`real-mode entry 0x${entry.toString(16)} must be below 64 KiB with CS base 0`);
  const sregs = vcpu.getSregs();
  sregs.cs = { ...sregs.cs, base: 0n, selector: 0 };
  vcpu.setSregs(sregs);
  vcpu.setRegs({ rip: BigInt(entry), rsp: BigInt(MICRO_STACK_TOP), rflags: 2n });
}

export interface MicroVm {
  readonly kvm: Kvm;
  readonly vm: VmFd;
  readonly vcpu: VcpuFd;
  /** Guest RAM from guest-physical 0. */
  readonly memory: Uint8Array;
  /** Host address of guest RAM. */
  readonly memoryAddress: bigint;
  close(): void;
}

export interface MicroVmOptions {
  mode: CpuMode;
  code: Uint8Array;
  /** Guest RAM bytes (default 2 MiB); guest addresses above it are MMIO. */
  memorySize?: number;
  /** Create the in-kernel irqchip before the vCPU. */
  irqchip?: boolean;
}

/** A one-vCPU VM with `code` loaded at MICRO_CODE and the vCPU ready to run it. */
export function createMicroVm(options: MicroVmOptions): MicroVm {
  const memorySize = options.memorySize ?? 2 * 1024 * 1024;
  const kvm = Kvm.open();
  const cleanup: (() => void)[] = [() => kvm.close()];
  try {
    const vm = kvm.createVm();
    cleanup.unshift(() => vm.close());
    // Needed by Intel VMX for real mode; harmless elsewhere. Placed just below 4 GiB, outside RAM.
    vm.setTssAddr(0xfffbd000);
    if (options.irqchip) vm.createIrqchip();
    const memoryAddress = mmap(memorySize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
    cleanup.unshift(() => munmap(memoryAddress, memorySize));
    const memory = new Uint8Array(nativeView(memoryAddress, memorySize));
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memorySize: BigInt(memorySize), userspaceAddr: memoryAddress });
    const vcpu = vm.createVcpu(0);
    cleanup.unshift(() => vcpu.close());
    if (MICRO_CODE + options.code.length > memorySize) throw new Error('micro-guest code does not fit in its RAM');
    memory.set(options.code, MICRO_CODE);
    if (options.mode === 'long') setupLongMode(vcpu, memory, BigInt(MICRO_CODE));
    else setupRealMode(vcpu, MICRO_CODE);
    let closed = false;
    return {
      kvm, vm, vcpu, memory, memoryAddress,
      close(): void {
        if (closed) return;
        closed = true;
        for (const step of cleanup) step();
      },
    };
  } catch (err) {
    for (const step of cleanup) step();
    throw err;
  }
}
