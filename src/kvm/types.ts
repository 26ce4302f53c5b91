// TypeScript shapes of the KVM structs the wrappers take and return. Field names follow
// <asm/kvm.h> so they read like the kernel documentation; 64-bit fields are bigint.

export interface KvmRegs {
  rax: bigint; rbx: bigint; rcx: bigint; rdx: bigint;
  rsi: bigint; rdi: bigint; rsp: bigint; rbp: bigint;
  r8: bigint; r9: bigint; r10: bigint; r11: bigint;
  r12: bigint; r13: bigint; r14: bigint; r15: bigint;
  rip: bigint; rflags: bigint;
}

export interface KvmSegment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number; dpl: number; db: number; s: number; l: number; g: number; avl: number;
  unusable: number;
  padding: number;
}

export interface KvmDtable {
  base: bigint;
  limit: number;
  padding: number[];
}

export interface KvmSregs {
  cs: KvmSegment; ds: KvmSegment; es: KvmSegment; fs: KvmSegment; gs: KvmSegment; ss: KvmSegment;
  tr: KvmSegment; ldt: KvmSegment;
  gdt: KvmDtable; idt: KvmDtable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint;
  efer: bigint;
  apic_base: bigint;
  interrupt_bitmap: bigint[];
}

export interface KvmFpu {
  /** 8 x87 registers, 16 bytes each (fxsave layout). */
  fpr: number[][];
  fcw: number; fsw: number; ftwx: number; pad1: number;
  last_opcode: number;
  last_ip: bigint; last_dp: bigint;
  /** 16 XMM registers, 16 bytes each. */
  xmm: number[][];
  mxcsr: number;
  pad2: number;
}

export interface KvmVcpuEvents {
  exception: { injected: number; nr: number; has_error_code: number; pending: number; error_code: number };
  interrupt: { injected: number; nr: number; soft: number; shadow: number };
  nmi: { injected: number; pending: number; masked: number; pad: number };
  sipi_vector: number;
  flags: number;
  smi: { smm: number; pending: number; smm_inside_nmi: number; latched_init: number };
  triple_fault: { pending: number };
  reserved: number[];
  exception_has_payload: number;
  exception_payload: bigint;
}

export interface KvmDebugRegs {
  db: bigint[];
  dr6: bigint;
  dr7: bigint;
  flags: bigint;
  reserved: bigint[];
}

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number; ebx: number; ecx: number; edx: number;
}

export interface MsrEntry {
  index: number;
  data: bigint;
}

export interface Xcr {
  xcr: number;
  value: bigint;
}

export interface KvmClockData {
  clock: bigint;
  flags: number;
  realtime: bigint;
  host_tsc: bigint;
}

export interface UserMemoryRegion {
  slot: number;
  /** KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY. */
  flags?: number;
  guestPhysAddr: bigint;
  /** 0 deletes the slot. */
  memorySize: bigint;
  /** Host virtual address of the backing mapping. */
  userspaceAddr: bigint;
}

export type GsiRoute =
  | { gsi: number; type: 'irqchip'; irqchip: number; pin: number }
  | { gsi: number; type: 'msi'; addressLo: number; addressHi: number; data: number; devid?: number };

export interface MsiMessage {
  addressLo: number;
  addressHi: number;
  data: number;
  /** Set for KVM_MSI_VALID_DEVID. */
  devid?: number;
}

export interface IoEventFd {
  /** The eventfd KVM signals. */
  fd: number;
  /** Port number (pio) or guest-physical address (mmio). */
  address: bigint;
  /** Access width in bytes: 1, 2, 4 or 8; 0 matches any width (KVM_CAP_IOEVENTFD_ANY_LENGTH). */
  length: number;
  /** Port I/O instead of MMIO. */
  pio?: boolean;
  /** Only writes of this value trigger the eventfd. */
  datamatch?: bigint;
}

export interface KvmPitChannelState {
  count: number;
  latched_count: number;
  count_latched: number;
  status_latched: number;
  status: number;
  read_state: number;
  write_state: number;
  write_latch: number;
  rw_mode: number;
  mode: number;
  bcd: number;
  gate: number;
  count_load_time: bigint;
}

export interface KvmPitState2 {
  channels: KvmPitChannelState[];
  flags: number;
  reserved: number[];
}
