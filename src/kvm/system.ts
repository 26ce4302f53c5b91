// The /dev/kvm system handle: questions about the host's KVM and VM creation.
// Every method is one ioctl (plus buffer growth where the kernel asks for it).
import {
  IOCTLS, KVM_API_VERSION, KVM_CAP, kvm_cpuid2, kvm_cpuid_entry2, kvm_msr_entry, kvm_msr_list, kvm_msrs,
  type KvmCapName,
} from './abi.js';
import { decodeCpuidEntries } from './cpuid-list.js';
import { close, E2BIG, ioctlPointer, ioctlPointerRaw, ioctlValue, KvmError, O_RDWR, open } from './libc.js';
import type { CpuidEntry, MsrEntry } from './types.js';
import { VmFd } from './vm.js';

/** Largest CPUID/MSR list the wrappers grow to before giving up (the kernel's own limits are far lower). */
const MAX_LIST_ENTRIES = 1 << 16;
/** KVM_CREATE_VM attempts while signals keep interrupting it, before the EINTR is reported. */
const CREATE_VM_ATTEMPTS = 100;

export class Kvm {
  private closed = false;

  private constructor(readonly fd: number) {}

  /** Opens the KVM device (default /dev/kvm) and checks the API version is the stable 12. */
  static open(path = '/dev/kvm'): Kvm {
    const kvm = new Kvm(open(path, O_RDWR));
    const version = kvm.apiVersion();
    if (version !== KVM_API_VERSION) {
      kvm.close();
      throw new Error(`${path}: KVM API version ${version}, expected ${KVM_API_VERSION}`);
    }
    return kvm;
  }

  /** Wraps an already-open /dev/kvm descriptor (e.g. one passed to a worker thread). */
  static fromFd(fd: number): Kvm {
    return new Kvm(fd);
  }

  apiVersion(): number {
    return ioctlValue(this.fd, IOCTLS.KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
  }

  /** KVM_CHECK_EXTENSION: 0 when unsupported, else 1 or a capability-specific value. */
  checkExtension(cap: KvmCapName | number): number {
    const n = typeof cap === 'number' ? cap : KVM_CAP[cap];
    return ioctlValue(this.fd, IOCTLS.KVM_CHECK_EXTENSION, n, 'KVM_CHECK_EXTENSION');
  }

  /** Bytes to mmap from a vCPU fd for its kvm_run page (and the PIO data pages after it). */
  vcpuMmapSize(): number {
    return ioctlValue(this.fd, IOCTLS.KVM_GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
  }

  /** CPUID leaves the host can offer guests (KVM_GET_SUPPORTED_CPUID). */
  supportedCpuid(): CpuidEntry[] {
    return this.cpuidList(IOCTLS.KVM_GET_SUPPORTED_CPUID, 'KVM_GET_SUPPORTED_CPUID');
  }

  /** CPUID bits KVM emulates in software (KVM_GET_EMULATED_CPUID). */
  emulatedCpuid(): CpuidEntry[] {
    return this.cpuidList(IOCTLS.KVM_GET_EMULATED_CPUID, 'KVM_GET_EMULATED_CPUID');
  }

  /** MSR indices the host saves/restores for guests (KVM_GET_MSR_INDEX_LIST). */
  msrIndexList(): number[] {
    return this.msrList(IOCTLS.KVM_GET_MSR_INDEX_LIST, 'KVM_GET_MSR_INDEX_LIST');
  }

  /** Feature MSRs (capabilities such as ARCH_CAPABILITIES) readable on the system fd. */
  featureMsrIndexList(): number[] {
    return this.msrList(IOCTLS.KVM_GET_MSR_FEATURE_INDEX_LIST, 'KVM_GET_MSR_FEATURE_INDEX_LIST');
  }

  /** Values of feature MSRs (KVM_GET_MSRS on the system fd); MSRs KVM rejects are left out. */
  featureMsrs(indices: readonly number[]): MsrEntry[] {
    const buf = new Uint8Array(kvm_msrs.size + indices.length * kvm_msr_entry.size);
    const view = new DataView(buf.buffer);
    view.setUint32(0, indices.length, true);
    indices.forEach((index, i) => view.setUint32(kvm_msrs.size + i * kvm_msr_entry.size, index, true));
    const n = ioctlPointer(this.fd, IOCTLS.KVM_GET_MSRS, buf, 'KVM_GET_MSRS');
    const out: MsrEntry[] = [];
    for (let i = 0; i < n; i++) {
      const at = kvm_msrs.size + i * kvm_msr_entry.size;
      out.push({ index: view.getUint32(at, true), data: view.getBigUint64(at + 8, true) });
    }
    return out;
  }

  /** KVM_CREATE_VM; `type` 0 is the default x86 VM. */
  createVm(type = 0): VmFd {
    const mmapSize = this.vcpuMmapSize();
    // A signal that arrives meanwhile (a profiler's SIGPROF, SIGCHLD, a terminal resize) makes
    // the kernel give up with EINTR, having created nothing: ask again.
    for (let attempt = 1; ; attempt++) {
      try {
        return new VmFd(ioctlValue(this.fd, IOCTLS.KVM_CREATE_VM, type, 'KVM_CREATE_VM'), mmapSize);
      } catch (err) {
        if (!(err instanceof KvmError && err.code === 'EINTR') || attempt >= CREATE_VM_ATTEMPTS) throw err;
      }
    }
  }

  /** A VM made by KVM_CREATE_VM elsewhere (another thread of this process), taken over with its descriptor. */
  adoptVm(vmFd: number): VmFd {
    try {
      return new VmFd(vmFd, this.vcpuMmapSize());
    } catch (err) {
      close(vmFd);
      throw err;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    close(this.fd);
  }

  private cpuidList(request: number, name: string): CpuidEntry[] {
    // The kernel answers E2BIG until the buffer holds every entry; grow and retry.
    for (let capacity = 64; capacity <= MAX_LIST_ENTRIES; capacity *= 2) {
      const buf = new Uint8Array(kvm_cpuid2.size + capacity * kvm_cpuid_entry2.size);
      new DataView(buf.buffer).setUint32(0, capacity, true);
      const r = ioctlPointerRaw(this.fd, request, buf);
      if (r === -E2BIG) continue;
      if (r < 0) throw new KvmError(name, -r);
      return decodeCpuidEntries(buf);
    }
    throw new Error(`${name}: more than ${MAX_LIST_ENTRIES} entries`);
  }

  private msrList(request: number, name: string): number[] {
    let capacity = 64;
    while (capacity <= MAX_LIST_ENTRIES) {
      const buf = new Uint8Array(kvm_msr_list.size + capacity * 4);
      const view = new DataView(buf.buffer);
      view.setUint32(0, capacity, true);
      const r = ioctlPointerRaw(this.fd, request, buf);
      if (r === -E2BIG) {
        // The kernel wrote the count it needs into nmsrs.
        capacity = Math.max(capacity * 2, view.getUint32(0, true));
        continue;
      }
      if (r < 0) throw new KvmError(name, -r);
      const n = view.getUint32(0, true);
      return Array.from({ length: n }, (_, i) => view.getUint32(kvm_msr_list.size + i * 4, true));
    }
    throw new Error(`${name}: more than ${MAX_LIST_ENTRIES} entries`);
  }
}
