// A KVM vCPU descriptor: KVM_RUN with the shared kvm_run page decoded into typed exits,
// and the register/state ioctls. KVM_RUN blocks the calling thread until the guest exits,
// so a VMM that must stay responsive runs vCPUs in worker threads (see kick.ts).
import {
  IOCTLS, KVM_EXIT, KVM_EXIT_IO_OUT, KVM_INTERNAL_ERROR, KVM_MAX_XCRS, kvm_cpuid2, kvm_cpuid_entry2, kvm_debugregs,
  kvm_fpu, kvm_interrupt, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_msrs, kvm_regs, kvm_run, kvm_signal_mask, kvm_sregs,
  kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
} from './abi.js';
import { decodeBytes, encodeToBytes, offsetOf } from './layout.js';
import {
  close, EINTR, ioctlPointer, ioctlPointerRaw, ioctlValue, KvmError, MAP_SHARED, mmap, munmap, nativeView,
  PROT_READ, PROT_WRITE,
} from './libc.js';
import { decodeCpuidEntries, encodeCpuidEntries } from './cpuid-list.js';
import type { CpuidEntry, KvmDebugRegs, KvmFpu, KvmRegs, KvmSregs, KvmVcpuEvents, MsrEntry, Xcr } from './types.js';

/** Why KVM_RUN returned, with the run page's union decoded for that reason. */
export type VcpuExit =
  | {
    reason: 'io';
    direction: 'in' | 'out';
    port: number;
    /** Bytes per access: 1, 2 or 4. */
    size: number;
    /** Accesses (>1 for rep ins/outs). */
    count: number;
    /** size*count bytes in the run page: the written data (out), or where to put the answer (in). */
    data: Uint8Array;
  }
  | {
    reason: 'mmio';
    address: bigint;
    length: number;
    isWrite: boolean;
    /** `length` bytes in the run page: the written data, or where to put the read result. */
    data: Uint8Array;
  }
  | { reason: 'hlt' }
  | { reason: 'shutdown' }
  | { reason: 'intr' }
  | { reason: 'irq_window_open' }
  | { reason: 'fail_entry'; hardwareEntryFailureReason: bigint; cpu: number }
  | {
    reason: 'internal_error';
    suberror: number;
    data: bigint[];
    /** For emulation failures that report them: the bytes KVM could not emulate. */
    instructionBytes?: Uint8Array;
  }
  | { reason: 'system_event'; type: number; data: bigint[] }
  | { reason: 'exception'; exception: number; errorCode: number }
  | { reason: 'unknown'; hardwareExitReason: bigint }
  | { reason: 'other'; exitReason: number };

// Run-page offsets, resolved once from the layout.
const OFF = {
  immediateExit: offsetOf(kvm_run, 'immediate_exit'),
  requestInterruptWindow: offsetOf(kvm_run, 'request_interrupt_window'),
  exitReason: offsetOf(kvm_run, 'exit_reason'),
  readyForInjection: offsetOf(kvm_run, 'ready_for_interrupt_injection'),
  ifFlag: offsetOf(kvm_run, 'if_flag'),
  ioDirection: offsetOf(kvm_run, 'exit.io.direction'),
  ioSize: offsetOf(kvm_run, 'exit.io.size'),
  ioPort: offsetOf(kvm_run, 'exit.io.port'),
  ioCount: offsetOf(kvm_run, 'exit.io.count'),
  ioDataOffset: offsetOf(kvm_run, 'exit.io.data_offset'),
  mmioAddr: offsetOf(kvm_run, 'exit.mmio.phys_addr'),
  mmioData: offsetOf(kvm_run, 'exit.mmio.data'),
  mmioLen: offsetOf(kvm_run, 'exit.mmio.len'),
  mmioIsWrite: offsetOf(kvm_run, 'exit.mmio.is_write'),
  hwExitReason: offsetOf(kvm_run, 'exit.hw.hardware_exit_reason'),
  failReason: offsetOf(kvm_run, 'exit.fail_entry.hardware_entry_failure_reason'),
  failCpu: offsetOf(kvm_run, 'exit.fail_entry.cpu'),
  exException: offsetOf(kvm_run, 'exit.ex.exception'),
  exErrorCode: offsetOf(kvm_run, 'exit.ex.error_code'),
  internalSuberror: offsetOf(kvm_run, 'exit.internal.suberror'),
  internalNdata: offsetOf(kvm_run, 'exit.internal.ndata'),
  internalData: offsetOf(kvm_run, 'exit.internal.data'),
  emulationFlags: offsetOf(kvm_run, 'exit.emulation_failure.flags'),
  emulationInsnSize: offsetOf(kvm_run, 'exit.emulation_failure.insn_size'),
  emulationInsnBytes: offsetOf(kvm_run, 'exit.emulation_failure.insn_bytes'),
  systemType: offsetOf(kvm_run, 'exit.system_event.type'),
  systemNdata: offsetOf(kvm_run, 'exit.system_event.ndata'),
  systemData: offsetOf(kvm_run, 'exit.system_event.data'),
};

