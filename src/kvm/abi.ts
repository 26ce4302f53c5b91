// The KVM ABI for x86-64 as data: struct layouts from <linux/kvm.h> and <asm/kvm.h>,
// ioctl request numbers and the constants the wrappers use. Names follow the header so
// they can be checked against it mechanically (test/host/kvm/layout.test.ts).
import { array, i32, i64, struct, u16, u32, u64, u8, union, type StructType } from './layout.js';

// ---- ioctl request encoding (asm-generic/ioctl.h) ----
const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
const KVMIO = 0xae;

function ioc(dir: number, nr: number, size: number): number {
  // Unsigned 32-bit result: dir occupies the top two bits.
  return ((dir << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
}
const io = (nr: number): number => ioc(IOC_NONE, nr, 0);
const ior = (nr: number, size: number): number => ioc(IOC_READ, nr, size);
const iow = (nr: number, size: number): number => ioc(IOC_WRITE, nr, size);
const iowr = (nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, nr, size);

// ---- struct layouts ----
export const kvm_userspace_memory_region = struct('struct kvm_userspace_memory_region', [
  ['slot', u32], ['flags', u32], ['guest_phys_addr', u64], ['memory_size', u64], ['userspace_addr', u64],
]);

export const kvm_irq_level = struct('struct kvm_irq_level', [
  ['irq', u32], ['level', u32],
]);

export const kvm_pit_config = struct('struct kvm_pit_config', [
  ['flags', u32], ['pad', array(u32, 15)],
]);

export const kvm_dirty_log = struct('struct kvm_dirty_log', [
  ['slot', u32], ['padding1', u32], ['dirty_bitmap', u64],
]);

export const kvm_clear_dirty_log = struct('struct kvm_clear_dirty_log', [
  ['slot', u32], ['num_pages', u32], ['first_page', u64], ['dirty_bitmap', u64],
]);

export const kvm_mp_state = struct('struct kvm_mp_state', [['mp_state', u32]]);

export const kvm_ioeventfd = struct('struct kvm_ioeventfd', [
  ['datamatch', u64], ['addr', u64], ['len', u32], ['fd', i32], ['flags', u32], ['pad', array(u8, 36)],
]);

export const kvm_enable_cap = struct('struct kvm_enable_cap', [
  ['cap', u32], ['flags', u32], ['args', array(u64, 4)], ['pad', array(u8, 64)],
]);

export const kvm_irq_routing_irqchip = struct('struct kvm_irq_routing_irqchip', [
  ['irqchip', u32], ['pin', u32],
]);

export const kvm_irq_routing_msi = struct('struct kvm_irq_routing_msi', [
  ['address_lo', u32], ['address_hi', u32], ['data', u32], ['devid', u32],
]);

export const kvm_irq_routing_entry = struct('struct kvm_irq_routing_entry', [
  ['gsi', u32], ['type', u32], ['flags', u32], ['pad', u32],
  ['u', union(undefined, [
    ['irqchip', kvm_irq_routing_irqchip],
    ['msi', kvm_irq_routing_msi],
    ['pad', array(u32, 8)],
  ])],
]);

export const kvm_irq_routing = struct('struct kvm_irq_routing', [
  ['nr', u32], ['flags', u32], ['entries', array(kvm_irq_routing_entry, 0)],
]);

export const kvm_irqfd = struct('struct kvm_irqfd', [
  ['fd', u32], ['gsi', u32], ['flags', u32], ['resamplefd', u32], ['pad', array(u8, 16)],
]);

export const kvm_clock_data = struct('struct kvm_clock_data', [
  ['clock', u64], ['flags', u32], ['pad0', u32], ['realtime', u64], ['host_tsc', u64], ['pad', array(u32, 4)],
]);

export const kvm_msi = struct('struct kvm_msi', [
  ['address_lo', u32], ['address_hi', u32], ['data', u32], ['flags', u32], ['devid', u32], ['pad', array(u8, 12)],
]);

export const kvm_signal_mask = struct('struct kvm_signal_mask', [
  ['len', u32], ['sigset', array(u8, 0)],
]);

/** The shared page KVM_RUN reports exits in (mmap of the vCPU fd at offset 0). */
export const kvm_run = struct('struct kvm_run', [
  ['request_interrupt_window', u8], ['immediate_exit', u8], ['padding1', array(u8, 6)],
  ['exit_reason', u32], ['ready_for_interrupt_injection', u8], ['if_flag', u8], ['flags', u16],
  ['cr8', u64], ['apic_base', u64],
  ['exit', union(undefined, [
    ['hw', struct(undefined, [['hardware_exit_reason', u64]])],
    ['fail_entry', struct(undefined, [['hardware_entry_failure_reason', u64], ['cpu', u32]])],
    ['ex', struct(undefined, [['exception', u32], ['error_code', u32]])],
    ['io', struct(undefined, [
      ['direction', u8], ['size', u8], ['port', u16], ['count', u32], ['data_offset', u64],
    ])],
    ['mmio', struct(undefined, [['phys_addr', u64], ['data', array(u8, 8)], ['len', u32], ['is_write', u8]])],
    ['internal', struct(undefined, [['suberror', u32], ['ndata', u32], ['data', array(u64, 16)]])],
    ['emulation_failure', struct(undefined, [
      ['suberror', u32], ['ndata', u32], ['flags', u64], ['insn_size', u8], ['insn_bytes', array(u8, 15)],
    ])],
    ['system_event', struct(undefined, [
      ['type', u32], ['ndata', u32], ['data', array(u64, 16)],
    ])],
    ['padding', array(u8, 256)],
  ]), ''],
  ['kvm_valid_regs', u64], ['kvm_dirty_regs', u64],
  ['s', union(undefined, [['padding', array(u8, 2048)]])],
]);

/** In-kernel PIC or IOAPIC state; `chip` is the raw 512-byte area (pic or ioapic layout by chip_id). */
export const kvm_irqchip = struct('struct kvm_irqchip', [
  ['chip_id', u32], ['pad', u32], ['chip', union(undefined, [['dummy', array(u8, 512)]])],
]);

export const kvm_interrupt = struct('struct kvm_interrupt', [['irq', u32]]);

// x86 (asm/kvm.h)
export const kvm_regs = struct('struct kvm_regs', [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
].map((name) => [name, u64] as const));

export const kvm_segment = struct('struct kvm_segment', [
  ['base', u64], ['limit', u32], ['selector', u16], ['type', u8],
  ['present', u8], ['dpl', u8], ['db', u8], ['s', u8], ['l', u8], ['g', u8], ['avl', u8],
  ['unusable', u8], ['padding', u8],
]);

export const kvm_dtable = struct('struct kvm_dtable', [
  ['base', u64], ['limit', u16], ['padding', array(u16, 3)],
]);

export const kvm_sregs = struct('struct kvm_sregs', [
  ['cs', kvm_segment], ['ds', kvm_segment], ['es', kvm_segment], ['fs', kvm_segment],
  ['gs', kvm_segment], ['ss', kvm_segment], ['tr', kvm_segment], ['ldt', kvm_segment],
  ['gdt', kvm_dtable], ['idt', kvm_dtable],
  ['cr0', u64], ['cr2', u64], ['cr3', u64], ['cr4', u64], ['cr8', u64],
  ['efer', u64], ['apic_base', u64], ['interrupt_bitmap', array(u64, 4)],
]);

export const kvm_fpu = struct('struct kvm_fpu', [
  ['fpr', array(array(u8, 16), 8)], ['fcw', u16], ['fsw', u16], ['ftwx', u8], ['pad1', u8],
  ['last_opcode', u16], ['last_ip', u64], ['last_dp', u64], ['xmm', array(array(u8, 16), 16)],
  ['mxcsr', u32], ['pad2', u32],
]);

export const kvm_msr_entry = struct('struct kvm_msr_entry', [
  ['index', u32], ['reserved', u32], ['data', u64],
]);

export const kvm_msrs = struct('struct kvm_msrs', [
  ['nmsrs', u32], ['pad', u32], ['entries', array(kvm_msr_entry, 0)],
]);

export const kvm_msr_list = struct('struct kvm_msr_list', [
  ['nmsrs', u32], ['indices', array(u32, 0)],
]);

export const kvm_cpuid_entry2 = struct('struct kvm_cpuid_entry2', [
  ['function', u32], ['index', u32], ['flags', u32],
  ['eax', u32], ['ebx', u32], ['ecx', u32], ['edx', u32], ['padding', array(u32, 3)],
]);

export const kvm_cpuid2 = struct('struct kvm_cpuid2', [
  ['nent', u32], ['padding', u32], ['entries', array(kvm_cpuid_entry2, 0)],
]);

export const KVM_APIC_REG_SIZE = 0x400;
export const kvm_lapic_state = struct('struct kvm_lapic_state', [['regs', array(u8, KVM_APIC_REG_SIZE)]]);

export const kvm_vcpu_events = struct('struct kvm_vcpu_events', [
  ['exception', struct(undefined, [
    ['injected', u8], ['nr', u8], ['has_error_code', u8], ['pending', u8], ['error_code', u32],
  ])],
  ['interrupt', struct(undefined, [['injected', u8], ['nr', u8], ['soft', u8], ['shadow', u8]])],
  ['nmi', struct(undefined, [['injected', u8], ['pending', u8], ['masked', u8], ['pad', u8]])],
  ['sipi_vector', u32], ['flags', u32],
  ['smi', struct(undefined, [['smm', u8], ['pending', u8], ['smm_inside_nmi', u8], ['latched_init', u8]])],
  ['triple_fault', struct(undefined, [['pending', u8]])],
  ['reserved', array(u8, 26)], ['exception_has_payload', u8], ['exception_payload', u64],
]);

export const kvm_debugregs = struct('struct kvm_debugregs', [
  ['db', array(u64, 4)], ['dr6', u64], ['dr7', u64], ['flags', u64], ['reserved', array(u64, 9)],
]);

export const kvm_xsave = struct('struct kvm_xsave', [
  ['region', array(u32, 1024)], ['extra', array(u32, 0)],
]);

export const kvm_xcr = struct('struct kvm_xcr', [['xcr', u32], ['reserved', u32], ['value', u64]]);

export const KVM_MAX_XCRS = 16;
export const kvm_xcrs = struct('struct kvm_xcrs', [
  ['nr_xcrs', u32], ['flags', u32], ['xcrs', array(kvm_xcr, KVM_MAX_XCRS)], ['padding', array(u64, 16)],
]);

export const kvm_pit_channel_state = struct('struct kvm_pit_channel_state', [
  ['count', u32], ['latched_count', u16], ['count_latched', u8], ['status_latched', u8], ['status', u8],
  ['read_state', u8], ['write_state', u8], ['write_latch', u8], ['rw_mode', u8], ['mode', u8], ['bcd', u8],
  ['gate', u8], ['count_load_time', i64],
]);

export const kvm_pit_state2 = struct('struct kvm_pit_state2', [
  ['channels', array(kvm_pit_channel_state, 3)], ['flags', u32], ['reserved', array(u32, 9)],
]);

/** Every kernel struct defined here, for the layout test. */
export const ALL_LAYOUTS: readonly StructType[] = [
  kvm_userspace_memory_region, kvm_irq_level, kvm_pit_config, kvm_dirty_log, kvm_clear_dirty_log,
  kvm_mp_state, kvm_ioeventfd, kvm_enable_cap, kvm_irq_routing_irqchip, kvm_irq_routing_msi,
  kvm_irq_routing_entry, kvm_irq_routing, kvm_irqfd, kvm_clock_data, kvm_msi, kvm_signal_mask, kvm_run,
  kvm_regs, kvm_segment, kvm_dtable, kvm_sregs, kvm_fpu, kvm_msr_entry, kvm_msrs, kvm_msr_list,
  kvm_cpuid_entry2, kvm_cpuid2, kvm_lapic_state, kvm_vcpu_events, kvm_debugregs, kvm_xsave, kvm_xcr, kvm_xcrs,
  kvm_irqchip, kvm_interrupt, kvm_pit_channel_state, kvm_pit_state2,
];

// ---- ioctl numbers ----
export const IOCTLS = {
  // system (/dev/kvm)
  KVM_GET_API_VERSION: io(0x00),
  KVM_CREATE_VM: io(0x01),
  KVM_GET_MSR_INDEX_LIST: iowr(0x02, kvm_msr_list.size),
  KVM_CHECK_EXTENSION: io(0x03),
  KVM_GET_VCPU_MMAP_SIZE: io(0x04),
  KVM_GET_SUPPORTED_CPUID: iowr(0x05, kvm_cpuid2.size),
  KVM_GET_EMULATED_CPUID: iowr(0x09, kvm_cpuid2.size),
  KVM_GET_MSR_FEATURE_INDEX_LIST: iowr(0x0a, kvm_msr_list.size),
  // VM
  KVM_CREATE_VCPU: io(0x41),
  KVM_GET_DIRTY_LOG: iow(0x42, kvm_dirty_log.size),
  KVM_SET_USER_MEMORY_REGION: iow(0x46, kvm_userspace_memory_region.size),
  KVM_SET_TSS_ADDR: io(0x47),
  KVM_SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  KVM_CREATE_IRQCHIP: io(0x60),
  KVM_IRQ_LINE: iow(0x61, kvm_irq_level.size),
  KVM_IRQ_LINE_STATUS: iowr(0x67, kvm_irq_level.size),
  KVM_GET_IRQCHIP: iowr(0x62, kvm_irqchip.size),
  // The kernel header declares SET_IRQCHIP with _IOR; the number must match it as-is.
  KVM_SET_IRQCHIP: ior(0x63, kvm_irqchip.size),
  KVM_GET_PIT2: ior(0x9f, kvm_pit_state2.size),
  KVM_SET_PIT2: iow(0xa0, kvm_pit_state2.size),
  KVM_SET_GSI_ROUTING: iow(0x6a, kvm_irq_routing.size),
  KVM_IRQFD: iow(0x76, kvm_irqfd.size),
  KVM_CREATE_PIT2: iow(0x77, kvm_pit_config.size),
  KVM_IOEVENTFD: iow(0x79, kvm_ioeventfd.size),
  KVM_SET_CLOCK: iow(0x7b, kvm_clock_data.size),
  KVM_GET_CLOCK: ior(0x7c, kvm_clock_data.size),
  KVM_SIGNAL_MSI: iow(0xa5, kvm_msi.size),
  KVM_CLEAR_DIRTY_LOG: iowr(0xc0, kvm_clear_dirty_log.size),
  KVM_ENABLE_CAP: iow(0xa3, kvm_enable_cap.size),
  // vCPU
  KVM_RUN: io(0x80),
  KVM_GET_REGS: ior(0x81, kvm_regs.size),
  KVM_SET_REGS: iow(0x82, kvm_regs.size),
  KVM_GET_SREGS: ior(0x83, kvm_sregs.size),
  KVM_SET_SREGS: iow(0x84, kvm_sregs.size),
  KVM_GET_MSRS: iowr(0x88, kvm_msrs.size),
  KVM_SET_MSRS: iow(0x89, kvm_msrs.size),
  KVM_SET_SIGNAL_MASK: iow(0x8b, kvm_signal_mask.size),
  KVM_GET_FPU: ior(0x8c, kvm_fpu.size),
  KVM_SET_FPU: iow(0x8d, kvm_fpu.size),
  KVM_GET_LAPIC: ior(0x8e, kvm_lapic_state.size),
  KVM_SET_LAPIC: iow(0x8f, kvm_lapic_state.size),
  KVM_SET_CPUID2: iow(0x90, kvm_cpuid2.size),
  KVM_GET_CPUID2: iowr(0x91, kvm_cpuid2.size),
  KVM_GET_MP_STATE: ior(0x98, kvm_mp_state.size),
  KVM_SET_MP_STATE: iow(0x99, kvm_mp_state.size),
  KVM_INTERRUPT: iow(0x86, kvm_interrupt.size),
  KVM_NMI: io(0x9a),
  KVM_KVMCLOCK_CTRL: io(0xad),
  KVM_GET_VCPU_EVENTS: ior(0x9f, kvm_vcpu_events.size),
  KVM_SET_VCPU_EVENTS: iow(0xa0, kvm_vcpu_events.size),
  KVM_GET_DEBUGREGS: ior(0xa1, kvm_debugregs.size),
  KVM_SET_DEBUGREGS: iow(0xa2, kvm_debugregs.size),
  KVM_GET_XSAVE: ior(0xa4, kvm_xsave.size),
  KVM_SET_XSAVE: iow(0xa5, kvm_xsave.size),
  KVM_GET_XCRS: ior(0xa6, kvm_xcrs.size),
  KVM_SET_XCRS: iow(0xa7, kvm_xcrs.size),
  KVM_SET_TSC_KHZ: io(0xa2),
  KVM_GET_TSC_KHZ: io(0xa3),
} as const;

export type IoctlName = keyof typeof IOCTLS;

// ---- constants ----
export const KVM_API_VERSION = 12;

export const KVM_EXIT = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, SET_TPR: 11, TPR_ACCESS: 12, NMI: 16, INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24, IOAPIC_EOI: 26, HYPERV: 27, X86_RDMSR: 29, X86_WRMSR: 30, DIRTY_RING_FULL: 31,
  X86_BUS_LOCK: 33, NOTIFY: 37,
} as const;

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const KVM_SYSTEM_EVENT = { SHUTDOWN: 1, RESET: 2, CRASH: 3, WAKEUP: 4, SUSPEND: 5, SEV_TERM: 6 } as const;

export const KVM_INTERNAL_ERROR = { EMULATION: 1, SIMUL_EX: 2, DELIVERY_EV: 3, UNEXPECTED_EXIT_REASON: 4 } as const;
export const KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1n;

export const KVM_MEM_LOG_DIRTY_PAGES = 1;
export const KVM_MEM_READONLY = 2;

export const KVM_IRQFD_FLAG_DEASSIGN = 1;
export const KVM_IRQFD_FLAG_RESAMPLE = 2;

export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
export const KVM_IOEVENTFD_FLAG_PIO = 2;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;

export const KVM_IRQ_ROUTING_IRQCHIP = 1;
export const KVM_IRQ_ROUTING_MSI = 2;

export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;

export const KVM_MSI_VALID_DEVID = 1;
export const KVM_PIT_SPEAKER_DUMMY = 1;

export const KVM_CLOCK_TSC_STABLE = 2;

export const KVM_MP_STATE = {
  RUNNABLE: 0, UNINITIALIZED: 1, INIT_RECEIVED: 2, HALTED: 3, SIPI_RECEIVED: 4,
} as const;

/** Capabilities the stack asks about (KVM_CAP_* in <linux/kvm.h>). */
export const KVM_CAP = {
  IRQCHIP: 0, HLT: 1, USER_MEMORY: 3, SET_TSS_ADDR: 4, VAPIC: 6, EXT_CPUID: 7, CLOCKSOURCE: 8,
  NR_VCPUS: 9, NR_MEMSLOTS: 10, PIT: 11, NOP_IO_DELAY: 12, PV_MMU: 13, MP_STATE: 14,
  COALESCED_MMIO: 15, SYNC_MMU: 16, IOMMU: 18, DESTROY_MEMORY_REGION_WORKS: 21, USER_NMI: 22,
  SET_GUEST_DEBUG: 23, REINJECT_CONTROL: 24, IRQ_ROUTING: 25, IRQ_INJECT_STATUS: 26, MCE: 31, IRQFD: 32,
  PIT2: 33, SET_BOOT_CPU_ID: 34, PIT_STATE2: 35, IOEVENTFD: 36, SET_IDENTITY_MAP_ADDR: 37,
  ADJUST_CLOCK: 39, INTERNAL_ERROR_DATA: 40, VCPU_EVENTS: 41, PCI_SEGMENT: 47, DEBUGREGS: 50, X86_ROBUST_SINGLESTEP: 51,
  XSAVE: 55, XCRS: 56, ASYNC_PF: 59, TSC_CONTROL: 60, GET_TSC_KHZ: 61, MAX_VCPUS: 66, SIGNAL_MSI: 77,
  READONLY_MEM: 81, IRQFD_RESAMPLE: 82, IOEVENTFD_NO_LENGTH: 100, IMMEDIATE_EXIT: 136,
  MANUAL_DIRTY_LOG_PROTECT2: 168, X86_DISABLE_EXITS: 143, MAX_VCPU_ID: 128, SPLIT_IRQCHIP: 121,
  IOEVENTFD_ANY_LENGTH: 122, X2APIC_API: 129, GET_MSR_FEATURES: 153, XSAVE2: 208,
} as const;

export type KvmCapName = keyof typeof KVM_CAP;

export const KVM_X86_DISABLE_EXITS = { MWAIT: 1, HLT: 2, PAUSE: 4, CSTATE: 8 } as const;
