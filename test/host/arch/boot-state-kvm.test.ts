// The loader's boot CPU state, applied to a real KVM vCPU: a tiny ELF "kernel" reads the
// boot_params magic through RSI, reports it on an I/O port, touches an address just below
// 4 GiB (proving the identity map covers it) and halts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createMicroVm } from '../../../src/kvm/microguest.js';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { loadLinux } from '../../../src/arch/x86/linux-loader.js';
import { bootMsrs } from '../../../src/arch/x86/msrs.js';

function elfKernel(paddr: bigint, code: Uint8Array): Uint8Array {
  const img = new Uint8Array(120 + code.length);
  const dv = new DataView(img.buffer);
  img.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(16, 2, true);
  dv.setUint16(18, 62, true);
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, paddr, true);
  dv.setBigUint64(32, 64n, true);
  dv.setUint16(52, 64, true);
  dv.setUint16(54, 56, true);
  dv.setUint16(56, 1, true);
  dv.setUint32(64, 1, true);
  dv.setBigUint64(72, 120n, true);
  dv.setBigUint64(88, paddr, true);
  dv.setBigUint64(96, BigInt(code.length), true);
  dv.setBigUint64(104, BigInt(code.length), true);
  img.set(code, 120);
  return img;
}

test('a vCPU started from loadLinux state runs 64-bit code that finds boot_params', (t) => {
  if (!existsSync('/dev/kvm')) {
    t.skip('no /dev/kvm on this machine');
    return;
  }
  const code = Uint8Array.from([
    0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x202]   ; "HdrS"
    0x66, 0xba, 0x80, 0x00, //             mov dx, 0x80
    0xef, //                               out dx, eax
    0xa1, 0x00, 0xf0, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, // mov eax, [0xfffff000] (moffs64)
    0xf4, //                               hlt
  ]);
  const memorySize = 4 << 20;
  const vm = createMicroVm({ mode: 'long', code: new Uint8Array([0xf4]), memorySize });
  try {
    const mem = new RegionGuestMemory([{ guestAddress: 0n, bytes: vm.memory }]);
    const boot = loadLinux(mem, { kernel: elfKernel(0x200000n, code), cmdline: 'console=ttyS0', memorySize: BigInt(memorySize) });
    const current = vm.vcpu.getSregs();
    const pad = { padding: 0 };
    const s = boot.sregs;
    vm.vcpu.setSregs({
      ...current, ...s,
      cs: { ...s.cs, ...pad }, ds: { ...s.ds, ...pad }, es: { ...s.es, ...pad }, fs: { ...s.fs, ...pad },
      gs: { ...s.gs, ...pad }, ss: { ...s.ss, ...pad }, tr: { ...s.tr, ...pad }, ldt: { ...s.ldt, ...pad },
      gdt: { ...s.gdt, padding: [0, 0, 0] }, idt: { ...s.idt, padding: [0, 0, 0] },
    });
    vm.vcpu.setRegs(boot.regs);
    assert.equal(vm.vcpu.setMsrs(bootMsrs()), bootMsrs().length, 'KVM accepts every boot MSR');

    const io = vm.vcpu.runOnce();
    assert.equal(io.reason, 'io', JSON.stringify(io, (_, v) => (typeof v === 'bigint' ? v.toString(16) : v)));
    if (io.reason !== 'io') return;
    assert.equal(io.port, 0x80);
    assert.equal(io.size, 4);
    assert.equal(new TextDecoder().decode(io.data), 'HdrS');
    const mmio = vm.vcpu.runOnce();
    assert.equal(mmio.reason, 'mmio');
    if (mmio.reason !== 'mmio') return;
    assert.equal(mmio.address, 0xfffff000n);
    assert.equal(mmio.isWrite, false);
    assert.equal(vm.vcpu.runOnce().reason, 'hlt');
    const regs = vm.vcpu.getRegs();
    assert.equal(regs.rsi, boot.bootParams);
    const after = vm.vcpu.getSregs();
    assert.equal(after.efer & 0x400n, 0x400n, 'long mode active');
    assert.equal(after.cs.selector, 0x10);
  } finally {
    vm.close();
  }
});
