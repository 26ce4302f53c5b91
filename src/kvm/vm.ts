// A KVM virtual machine descriptor: memory slots, vCPUs, in-kernel interrupt
// controllers, interrupt injection, eventfd wiring, dirty logging and the clock.
// Each method is one ioctl; machine policy (layouts, which GSI goes where) lives above.
import {
  IOCTLS, KVM_CAP, KVM_IOEVENTFD_FLAG_DATAMATCH, KVM_IOEVENTFD_FLAG_DEASSIGN, KVM_IOEVENTFD_FLAG_PIO,
  KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQFD_FLAG_DEASSIGN, KVM_IRQFD_FLAG_RESAMPLE,
  KVM_MSI_VALID_DEVID, kvm_clear_dirty_log, kvm_clock_data, kvm_dirty_log, kvm_enable_cap, kvm_ioeventfd,
  kvm_irq_level, kvm_irq_routing, kvm_irq_routing_entry, kvm_irqchip, kvm_irqfd, kvm_msi, kvm_pit_config,
  kvm_pit_state2,
  kvm_userspace_memory_region, type KvmCapName,
} from './abi.js';
import { koffi } from './ffi.js';
import { decodeBytes, encode, encodeToBytes, offsetOf } from './layout.js';
import { close, ioctlPointer, ioctlValue } from './libc.js';
import type { GsiRoute, IoEventFd, KvmClockData, KvmPitState2, MsiMessage, UserMemoryRegion } from './types.js';
import { VcpuFd } from './vcpu.js';

const MSI_ADDRESS_LO = offsetOf(kvm_msi, 'address_lo');
const MSI_ADDRESS_HI = offsetOf(kvm_msi, 'address_hi');
const MSI_DATA = offsetOf(kvm_msi, 'data');
const MSI_FLAGS = offsetOf(kvm_msi, 'flags');
const MSI_DEVID = offsetOf(kvm_msi, 'devid');

const PAGE_SIZE = 4096;
/** Where the 512-byte controller state starts in struct kvm_irqchip. */
const IRQCHIP_STATE_OFFSET = offsetOf(kvm_irqchip, 'chip');

export class VmFd {
  private closed = false;

  /** `vcpuMmapSize` comes from Kvm.vcpuMmapSize(); needed to map each vCPU's kvm_run page. */
  constructor(readonly fd: number, readonly vcpuMmapSize: number) {}

  /** KVM_CHECK_EXTENSION on the VM (answers can differ per VM type). */
  checkExtension(cap: KvmCapName | number): number {
    const n = typeof cap === 'number' ? cap : KVM_CAP[cap];
    return ioctlValue(this.fd, IOCTLS.KVM_CHECK_EXTENSION, n, 'KVM_CHECK_EXTENSION');
  }

  /** Maps (or with memorySize 0, removes) host memory as guest-physical memory in a slot. */
  setUserMemoryRegion(region: UserMemoryRegion): void {
    const bytes = encodeToBytes(kvm_userspace_memory_region, {
      slot: region.slot,
      flags: region.flags ?? 0,
      guest_phys_addr: region.guestPhysAddr,
      memory_size: region.memorySize,
      userspace_addr: region.userspaceAddr,
    });
    ioctlPointer(this.fd, IOCTLS.KVM_SET_USER_MEMORY_REGION, bytes, 'KVM_SET_USER_MEMORY_REGION');
  }

  /** KVM_CREATE_VCPU with the given APIC id, mapping its kvm_run page. */
  createVcpu(id: number): VcpuFd {
    const fd = ioctlValue(this.fd, IOCTLS.KVM_CREATE_VCPU, id, 'KVM_CREATE_VCPU');
    try {
      return new VcpuFd(fd, id, this.vcpuMmapSize);
    } catch (err) {
      close(fd);
      throw err;
    }
  }

