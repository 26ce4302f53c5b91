// VM-level plumbing on this machine's /dev/kvm: irqfd (with and without resampling), MSI
// injection, PIT creation and dirty page logging seen from a micro-guest's writes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
} from '../../../src/kvm/abi.js';
import { close, EFD_NONBLOCK, eventfd, readNonBlocking, write } from '../../../src/kvm/libc.js';
import { createMicroVm, GuestCode } from '../../../src/kvm/microguest.js';
import { dirtyBitmapBytes } from '../../../src/kvm/vm.js';
import { KvmInterruptSink } from '../../../src/pci/kvm-interrupts.js';

function signal(fd: number): void {
  const one = new Uint8Array(8);
  one[0] = 1;
  write(fd, one);
}

function pending(fd: number): boolean {
  return readNonBlocking(fd, new Uint8Array(8)) > 0;
}

/** Software-enables the vCPU's LAPIC; returns a test of whether a vector is pending in its IRR. */
function enableLapic(micro: ReturnType<typeof createMicroVm>): (vector: number) => boolean {
  const lapic = micro.vcpu.getLapic();
  new DataView(lapic.buffer, lapic.byteOffset).setUint32(0xf0, 0x1ff, true); // SVR: software-enabled
  micro.vcpu.setLapic(lapic);
  return (vector) => {
    const state = micro.vcpu.getLapic();
    return ((new DataView(state.buffer, state.byteOffset).getUint32(0x200 + (vector >> 5) * 0x10, true) >>> (vector & 31)) & 1) === 1;
  };
}

test('irqfd: KVM consumes writes to a registered eventfd; after unregistering it does not', { timeout: 30_000 }, () => {
  const micro = createMicroVm({ mode: 'long', code: new GuestCode('long').hlt().bytes(), irqchip: true });
  const irq = eventfd(0, EFD_NONBLOCK);
  const level = eventfd(0, EFD_NONBLOCK);
  const resample = eventfd(0, EFD_NONBLOCK);
  try {
    micro.vm.createPit2(KVM_PIT_SPEAKER_DUMMY);
    micro.vm.registerIrqfd(irq, 5);
    signal(irq);
    assert.equal(pending(irq), false, 'the kernel read the eventfd to raise GSI 5');
    micro.vm.unregisterIrqfd(irq, 5);
    signal(irq);
    assert.equal(pending(irq), true, 'an unregistered eventfd keeps its count');

    if (micro.kvm.checkExtension('IRQFD_RESAMPLE')) {
      micro.vm.registerIrqfd(level, 10, resample);
      signal(level);
      assert.equal(pending(level), false);
      micro.vm.unregisterIrqfd(level, 10);
    }
    assert.ok(micro.vm.signalMsi({ addressLo: 0xfee00000, addressHi: 0, data: 0x41 }) >= 0);
  } finally {
    micro.close();
    for (const fd of [irq, level, resample]) close(fd);
  }
});

