// Hand-assembled micro-guests on this machine's /dev/kvm: every exit the guest causes is
// asserted (port, size, direction, data; MMIO address, length, data), values injected on IN
// and MMIO reads must be seen by the guest (it echoes them back), and HLT ends each guest.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { KVM_MP_STATE } from '../../../src/kvm/abi.js';
import { KvmError, SyscallError } from '../../../src/kvm/libc.js';
import { createMicroVm, GuestCode, MICRO_CODE, type MicroVm } from '../../../src/kvm/microguest.js';
import { Kvm } from '../../../src/kvm/system.js';
import type { VcpuExit } from '../../../src/kvm/vcpu.js';

const open: MicroVm[] = [];
after(() => {
  for (const vm of open) vm.close();
});

function boot(mode: 'real' | 'long', code: GuestCode, irqchip = false): MicroVm {
  const micro = createMicroVm({ mode, code: code.bytes(), irqchip });
  open.push(micro);
  return micro;
}

function bytesLE(value: number, size: number): number[] {
  return Array.from({ length: size }, (_, i) => (value >>> (8 * i)) & 0xff);
}

function expectIo(exit: VcpuExit, direction: 'in' | 'out', port: number, size: number): Extract<VcpuExit, { reason: 'io' }> {
  assert.equal(exit.reason, 'io', `expected an I/O exit, got ${JSON.stringify(exit, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
  assert.equal(exit.direction, direction);
  assert.equal(exit.port, port);
  assert.equal(exit.size, size);
  assert.equal(exit.count, 1);
  assert.equal(exit.data.length, size);
  return exit;
}

function expectMmio(exit: VcpuExit, isWrite: boolean, address: bigint, length: number): Extract<VcpuExit, { reason: 'mmio' }> {
  assert.equal(exit.reason, 'mmio', `expected an MMIO exit, got ${exit.reason}`);
  assert.equal(exit.isWrite, isWrite);
  assert.equal(exit.address, address);
  assert.equal(exit.length, length);
  assert.equal(exit.data.length, length);
  return exit;
}

test('real mode: OUT and IN exits; the value injected on IN is seen by the guest', { timeout: 30_000 }, () => {
  const code = new GuestCode('real')
    .movDxImm16(0x3f8).movAlImm8(0x41).outDxAl() // out 0x3f8, 'A'
    .inAlDx().addAlImm8(1).outDxAl() // al = in 0x3f8; out 0x3f8, al+1
    .movEaxImm32(0xbeef).outDxAx() // 16-bit out
    .movDxImm16(0x80).inEaxDx().outDxEax() // 32-bit in, echoed back
    .movAlImm8(0x77).outImm8Al(0x70)
    .hlt();
  const { vcpu } = boot('real', code);

  let exit = expectIo(vcpu.runOnce(), 'out', 0x3f8, 1);
  assert.deepEqual([...exit.data], [0x41]);

  exit = expectIo(vcpu.runOnce(), 'in', 0x3f8, 1);
  exit.data[0] = 0x5a;

  exit = expectIo(vcpu.runOnce(), 'out', 0x3f8, 1);
  assert.deepEqual([...exit.data], [0x5b]);

  exit = expectIo(vcpu.runOnce(), 'out', 0x3f8, 2);
  assert.deepEqual([...exit.data], [0xef, 0xbe]);

  exit = expectIo(vcpu.runOnce(), 'in', 0x80, 4);
  exit.data.set(bytesLE(0x11223344, 4));
  exit = expectIo(vcpu.runOnce(), 'out', 0x80, 4);
  assert.deepEqual([...exit.data], bytesLE(0x11223344, 4));

  exit = expectIo(vcpu.runOnce(), 'out', 0x70, 1);
  assert.deepEqual([...exit.data], [0x77]);

  assert.equal(vcpu.runOnce().reason, 'hlt');
  const regs = vcpu.getRegs();
  assert.equal(regs.rip, BigInt(MICRO_CODE + code.offset), 'rip is just past the hlt');
  assert.equal(regs.rax & 0xffffffffn, 0x11223377n, 'eax holds the injected dword with al replaced');
});

test('long mode: port I/O of 1, 2 and 4 bytes with injected IN values', { timeout: 30_000 }, () => {
  const code = new GuestCode('long')
    .movDxImm16(0xcf8).movEaxImm32(0x80001234).outDxEax()
    .movDxImm16(0xcfc).inEaxDx().outDxEax()
    .inAxDx().outDxAx()
    .inAlDx().addAlImm8(2).outDxAl()
    .hlt();
  const { vcpu } = boot('long', code);

  let exit = expectIo(vcpu.runOnce(), 'out', 0xcf8, 4);
  assert.deepEqual([...exit.data], bytesLE(0x80001234, 4));

  exit = expectIo(vcpu.runOnce(), 'in', 0xcfc, 4);
  exit.data.set(bytesLE(0xdeadbeef, 4));
  exit = expectIo(vcpu.runOnce(), 'out', 0xcfc, 4);
  assert.deepEqual([...exit.data], bytesLE(0xdeadbeef, 4));

  exit = expectIo(vcpu.runOnce(), 'in', 0xcfc, 2);
  exit.data.set(bytesLE(0x1357, 2));
  exit = expectIo(vcpu.runOnce(), 'out', 0xcfc, 2);
  assert.deepEqual([...exit.data], bytesLE(0x1357, 2));

  exit = expectIo(vcpu.runOnce(), 'in', 0xcfc, 1);
  exit.data[0] = 0x40;
  exit = expectIo(vcpu.runOnce(), 'out', 0xcfc, 1);
  assert.deepEqual([...exit.data], [0x42]);

  assert.equal(vcpu.runOnce().reason, 'hlt');
  const sregs = vcpu.getSregs();
  assert.equal(sregs.cs.l, 1, 'the guest ran in 64-bit mode');
  assert.equal(sregs.efer & 0x500n, 0x500n, 'EFER.LME and LMA are set');
});

test('long mode: MMIO writes and reads of 1, 4 and 8 bytes; the injected read value is seen', { timeout: 30_000 }, () => {
  const mmio = 0x10000000; // 256 MiB: identity-mapped by the guest, not backed by RAM
  const code = new GuestCode('long')
    .movEaxImm32(0x12345678).storeEax(mmio)
    .loadEax(mmio + 8)
    .movDxImm16(0x3f8).outDxEax() // echo the value read
    .storeAl(mmio + 0x10)
    .loadAl(mmio + 0x11).outDxAl()
    .movRaxImm64(0x0102030405060708n).storeRax(mmio + 0x18)
    .hlt();
  const { vcpu, memory } = boot('long', code);

  let exit = expectMmio(vcpu.runOnce(), true, BigInt(mmio), 4);
  assert.deepEqual([...exit.data], bytesLE(0x12345678, 4));

  exit = expectMmio(vcpu.runOnce(), false, BigInt(mmio + 8), 4);
  exit.data.set(bytesLE(0xcafef00d, 4));
  const io = expectIo(vcpu.runOnce(), 'out', 0x3f8, 4);
  assert.deepEqual([...io.data], bytesLE(0xcafef00d, 4));

  exit = expectMmio(vcpu.runOnce(), true, BigInt(mmio + 0x10), 1);
  assert.deepEqual([...exit.data], [0x0d]);

  exit = expectMmio(vcpu.runOnce(), false, BigInt(mmio + 0x11), 1);
  exit.data[0] = 0x99;
  const io2 = expectIo(vcpu.runOnce(), 'out', 0x3f8, 1);
  assert.deepEqual([...io2.data], [0x99]);

  exit = expectMmio(vcpu.runOnce(), true, BigInt(mmio + 0x18), 8);
  assert.deepEqual([...exit.data], [8, 7, 6, 5, 4, 3, 2, 1]);

  assert.equal(vcpu.runOnce().reason, 'hlt');
  assert.equal(memory.length, 2 * 1024 * 1024);
});

test('a RAM store by the guest lands in the host mapping without an exit', { timeout: 30_000 }, () => {
  const code = new GuestCode('long').movEaxImm32(0xa5a55a5a).storeEax(0x20000).hlt();
  const { vcpu, memory } = boot('long', code);
  assert.equal(vcpu.run().reason, 'hlt');
  assert.equal(new DataView(memory.buffer, memory.byteOffset).getUint32(0x20000, true), 0xa5a55a5a);
});

test('in-kernel irqchip: LAPIC state read/written, IRQ line and GSI routing accepted, immediate_exit returns at once', { timeout: 30_000 }, () => {
  const code = new GuestCode('long').movDxImm16(0x3f8).movAlImm8(1).outDxAl().hlt();
  const { vm, vcpu } = boot('long', code, true);
  const lapic = vcpu.getLapic();
  // APIC ID register (offset 0x20) holds the vCPU id in bits 24-31; version register at 0x30 is non-zero.
  const view = new DataView(lapic.buffer);
  assert.equal(view.getUint32(0x20, true) >>> 24, 0);
  assert.notEqual(view.getUint32(0x30, true) & 0xff, 0, 'LAPIC version register is populated');
  vcpu.setLapic(lapic);
  vm.irqLine(4, true);
  vm.irqLine(4, false);
  vm.setGsiRouting([
    { gsi: 0, type: 'irqchip', irqchip: 0, pin: 0 },
    { gsi: 24, type: 'msi', addressLo: 0xfee00000, addressHi: 0, data: 0x30 },
  ]);
  assert.equal(vcpu.getMpState(), KVM_MP_STATE.RUNNABLE);
  const exit = expectIo(vcpu.runOnce(), 'out', 0x3f8, 1);
  assert.deepEqual([...exit.data], [1]);
  // With the in-kernel LAPIC, HLT is handled in the kernel (the vCPU would sleep in KVM_RUN
  // with interrupts off), so use immediate_exit: KVM_RUN must return at once with EINTR.
  vcpu.immediateExit = true;
  assert.deepEqual(vcpu.runOnce(), { reason: 'intr' });
  vcpu.immediateExit = false;
});

test('errors name the ioctl and errno', () => {
  const micro = boot('long', new GuestCode('long').hlt());
  assert.throws(() => micro.vm.createVcpu(0), (err: unknown) => {
    assert.ok(err instanceof KvmError);
    assert.equal(err.message, 'KVM_CREATE_VCPU failed: EEXIST (File exists)');
    assert.equal(err.ioctl, 'KVM_CREATE_VCPU');
    assert.equal(err.code, 'EEXIST');
    return true;
  });
  assert.throws(() => micro.vcpu.getLapic(), /^KvmError: KVM_GET_LAPIC failed: (EINVAL|ENXIO) \(/, 'no LAPIC without an irqchip');
  assert.throws(() => Kvm.open('/nonexistent/kvm'), (err: unknown) => {
    assert.ok(err instanceof SyscallError);
    assert.equal(err.message, 'open failed: ENOENT (No such file or directory): /nonexistent/kvm');
    return true;
  });
  assert.throws(() => new GuestCode('real').storeEax(0x1000), /absolute addressing is only encoded for long mode/);
  assert.throws(() => new GuestCode('long').storeEax(0x80000000), /absolute address 0x80000000 must be below 2 GiB/);
  assert.throws(() => micro.vm.registerIoeventfd({ fd: 0, address: 0x1000n, length: 3 }), /ioeventfd at 0x1000: length 3/);
});

test('system queries: API version, capabilities, CPUID and MSR lists', () => {
  const kvm = Kvm.open();
  try {
    assert.equal(kvm.apiVersion(), 12);
    assert.equal(kvm.checkExtension('USER_MEMORY'), 1);
    assert.ok(kvm.checkExtension('NR_VCPUS') >= 1);
    assert.ok(kvm.vcpuMmapSize() >= 4096);
    const cpuid = kvm.supportedCpuid();
    const leaf0 = cpuid.find((e) => e.function === 0);
    assert.ok(leaf0, 'CPUID leaf 0 is offered');
    // Leaf 0's vendor string is 12 printable ASCII bytes in ebx, edx, ecx.
    const vendor = Buffer.alloc(12);
    vendor.writeUInt32LE(leaf0.ebx, 0);
    vendor.writeUInt32LE(leaf0.edx, 4);
    vendor.writeUInt32LE(leaf0.ecx, 8);
    assert.match(vendor.toString('latin1'), /^[\x20-\x7e]{12}$/);
    const msrs = kvm.msrIndexList();
    assert.ok(msrs.includes(0x10), 'IA32_TSC is in the MSR index list');
    const features = kvm.featureMsrIndexList();
    assert.equal(kvm.featureMsrs(features).length, features.length);
  } finally {
    kvm.close();
  }
});

test('vCPU state round-trips: regs, sregs, fpu, xcrs, msrs, cpuid, events, debug regs, clock', () => {
  const { kvm, vm, vcpu } = boot('long', new GuestCode('long').hlt());
  vcpu.setRegs({ ...vcpu.getRegs(), rbx: 0x1122334455667788n, r15: 0xfedcba9876543210n });
  const regs = vcpu.getRegs();
  assert.equal(regs.rbx, 0x1122334455667788n);
  assert.equal(regs.r15, 0xfedcba9876543210n);
  const sregs = vcpu.getSregs();
  sregs.cr2 = 0xabc000n;
  vcpu.setSregs(sregs);
  assert.equal(vcpu.getSregs().cr2, 0xabc000n);
  const fpu = vcpu.getFpu();
  fpu.xmm[3] = Array.from({ length: 16 }, (_, i) => i + 1);
  vcpu.setFpu(fpu);
  assert.deepEqual(vcpu.getFpu().xmm[3], Array.from({ length: 16 }, (_, i) => i + 1));
  const xsave = vcpu.getXsave();
  vcpu.setXsave(xsave);
  assert.equal(xsave.length, 4096);
  assert.deepEqual(vcpu.getXcrs()[0]?.xcr, 0);
  vcpu.setXcrs(vcpu.getXcrs());
  const supported = kvm.supportedCpuid();
  vcpu.setCpuid2(supported);
  assert.equal(vcpu.getCpuid2().length, supported.length);
  assert.equal(vcpu.setMsrs([{ index: 0x174, data: 0x10n }]), 1); // IA32_SYSENTER_CS
  assert.deepEqual(vcpu.getMsrs([0x174]), [{ index: 0x174, data: 0x10n }]);
  vcpu.setVcpuEvents(vcpu.getVcpuEvents());
  vcpu.setDebugRegs({ ...vcpu.getDebugRegs(), db: [0x1000n, 0x2000n, 0n, 0n] });
  assert.deepEqual(vcpu.getDebugRegs().db, [0x1000n, 0x2000n, 0n, 0n]);
  vcpu.setMpState(KVM_MP_STATE.RUNNABLE);
  assert.ok(vcpu.getTscKhz() > 0);
  const clock = vm.getClock();
  vm.setClock(clock.clock + 1_000_000_000n);
  assert.ok(vm.getClock().clock >= clock.clock + 1_000_000_000n);
});