export class VcpuFd {
  /** Host address of the mapped kvm_run page (another thread may map/poke it via fd). */
  readonly runAddress: bigint;
  /** The kvm_run page and the PIO data pages after it. */
  readonly runBytes: Uint8Array;
  private readonly page: DataView;
  private closed = false;

  /**
   * Maps the run page of vCPU `fd`. With ownsFd false (another thread's vCPU, by fd number),
   * close() only unmaps this thread's mapping and leaves the descriptor open.
   */
  constructor(readonly fd: number, readonly id: number, readonly mmapSize: number, private readonly ownsFd = true) {
    this.runAddress = mmap(mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    this.runBytes = new Uint8Array(nativeView(this.runAddress, mmapSize));
    this.page = new DataView(this.runBytes.buffer);
  }

  /**
   * KVM_RUN until the next exit. An interruption by a signal, or a run with immediate_exit
   * set, comes back as { reason: 'intr' } rather than an error.
   */
  runOnce(): VcpuExit {
    const r = ioctlPointerRaw(this.fd, IOCTLS.KVM_RUN, null);
    if (r === -EINTR) return { reason: 'intr' };
    if (r < 0) throw new KvmError('KVM_RUN', -r, `vCPU ${this.id}`);
    return this.decodeExit();
  }

  /** KVM_RUN until the next exit (the same as runOnce()). */
  run(): VcpuExit {
    return this.runOnce();
  }

  /** The exit currently described by the run page. */
  decodeExit(): VcpuExit {
    const v = this.page;
    const reason = v.getUint32(OFF.exitReason, true);
    switch (reason) {
      case KVM_EXIT.IO: {
        const size = v.getUint8(OFF.ioSize);
        const count = v.getUint32(OFF.ioCount, true);
        const dataOffset = Number(v.getBigUint64(OFF.ioDataOffset, true));
        return {
          reason: 'io',
          direction: v.getUint8(OFF.ioDirection) === KVM_EXIT_IO_OUT ? 'out' : 'in',
          port: v.getUint16(OFF.ioPort, true),
          size,
          count,
          data: this.runBytes.subarray(dataOffset, dataOffset + size * count),
        };
      }
      case KVM_EXIT.MMIO: {
        const length = v.getUint32(OFF.mmioLen, true);
        return {
          reason: 'mmio',
          address: v.getBigUint64(OFF.mmioAddr, true),
          length,
          isWrite: v.getUint8(OFF.mmioIsWrite) !== 0,
          data: this.runBytes.subarray(OFF.mmioData, OFF.mmioData + Math.min(length, 8)),
        };
      }
      case KVM_EXIT.HLT: return { reason: 'hlt' };
      case KVM_EXIT.SHUTDOWN: return { reason: 'shutdown' };
      case KVM_EXIT.INTR: return { reason: 'intr' };
      case KVM_EXIT.IRQ_WINDOW_OPEN: return { reason: 'irq_window_open' };
      case KVM_EXIT.FAIL_ENTRY:
        return {
          reason: 'fail_entry',
          hardwareEntryFailureReason: v.getBigUint64(OFF.failReason, true),
          cpu: v.getUint32(OFF.failCpu, true),
        };
      case KVM_EXIT.INTERNAL_ERROR: {
        const suberror = v.getUint32(OFF.internalSuberror, true);
        const ndata = Math.min(v.getUint32(OFF.internalNdata, true), 16);
        const data = Array.from({ length: ndata }, (_, i) => v.getBigUint64(OFF.internalData + 8 * i, true));
        const exit: VcpuExit = { reason: 'internal_error', suberror, data };
        if (suberror === KVM_INTERNAL_ERROR.EMULATION && ndata >= 1
          && (v.getBigUint64(OFF.emulationFlags, true) & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) !== 0n) {
          const n = Math.min(v.getUint8(OFF.emulationInsnSize), 15);
          exit.instructionBytes = this.runBytes.slice(OFF.emulationInsnBytes, OFF.emulationInsnBytes + n);
        }
        return exit;
      }
      case KVM_EXIT.SYSTEM_EVENT: {
        const ndata = Math.min(v.getUint32(OFF.systemNdata, true), 16);
        return {
          reason: 'system_event',
          type: v.getUint32(OFF.systemType, true),
          data: Array.from({ length: ndata }, (_, i) => v.getBigUint64(OFF.systemData + 8 * i, true)),
        };
      }
      case KVM_EXIT.EXCEPTION:
        return {
          reason: 'exception',
          exception: v.getUint32(OFF.exException, true),
          errorCode: v.getUint32(OFF.exErrorCode, true),
        };
      case KVM_EXIT.UNKNOWN:
        return { reason: 'unknown', hardwareExitReason: v.getBigUint64(OFF.hwExitReason, true) };
      default:
        return { reason: 'other', exitReason: reason };
    }
  }

  /** kvm_run.immediate_exit: when set, KVM_RUN returns at once with EINTR (race-free pause). */
  get immediateExit(): boolean {
    return this.page.getUint8(OFF.immediateExit) !== 0;
  }
  set immediateExit(value: boolean) {
    this.page.setUint8(OFF.immediateExit, value ? 1 : 0);
  }

  /** kvm_run.request_interrupt_window: ask for an IRQ_WINDOW_OPEN exit when the guest can take one. */
  set requestInterruptWindow(value: boolean) {
    this.page.setUint8(OFF.requestInterruptWindow, value ? 1 : 0);
  }
  get readyForInterruptInjection(): boolean {
    return this.page.getUint8(OFF.readyForInjection) !== 0;
  }
  get interruptFlag(): boolean {
    return this.page.getUint8(OFF.ifFlag) !== 0;
  }

  getRegs(): KvmRegs {
    return this.getStruct(IOCTLS.KVM_GET_REGS, 'KVM_GET_REGS', kvm_regs) as KvmRegs;
  }
  setRegs(regs: Partial<KvmRegs>): void {
    this.setStruct(IOCTLS.KVM_SET_REGS, 'KVM_SET_REGS', kvm_regs, regs);
  }

  getSregs(): KvmSregs {
    return this.getStruct(IOCTLS.KVM_GET_SREGS, 'KVM_GET_SREGS', kvm_sregs) as KvmSregs;
  }
  /** Takes a complete KvmSregs (typically getSregs() with changes): every field is written. */
  setSregs(sregs: KvmSregs): void {
    this.setStruct(IOCTLS.KVM_SET_SREGS, 'KVM_SET_SREGS', kvm_sregs, sregs);
  }

  getFpu(): KvmFpu {
    return this.getStruct(IOCTLS.KVM_GET_FPU, 'KVM_GET_FPU', kvm_fpu) as KvmFpu;
  }
  setFpu(fpu: Partial<KvmFpu>): void {
    this.setStruct(IOCTLS.KVM_SET_FPU, 'KVM_SET_FPU', kvm_fpu, fpu);
  }

  /** The 4 KiB legacy XSAVE area (KVM_GET_XSAVE), in the host's CPUID 0xD layout. */
  getXsave(): Uint8Array {
    const bytes = new Uint8Array(kvm_xsave.size);
    ioctlPointer(this.fd, IOCTLS.KVM_GET_XSAVE, bytes, 'KVM_GET_XSAVE');
    return bytes;
  }
  setXsave(area: Uint8Array): void {
    if (area.length !== kvm_xsave.size) throw new Error(`XSAVE area must be ${kvm_xsave.size} bytes, got ${area.length}`);
    ioctlPointer(this.fd, IOCTLS.KVM_SET_XSAVE, area, 'KVM_SET_XSAVE');
  }

  getXcrs(): Xcr[] {
    const bytes = new Uint8Array(kvm_xcrs.size);
    ioctlPointer(this.fd, IOCTLS.KVM_GET_XCRS, bytes, 'KVM_GET_XCRS');
    const d = decodeBytes(kvm_xcrs, bytes) as { nr_xcrs: number; xcrs: { xcr: number; value: bigint }[] };
    return d.xcrs.slice(0, d.nr_xcrs).map((x) => ({ xcr: x.xcr, value: x.value }));
  }
  setXcrs(xcrs: readonly Xcr[]): void {
    if (xcrs.length > KVM_MAX_XCRS) throw new Error(`at most ${KVM_MAX_XCRS} XCRs, got ${xcrs.length}`);
    const bytes = encodeToBytes(kvm_xcrs, { nr_xcrs: xcrs.length, xcrs });
    ioctlPointer(this.fd, IOCTLS.KVM_SET_XCRS, bytes, 'KVM_SET_XCRS');
  }

  /** Reads MSRs; the result holds only those KVM returned (it stops at the first it rejects). */
  getMsrs(indices: readonly number[]): MsrEntry[] {
    const bytes = msrsBytes(indices.map((index) => ({ index, data: 0n })));
    const n = ioctlPointer(this.fd, IOCTLS.KVM_GET_MSRS, bytes, 'KVM_GET_MSRS');
    return decodeMsrs(bytes, n);
  }
  /** Writes MSRs; returns how many KVM accepted (it stops at the first it rejects). */
  setMsrs(entries: readonly MsrEntry[]): number {
    return ioctlPointer(this.fd, IOCTLS.KVM_SET_MSRS, msrsBytes(entries), 'KVM_SET_MSRS');
  }

  setCpuid2(entries: readonly CpuidEntry[]): void {
    ioctlPointer(this.fd, IOCTLS.KVM_SET_CPUID2, encodeCpuidEntries(entries), 'KVM_SET_CPUID2');
  }
  getCpuid2(maxEntries = 256): CpuidEntry[] {
    const bytes = new Uint8Array(kvm_cpuid2.size + maxEntries * kvm_cpuid_entry2.size);
    new DataView(bytes.buffer).setUint32(0, maxEntries, true);
    ioctlPointer(this.fd, IOCTLS.KVM_GET_CPUID2, bytes, 'KVM_GET_CPUID2');
    return decodeCpuidEntries(bytes);
  }

  /** The local APIC's 1 KiB register page (needs the in-kernel irqchip). */
  getLapic(): Uint8Array {
    const bytes = new Uint8Array(kvm_lapic_state.size);
    ioctlPointer(this.fd, IOCTLS.KVM_GET_LAPIC, bytes, 'KVM_GET_LAPIC');
    return bytes;
  }
  setLapic(regs: Uint8Array): void {
    if (regs.length !== kvm_lapic_state.size) {
      throw new Error(`LAPIC state must be ${kvm_lapic_state.size} bytes, got ${regs.length}`);
    }
    ioctlPointer(this.fd, IOCTLS.KVM_SET_LAPIC, Uint8Array.from(regs), 'KVM_SET_LAPIC');
  }

  /** KVM_MP_STATE_* (RUNNABLE, HALTED, ...). */
  getMpState(): number {
    const bytes = new Uint8Array(kvm_mp_state.size);
    ioctlPointer(this.fd, IOCTLS.KVM_GET_MP_STATE, bytes, 'KVM_GET_MP_STATE');
    return new DataView(bytes.buffer).getUint32(0, true);
  }
  setMpState(state: number): void {
    ioctlPointer(this.fd, IOCTLS.KVM_SET_MP_STATE, encodeToBytes(kvm_mp_state, { mp_state: state }), 'KVM_SET_MP_STATE');
  }

  getVcpuEvents(): KvmVcpuEvents {
    return this.getStruct(IOCTLS.KVM_GET_VCPU_EVENTS, 'KVM_GET_VCPU_EVENTS', kvm_vcpu_events) as KvmVcpuEvents;
  }
  setVcpuEvents(events: KvmVcpuEvents): void {
    this.setStruct(IOCTLS.KVM_SET_VCPU_EVENTS, 'KVM_SET_VCPU_EVENTS', kvm_vcpu_events, events);
  }

  getDebugRegs(): KvmDebugRegs {
    return this.getStruct(IOCTLS.KVM_GET_DEBUGREGS, 'KVM_GET_DEBUGREGS', kvm_debugregs) as KvmDebugRegs;
  }
  setDebugRegs(regs: Partial<KvmDebugRegs>): void {
    this.setStruct(IOCTLS.KVM_SET_DEBUGREGS, 'KVM_SET_DEBUGREGS', kvm_debugregs, regs);
  }

  /**
   * Signals blocked while the guest runs (KVM_SET_SIGNAL_MASK): `sigset` is a kernel sigset
   * (8 bytes on x86-64, bit n-1 = signal n); null removes the mask.
   */
  setSignalMask(sigset: Uint8Array | null): void {
    const len = sigset === null ? 0 : sigset.length;
    const bytes = new Uint8Array(kvm_signal_mask.size + len);
    new DataView(bytes.buffer).setUint32(0, len, true);
    if (sigset) bytes.set(sigset, kvm_signal_mask.size);
    ioctlPointer(this.fd, IOCTLS.KVM_SET_SIGNAL_MASK, bytes, 'KVM_SET_SIGNAL_MASK');
  }

  getTscKhz(): number {
    return ioctlValue(this.fd, IOCTLS.KVM_GET_TSC_KHZ, 0, 'KVM_GET_TSC_KHZ');
  }
  setTscKhz(khz: number): void {
    ioctlValue(this.fd, IOCTLS.KVM_SET_TSC_KHZ, khz, 'KVM_SET_TSC_KHZ');
  }

  /** Injects external interrupt `vector` (only without the in-kernel irqchip: userspace PIC). */
  interrupt(vector: number): void {
    ioctlPointer(this.fd, IOCTLS.KVM_INTERRUPT, encodeToBytes(kvm_interrupt, { irq: vector }), 'KVM_INTERRUPT');
  }

  /** Tells the guest's kvmclock it was paused, so its soft-lockup watchdog does not fire after a pause. */
  kvmclockCtrl(): void {
    ioctlValue(this.fd, IOCTLS.KVM_KVMCLOCK_CTRL, 0, 'KVM_KVMCLOCK_CTRL');
  }

  /** Queues an NMI for the vCPU. */
  nmi(): void {
    ioctlValue(this.fd, IOCTLS.KVM_NMI, 0, 'KVM_NMI');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    munmap(this.runAddress, this.mmapSize);
    if (this.ownsFd) close(this.fd);
  }

  private getStruct(request: number, name: string, layout: typeof kvm_regs): unknown {
    const bytes = new Uint8Array(layout.size);
    ioctlPointer(this.fd, request, bytes, name);
    return decodeBytes(layout, bytes);
  }

  private setStruct(request: number, name: string, layout: typeof kvm_regs, value: unknown): void {
    ioctlPointer(this.fd, request, encodeToBytes(layout, value), name);
  }
}

function msrsBytes(entries: readonly MsrEntry[]): Uint8Array {
  const bytes = new Uint8Array(kvm_msrs.size + entries.length * kvm_msr_entry.size);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const at = kvm_msrs.size + i * kvm_msr_entry.size;
    view.setUint32(at, e.index, true);
    view.setBigUint64(at + offsetOf(kvm_msr_entry, 'data'), e.data, true);
  });
  return bytes;
}

function decodeMsrs(bytes: Uint8Array, n: number): MsrEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  return Array.from({ length: n }, (_, i) => {
    const at = kvm_msrs.size + i * kvm_msr_entry.size;
    return { index: view.getUint32(at, true), data: view.getBigUint64(at + offsetOf(kvm_msr_entry, 'data'), true) };
  });
}