  /** In-kernel PIC pair + IOAPIC (+ local APICs for vCPUs created afterwards). */
  createIrqchip(): void {
    ioctlValue(this.fd, IOCTLS.KVM_CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
  }

  /** In-kernel i8254 PIT; flags KVM_PIT_SPEAKER_DUMMY emulates the speaker port too. */
  createPit2(flags = 0): void {
    ioctlPointer(this.fd, IOCTLS.KVM_CREATE_PIT2, encodeToBytes(kvm_pit_config, { flags }), 'KVM_CREATE_PIT2');
  }

  /**
   * The raw 512-byte state of an in-kernel interrupt controller: KVM_IRQCHIP_PIC_MASTER,
   * KVM_IRQCHIP_PIC_SLAVE (struct kvm_pic_state) or KVM_IRQCHIP_IOAPIC (struct kvm_ioapic_state).
   */
  getIrqchip(chipId: number): Uint8Array {
    const bytes = encodeToBytes(kvm_irqchip, { chip_id: chipId });
    ioctlPointer(this.fd, IOCTLS.KVM_GET_IRQCHIP, bytes, 'KVM_GET_IRQCHIP');
    return bytes.slice(IRQCHIP_STATE_OFFSET);
  }

  setIrqchip(chipId: number, state: Uint8Array): void {
    const area = kvm_irqchip.size - IRQCHIP_STATE_OFFSET;
    if (state.length !== area) throw new Error(`irqchip ${chipId} state must be ${area} bytes, got ${state.length}`);
    const bytes = encodeToBytes(kvm_irqchip, { chip_id: chipId });
    bytes.set(state, IRQCHIP_STATE_OFFSET);
    ioctlPointer(this.fd, IOCTLS.KVM_SET_IRQCHIP, bytes, 'KVM_SET_IRQCHIP');
  }

  /** State of the in-kernel PIT (after createPit2). */
  getPit2(): KvmPitState2 {
    const bytes = new Uint8Array(kvm_pit_state2.size);
    ioctlPointer(this.fd, IOCTLS.KVM_GET_PIT2, bytes, 'KVM_GET_PIT2');
    return decodeBytes(kvm_pit_state2, bytes) as unknown as KvmPitState2;
  }

  setPit2(state: KvmPitState2): void {
    ioctlPointer(this.fd, IOCTLS.KVM_SET_PIT2, encodeToBytes(kvm_pit_state2, state), 'KVM_SET_PIT2');
  }

  /** Guest-physical address of the 3 pages Intel VMX needs for the real-mode TSS. */
  setTssAddr(address: number): void {
    ioctlValue(this.fd, IOCTLS.KVM_SET_TSS_ADDR, address, 'KVM_SET_TSS_ADDR');
  }

  /** Guest-physical address of the page Intel VMX needs for the real-mode identity map. */
  setIdentityMapAddr(address: bigint): void {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, address, true);
    ioctlPointer(this.fd, IOCTLS.KVM_SET_IDENTITY_MAP_ADDR, bytes, 'KVM_SET_IDENTITY_MAP_ADDR');
  }

  /** Drives a GSI line of the in-kernel irqchip high or low. */
  irqLine(irq: number, level: boolean): void {
    ioctlPointer(this.fd, IOCTLS.KVM_IRQ_LINE, encodeToBytes(kvm_irq_level, { irq, level: level ? 1 : 0 }), 'KVM_IRQ_LINE');
  }

  /** Injects an MSI; returns >0 when delivered, 0 when the guest blocked it. */
  signalMsi(msi: MsiMessage): number {
    // One buffer for every MSI, its fields written in place: a device raises one per request
    // where KVM refuses irqfds, and the generic struct encoder allocated and walked the layout.
    const v = this.msiView;
    v.setUint32(MSI_ADDRESS_LO, msi.addressLo, true);
    v.setUint32(MSI_ADDRESS_HI, msi.addressHi, true);
    v.setUint32(MSI_DATA, msi.data, true);
    v.setUint32(MSI_FLAGS, msi.devid === undefined ? 0 : KVM_MSI_VALID_DEVID, true);
    v.setUint32(MSI_DEVID, msi.devid ?? 0, true);
    return ioctlPointer(this.fd, IOCTLS.KVM_SIGNAL_MSI, this.msiBytes, 'KVM_SIGNAL_MSI');
  }

  private readonly msiBytes = new Uint8Array(kvm_msi.size);
  private readonly msiView = new DataView(this.msiBytes.buffer);