test('the interrupt sink: an MSI through its irqfd reaches the LAPIC, and the PIC and IOAPIC lines keep their routes', { timeout: 30_000 }, async () => {
  const micro = createMicroVm({ mode: 'long', code: new GuestCode('long').hlt().bytes(), irqchip: true });
  const sink = new KvmInterruptSink(micro.vm);
  try {
    const requested = enableLapic(micro);
    sink.signalMsi(0xfee0_0000n, 0x41); // fixed delivery of vector 0x41 to APIC 0
    assert.equal(sink.routedCount, 1, 'delivered through a route and an irqfd');
    for (let i = 0; i < 100 && !requested(0x41); i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(requested(0x41), true, 'vector 0x41 pending in the LAPIC');
    assert.equal(requested(0x52), false, 'control: a vector nobody sent');

    // The sink replaced KVM's routing table: ISA and PCI lines must still land where they did.
    sink.setIntx(4, true);
    assert.equal(micro.vm.getIrqchip(KVM_IRQCHIP_PIC_MASTER)[1]! & (1 << 4), 1 << 4, 'GSI 4: master PIC pin 4');
    sink.setIntx(17, true);
    const ioapic = micro.vm.getIrqchip(KVM_IRQCHIP_IOAPIC);
    assert.equal(new DataView(ioapic.buffer, ioapic.byteOffset).getUint32(16, true) & (1 << 17), 1 << 17, 'GSI 17: IOAPIC pin 17');
  } finally {
    sink.release();
    micro.close();
  }
});

test('KVM_SIGNAL_MSI: each message reaches the LAPIC with its own vector (one buffer serves every call)', { timeout: 30_000 }, () => {
  const micro = createMicroVm({ mode: 'long', code: new GuestCode('long').hlt().bytes(), irqchip: true });
  try {
    const requested = enableLapic(micro);
    assert.equal(micro.vm.signalMsi({ addressLo: 0xfee00000, addressHi: 0, data: 0x43 }), 1, 'delivered');
    assert.equal(micro.vm.signalMsi({ addressLo: 0xfee00000, addressHi: 0, data: 0x65 }), 1, 'delivered');
    assert.equal(requested(0x43), true, 'vector 0x43 pending');
    assert.equal(requested(0x65), true, 'vector 0x65 pending');
    assert.equal(requested(0x52), false, 'control: a vector nobody sent');
  } finally {
    micro.close();
  }
});

test('dirty log: pages the guest writes are reported once, untouched pages are not', { timeout: 30_000 }, () => {
  const memorySize = 2 * 1024 * 1024;
  const code = new GuestCode('long').movEaxImm32(0x1234).storeEax(0x30010).storeEax(0x45000).hlt();
  const micro = createMicroVm({ mode: 'long', code: code.bytes(), memorySize });
  try {
    micro.vm.setUserMemoryRegion({
      slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0n,
      memorySize: BigInt(memorySize), userspaceAddr: micro.memoryAddress,
    });
    assert.equal(micro.vcpu.runOnce().reason, 'hlt');
    const bit = (bitmap: Uint8Array, page: number): boolean => ((bitmap[page >> 3]! >> (page & 7)) & 1) === 1;
    const first = micro.vm.getDirtyLog(0, BigInt(memorySize));
    assert.equal(first.length, dirtyBitmapBytes(BigInt(memorySize)));
    assert.equal(first.length, 64);
    assert.equal(bit(first, 0x30), true, 'page 0x30000 written');
    assert.equal(bit(first, 0x45), true, 'page 0x45000 written');
    assert.equal(bit(first, 0x100), false, 'page 0x100000 never touched');
    const second = micro.vm.getDirtyLog(0, BigInt(memorySize));
    assert.equal(bit(second, 0x30), false, 'reading the log reset it');
    assert.throws(() => micro.vm.getDirtyLog(7, BigInt(memorySize)), /KVM_GET_DIRTY_LOG failed: (EINVAL|ENOENT)/);
  } finally {
    micro.close();
  }
});

test('manual dirty log protection: pages stay reported until cleared', { timeout: 30_000 }, (t) => {
  const memorySize = 2 * 1024 * 1024;
  const code = new GuestCode('long').movEaxImm32(0x1234).storeEax(0x50000).hlt();
  const micro = createMicroVm({ mode: 'long', code: code.bytes(), memorySize });
  try {
    if (micro.vm.checkExtension('MANUAL_DIRTY_LOG_PROTECT2') === 0) {
      t.skip('KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is not offered by this kernel');
      return;
    }
    micro.vm.enableCap('MANUAL_DIRTY_LOG_PROTECT2', [1n]);
    micro.vm.setUserMemoryRegion({
      slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0n,
      memorySize: BigInt(memorySize), userspaceAddr: micro.memoryAddress,
    });
    assert.equal(micro.vcpu.runOnce().reason, 'hlt');
    const bit = (bitmap: Uint8Array, page: number): boolean => ((bitmap[page >> 3]! >> (page & 7)) & 1) === 1;
    const first = micro.vm.getDirtyLog(0, BigInt(memorySize));
    assert.equal(bit(first, 0x50), true);
    assert.equal(bit(micro.vm.getDirtyLog(0, BigInt(memorySize)), 0x50), true, 'still dirty: not cleared yet');
    micro.vm.clearDirtyLog(0, 0n, memorySize / 4096, first);
    assert.equal(bit(micro.vm.getDirtyLog(0, BigInt(memorySize)), 0x50), false, 'cleared');
    assert.throws(() => micro.vm.clearDirtyLog(0, 3n, 64, first), /KVM_CLEAR_DIRTY_LOG failed: EINVAL/);
  } finally {
    micro.close();
  }
});

test('irqchip and PIT state read back what was written; KVM_INTERRUPT needs a userspace PIC', { timeout: 30_000 }, () => {
  const withChip = createMicroVm({ mode: 'long', code: new GuestCode('long').hlt().bytes(), irqchip: true });
  const withoutChip = createMicroVm({ mode: 'long', code: new GuestCode('long').hlt().bytes() });
  try {
    const { vm } = withChip;
    const pic = vm.getIrqchip(KVM_IRQCHIP_PIC_MASTER);
    assert.equal(pic.length, 512);
    pic[2] = 0xfb; // struct kvm_pic_state: last_irr, irr, imr: mask all but IRQ 2
    vm.setIrqchip(KVM_IRQCHIP_PIC_MASTER, pic);
    assert.equal(vm.getIrqchip(KVM_IRQCHIP_PIC_MASTER)[2], 0xfb);
    const ioapic = vm.getIrqchip(KVM_IRQCHIP_IOAPIC);
    vm.setIrqchip(KVM_IRQCHIP_IOAPIC, ioapic);
    assert.throws(() => vm.setIrqchip(KVM_IRQCHIP_IOAPIC, new Uint8Array(10)), /irqchip 2 state must be 512 bytes, got 10/);

    vm.createPit2();
    const pit = vm.getPit2();
    assert.equal(pit.channels.length, 3);
    pit.channels[2]!.gate = 1;
    vm.setPit2(pit);
    assert.equal(vm.getPit2().channels[2]!.gate, 1);

    assert.throws(() => withChip.vcpu.interrupt(0x20), /KVM_INTERRUPT failed: ENXIO/);
    withoutChip.vcpu.interrupt(0x20);
    assert.throws(() => withoutChip.vcpu.kvmclockCtrl(), /KVM_KVMCLOCK_CTRL failed: EINVAL/, 'the guest never enabled kvmclock');
  } finally {
    withChip.close();
    withoutChip.close();
  }
});