  /** Replaces the whole GSI routing table. */
  setGsiRouting(routes: readonly GsiRoute[]): void {
    const bytes = new Uint8Array(kvm_irq_routing.size + routes.length * kvm_irq_routing_entry.size);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, routes.length, true);
    routes.forEach((route, i) => {
      const at = kvm_irq_routing.size + i * kvm_irq_routing_entry.size;
      const entry = route.type === 'irqchip'
        ? { gsi: route.gsi, type: KVM_IRQ_ROUTING_IRQCHIP, u: { irqchip: { irqchip: route.irqchip, pin: route.pin } } }
        : {
          gsi: route.gsi,
          type: KVM_IRQ_ROUTING_MSI,
          flags: route.devid === undefined ? 0 : KVM_MSI_VALID_DEVID,
          u: { msi: { address_lo: route.addressLo, address_hi: route.addressHi, data: route.data, devid: route.devid ?? 0 } },
        };
      encode(kvm_irq_routing_entry, entry, view, at);
    });
    ioctlPointer(this.fd, IOCTLS.KVM_SET_GSI_ROUTING, bytes, 'KVM_SET_GSI_ROUTING');
  }

  /**
   * Makes a write to `eventfd` raise `gsi`. With `resampleFd` the line is level-triggered:
   * KVM signals resampleFd when the guest EOIs, so the device can re-assert if still pending.
   */
  registerIrqfd(eventfd: number, gsi: number, resampleFd?: number): void {
    const bytes = encodeToBytes(kvm_irqfd, {
      fd: eventfd,
      gsi,
      flags: resampleFd === undefined ? 0 : KVM_IRQFD_FLAG_RESAMPLE,
      resamplefd: resampleFd ?? 0,
    });
    ioctlPointer(this.fd, IOCTLS.KVM_IRQFD, bytes, 'KVM_IRQFD');
  }

  unregisterIrqfd(eventfd: number, gsi: number): void {
    const bytes = encodeToBytes(kvm_irqfd, { fd: eventfd, gsi, flags: KVM_IRQFD_FLAG_DEASSIGN });
    ioctlPointer(this.fd, IOCTLS.KVM_IRQFD, bytes, 'KVM_IRQFD');
  }

  /** Guest writes matching `io` signal its eventfd in the kernel instead of exiting to userspace. */
  registerIoeventfd(io: IoEventFd): void {
    ioctlPointer(this.fd, IOCTLS.KVM_IOEVENTFD, ioeventfdBytes(io, 0), 'KVM_IOEVENTFD');
  }

  unregisterIoeventfd(io: IoEventFd): void {
    ioctlPointer(this.fd, IOCTLS.KVM_IOEVENTFD, ioeventfdBytes(io, KVM_IOEVENTFD_FLAG_DEASSIGN), 'KVM_IOEVENTFD');
  }

  /**
   * The dirty bitmap of a slot registered with KVM_MEM_LOG_DIRTY_PAGES (one bit per 4 KiB
   * page, bit i of byte i/8 = page i), reset by the kernel as it is read.
   */
  getDirtyLog(slot: number, memorySize: bigint): Uint8Array {
    const bitmap = new Uint8Array(dirtyBitmapBytes(memorySize));
    const bytes = encodeToBytes(kvm_dirty_log, { slot, dirty_bitmap: koffi.address(bitmap) });
    ioctlPointer(this.fd, IOCTLS.KVM_GET_DIRTY_LOG, bytes, 'KVM_GET_DIRTY_LOG');
    return bitmap;
  }

  /**
   * Re-protects pages set in `bitmap` (bit 0 = firstPage) so later writes are logged again;
   * needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled. firstPage and numPages must be multiples of 64.
   */
  clearDirtyLog(slot: number, firstPage: bigint, numPages: number, bitmap: Uint8Array): void {
    const copy = new Uint8Array(Math.max(8, Math.ceil(numPages / 64) * 8));
    copy.set(bitmap.subarray(0, copy.length));
    const bytes = encodeToBytes(kvm_clear_dirty_log, {
      slot, num_pages: numPages, first_page: firstPage, dirty_bitmap: koffi.address(copy),
    });
    ioctlPointer(this.fd, IOCTLS.KVM_CLEAR_DIRTY_LOG, bytes, 'KVM_CLEAR_DIRTY_LOG');
  }

  /** The kvmclock base (ns) shared by all vCPUs. */
  getClock(): KvmClockData {
    const bytes = new Uint8Array(kvm_clock_data.size);
    ioctlPointer(this.fd, IOCTLS.KVM_GET_CLOCK, bytes, 'KVM_GET_CLOCK');
    const d = decodeBytes(kvm_clock_data, bytes) as unknown as KvmClockData;
    return { clock: d.clock, flags: d.flags, realtime: d.realtime, host_tsc: d.host_tsc };
  }

  setClock(clock: bigint, flags = 0): void {
    ioctlPointer(this.fd, IOCTLS.KVM_SET_CLOCK, encodeToBytes(kvm_clock_data, { clock, flags }), 'KVM_SET_CLOCK');
  }

  /** KVM_ENABLE_CAP on the VM with up to 4 arguments. */
  enableCap(cap: KvmCapName | number, args: readonly bigint[] = [], flags = 0): void {
    const n = typeof cap === 'number' ? cap : KVM_CAP[cap];
    ioctlPointer(this.fd, IOCTLS.KVM_ENABLE_CAP, encodeToBytes(kvm_enable_cap, { cap: n, flags, args }), 'KVM_ENABLE_CAP');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    close(this.fd);
  }
}

function ioeventfdBytes(io: IoEventFd, extraFlags: number): Uint8Array {
  let flags = extraFlags;
  if (io.pio) flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (io.datamatch !== undefined) flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
  if (![0, 1, 2, 4, 8].includes(io.length)) {
    throw new Error(`ioeventfd at 0x${io.address.toString(16)}: length ${io.length} is not 0, 1, 2, 4 or 8`);
  }
  return encodeToBytes(kvm_ioeventfd, {
    datamatch: io.datamatch ?? 0n, addr: io.address, len: io.length, fd: io.fd, flags,
  });
}

/** Bytes of a dirty bitmap for a slot: one bit per page, rounded up to whole 64-bit words as KVM requires. */
export function dirtyBitmapBytes(memorySize: bigint): number {
  const pages = Number((memorySize + BigInt(PAGE_SIZE) - 1n) / BigInt(PAGE_SIZE));
  return Math.max(8, Math.ceil(pages / 64) * 8);
}
