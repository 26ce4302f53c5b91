import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { KernelLoadError, loadLinux, parseSetupHeader, placeInitrd } from '../../../src/arch/x86/linux-loader.js';
import { e820Map, CMDLINE_START, ZERO_PAGE_START, PML4_START } from '../../../src/arch/x86/layout.js';
import { BOOT_CS_SELECTOR, BOOT_DS_SELECTOR } from '../../../src/arch/x86/boot-state.js';
import { debianKernelOrSkip, extractVmlinux } from './debian-kernel.js';

const MiB = 1 << 20;

/** A minimal bzImage: setup sectors, a header, and `payload` as the protected-mode kernel. */
function syntheticBzImage(opts: { version?: number; xloadflags?: number; cmdlineSize?: number; initSize?: number;
  initrdAddrMax?: number; payload?: Uint8Array } = {}): Uint8Array {
  const setupSects = 1;
  const payload = opts.payload ?? new Uint8Array(4096).map((_, i) => (i * 7) & 0xff);
  const img = new Uint8Array((setupSects + 1) * 512 + payload.length);
  const dv = new DataView(img.buffer);
  img[0x1f1] = setupSects;
  dv.setUint16(0x1fe, 0xaa55, true);
  img[0x200] = 0xeb;
  img[0x201] = 0x6a; // header ends at 0x26c
  dv.setUint32(0x202, 0x53726448, true);
  dv.setUint16(0x206, opts.version ?? 0x020f, true);
  img[0x211] = 0x01; // LOADED_HIGH
  dv.setUint32(0x214, 0x100000, true);
  dv.setUint32(0x22c, opts.initrdAddrMax ?? 0x7fffffff, true);
  dv.setUint32(0x230, 0x200000, true);
  img[0x234] = 1;
  dv.setUint16(0x236, opts.xloadflags ?? 0x3, true);
  dv.setUint32(0x238, opts.cmdlineSize ?? 2047, true);
  dv.setBigUint64(0x258, 0x1000000n, true);
  dv.setUint32(0x260, opts.initSize ?? 0x400000, true);
  img.set(payload, (setupSects + 1) * 512);
  return img;
}

/** A minimal ELF64 vmlinux with one PT_LOAD segment (code + bss) at physical `paddr`. */
function syntheticElf(paddr: bigint, code: Uint8Array, bss: number, entry = paddr): Uint8Array {
  const img = new Uint8Array(64 + 56 + code.length);
  const dv = new DataView(img.buffer);
  img.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(16, 2, true); // ET_EXEC
  dv.setUint16(18, 62, true); // x86-64
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, entry, true);
  dv.setBigUint64(32, 64n, true); // phoff
  dv.setUint16(52, 64, true);
  dv.setUint16(54, 56, true);
  dv.setUint16(56, 1, true);
  const ph = 64;
  dv.setUint32(ph, 1, true); // PT_LOAD
  dv.setBigUint64(ph + 8, 120n, true); // offset
  dv.setBigUint64(ph + 16, 0xffffffff80000000n + paddr, true);
  dv.setBigUint64(ph + 24, paddr, true);
  dv.setBigUint64(ph + 32, BigInt(code.length), true);
  dv.setBigUint64(ph + 40, BigInt(code.length + bss), true);
  img.set(code, 120);
  return img;
}

/** Walks the guest's 4-level page tables like the MMU does and returns the physical address. */
function translate(mem: RegionGuestMemory, cr3: bigint, va: bigint): bigint {
  const pml4e = mem.readU64(cr3 + ((va >> 39n) & 511n) * 8n);
  assert.ok(pml4e & 1n, `PML4 entry for ${va.toString(16)} not present`);
  const pdpte = mem.readU64((pml4e & 0xffffffffff000n) + ((va >> 30n) & 511n) * 8n);
  assert.ok(pdpte & 1n);
  const pde = mem.readU64((pdpte & 0xffffffffff000n) + ((va >> 21n) & 511n) * 8n);
  assert.ok(pde & 1n);
  assert.ok(pde & 0x80n, 'expected a 2 MiB page');
  assert.ok(pml4e & pdpte & pde & 2n, 'writable at every level');
  return (pde & 0xfffffffe00000n) | (va & 0x1fffffn);
}

const decoder = new TextDecoder();

test('parses and loads the real Debian cloud bzImage', (t) => {
  const k = debianKernelOrSkip(t);
  if (!k) return;
  const kernel = k.bytes;
  const hdr = parseSetupHeader(kernel);
  assert.ok(hdr.version >= 0x0206);
  assert.ok(hdr.xloadflags & 1, 'Debian kernels are 64-bit');
  assert.ok(hdr.relocatable);
  assert.ok(hdr.initSize > BigInt(kernel.length), 'init_size covers the decompressed kernel');

  const memorySize = 512n << 20n;
  const mem = RegionGuestMemory.ofSize(Number(memorySize));
  const initrd = new Uint8Array(3 * MiB + 123).map((_, i) => (i * 13) & 0xff);
  const cmdline = 'console=ttyS0 reboot=k panic=1';
  const out = loadLinux(mem, { kernel, initrd, cmdline, memorySize, rsdpAddress: 0xe0000n });
  assert.equal(out.kind, 'bzImage');
  assert.equal(out.entry, 0x100200n);
  assert.equal(out.regs.rip, out.entry);
  assert.equal(out.regs.rsi, ZERO_PAGE_START);

  // The protected-mode kernel sits at 1 MiB, byte for byte.
  const setupSize = ((kernel[0x1f1] || 4) + 1) * 512;
  assert.deepEqual(mem.slice(0x100000n, 4096), kernel.subarray(setupSize, setupSize + 4096));
  const tail = kernel.length - setupSize;
  assert.deepEqual(mem.slice(0x100000n + BigInt(tail - 64), 64), kernel.subarray(kernel.length - 64));

  // boot_params carries the kernel's header plus the loader's fields.
  const bp = ZERO_PAGE_START;
  assert.equal(mem.readU32(bp + 0x202n), 0x53726448);
  assert.equal(mem.readU16(bp + 0x206n), hdr.version);
  assert.equal(mem.readU8(bp + 0x210n), 0xff);
  assert.equal(mem.readU32(bp + 0x228n), Number(CMDLINE_START));
  assert.equal(decoder.decode(mem.slice(CMDLINE_START, cmdline.length)), cmdline);
  assert.equal(mem.readU8(CMDLINE_START + BigInt(cmdline.length)), 0);
  assert.equal(mem.readU64(bp + 0x70n), 0xe0000n);

  // The initrd is page aligned, below initrd_addr_max and RAM end, above the kernel's footprint.
  const rdImage = BigInt(mem.readU32(bp + 0x218n));
  assert.equal(BigInt(mem.readU32(bp + 0x21cn)), BigInt(initrd.length));
  assert.equal(rdImage % 4096n, 0n);
  assert.ok(rdImage + BigInt(initrd.length) <= memorySize);
  assert.ok(rdImage >= hdr.prefAddress + hdr.initSize);
  assert.deepEqual(mem.slice(rdImage, initrd.length), initrd);

  // e820 in boot_params equals the layout's map.
  const map = e820Map(memorySize);
  assert.equal(mem.readU8(bp + 0x1e8n), map.length);
  map.forEach((e, i) => {
    const off = bp + 0x2d0n + BigInt(i * 20);
    assert.equal(mem.readU64(off), e.address);
    assert.equal(mem.readU64(off + 8n), e.size);
    assert.equal(mem.readU32(off + 16n), e.type);
  });
});

test('the boot CPU state is 64-bit long mode with identity paging and the protocol selectors', () => {
  const memorySize = 64n << 20n;
  const mem = RegionGuestMemory.ofSize(Number(memorySize));
  const out = loadLinux(mem, { kernel: syntheticBzImage(), cmdline: '', memorySize });
  const s = out.sregs;
  assert.equal(s.cr0 & 0x80000001n, 0x80000001n);
  assert.equal(s.cr4 & 0x20n, 0x20n);
  assert.equal(s.efer & 0x500n, 0x500n);
  assert.equal(s.cs.selector, BOOT_CS_SELECTOR);
  assert.equal(s.cs.l, 1);
  assert.equal(s.cs.db, 0);
  assert.equal(s.cs.present, 1);
  assert.equal(s.cs.type & 0x8, 0x8, 'code segment is executable');
  for (const seg of [s.ds, s.es, s.ss, s.fs, s.gs]) {
    assert.equal(seg.selector, BOOT_DS_SELECTOR);
    assert.equal(seg.type & 0x8, 0, 'data segment');
    assert.equal(seg.limit, 0xffffffff);
  }
  assert.equal(s.cr3, PML4_START);
  for (const va of [0n, 0x100200n, 0x7fff_f123n, 0xc000_0000n, 0xfee0_0000n, 0xffff_ffffn]) {
    assert.equal(translate(mem, s.cr3, va), va);
  }
  // The GDT in memory decodes to the code and data segments handed to KVM.
  const code = mem.readU64(s.gdt.base + 0x10n);
  assert.equal((code >> 53n) & 1n, 1n, 'L bit set in the code descriptor');
  assert.equal(s.gdt.limit, 5 * 8 - 1);
  assert.equal(out.regs.rflags & 2n, 2n);
  // The BIOS data area points at the EBDA and reports 639 KiB of base memory.
  assert.equal(mem.readU16(0x40en) << 4, 0x9fc00);
  assert.equal(mem.readU16(0x413n), 639);
});

test('loads a synthetic ELF vmlinux at its physical addresses and clears bss', () => {
  const mem = RegionGuestMemory.ofSize(32 * MiB);
  mem.slice(0x200000n + 16n, 4096).fill(0xaa); // stale bytes where bss goes
  const code = new Uint8Array([0xf4, 0xeb, 0xfd, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
  const out = loadLinux(mem, { kernel: syntheticElf(0x200000n, code, 4096), cmdline: 'quiet', memorySize: 32n << 20n });
  assert.equal(out.kind, 'elf');
  assert.equal(out.entry, 0x200000n);
  assert.deepEqual(mem.slice(0x200000n, code.length), code);
  assert.ok(mem.slice(0x200000n + 16n, 4096).every((b) => b === 0));
  assert.equal(mem.readU16(ZERO_PAGE_START + 0x1fen), 0xaa55);
  assert.equal(mem.readU32(ZERO_PAGE_START + 0x202n), 0x53726448);
});

test('bad kernels get one-line errors naming the problem', () => {
  const mem = RegionGuestMemory.ofSize(64 * MiB);
  const memorySize = 64n << 20n;
  const load = (kernel: Uint8Array, extra: Partial<Parameters<typeof loadLinux>[1]> = {}) =>
    loadLinux(mem, { kernel, cmdline: '', memorySize, ...extra });
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(100), /truncated: 100 bytes/],
    [new Uint8Array(8192), /not a Linux kernel/],
    [syntheticBzImage({ version: 0x0204 }), /protocol 2\.04 is too old/],
    [syntheticBzImage({ xloadflags: 0 }), /no 64-bit entry point/],
    [syntheticBzImage().subarray(0, 1024), /truncated: 1024 bytes, but the setup code alone takes 1024/],
    [syntheticBzImage({ initSize: 128 * MiB }), /too small for the kernel/],
    [(() => { const b = syntheticBzImage(); b[0x1fe] = 0; return b; })(), /boot flag/],
    [(() => { const b = syntheticBzImage(); b.set([0x7f, 0x45, 0x4c, 0x46, 1, 1]); return b; })(), /not 64-bit/],
    [syntheticElf(0x200000n, new Uint8Array(16), 0).subarray(0, 100), /ELF kernel is truncated/],
    [syntheticElf(0x200000n, new Uint8Array(16), 0, 0x900000n), /entry point 0x900000 lies outside/],
    [syntheticElf(0x8000000n, new Uint8Array(16), 0), /does not fit in low RAM/],
  ];
  for (const [kernel, message] of cases) {
    assert.throws(() => load(kernel), (e: Error) => e instanceof KernelLoadError && message.test(e.message)
      && !e.message.includes('\n'), `expected ${message}`);
  }
  assert.throws(() => load(syntheticBzImage({ cmdlineSize: 10 }), { cmdline: 'console=ttyS0' }),
    /command line is 13 bytes, the kernel accepts at most 10/);
  assert.throws(() => load(syntheticBzImage(), { initrd: new Uint8Array(60 * MiB) }), /initrd of 62914560 bytes does not fit/);
});

test('the initrd respects initrd_addr_max and the end of low RAM', () => {
  const memorySize = 256n << 20n;
  const mem = RegionGuestMemory.ofSize(Number(memorySize));
  const out = loadLinux(mem, {
    kernel: syntheticBzImage({ initrdAddrMax: 0x3fffffff }), initrd: new Uint8Array(5000), cmdline: '', memorySize,
  });
  assert.equal(out.initrd!.address, memorySize - 8192n);
  const out2 = loadLinux(mem, {
    kernel: syntheticBzImage({ initrdAddrMax: 0x2000fff }), initrd: new Uint8Array(5000), cmdline: '', memorySize,
  });
  assert.equal(out2.initrd!.address, 0x2000000n - 4096n);
  assert.equal(placeInitrd(4096n, 0x1000000n, 0xffffffffn, 3n << 30n), (3n << 30n) - 4096n);
});

test('a guest above 3 GiB gets the initrd below initrd_addr_max and RAM above 4 GiB in e820', () => {
  // Only the parts of guest RAM the loader touches are backed: the low 64 MiB and the
  // 16 MiB just below 2 GiB where a kernel with initrd_addr_max 0x7fffffff gets its initrd.
  const mem = new RegionGuestMemory([
    { guestAddress: 0n, bytes: new Uint8Array(64 * MiB) },
    { guestAddress: (2n << 30n) - 16n * BigInt(MiB), bytes: new Uint8Array(16 * MiB) },
  ]);
  const memorySize = 6n << 30n;
  const initrd = new Uint8Array(MiB + 1).fill(0x5a);
  const out = loadLinux(mem, { kernel: syntheticBzImage(), initrd, cmdline: 'x', memorySize });
  assert.equal(out.initrd!.address, (2n << 30n) - BigInt(MiB) - 4096n, 'highest page-aligned spot below 2 GiB');
  assert.equal(mem.readU8(out.initrd!.address + BigInt(MiB)), 0x5a);
  const entries = mem.readU8(ZERO_PAGE_START + 0x1e8n);
  const last = ZERO_PAGE_START + 0x2d0n + BigInt((entries - 1) * 20);
  assert.equal(mem.readU64(last), 4n << 30n);
  assert.equal(mem.readU64(last + 8n), 3n << 30n);
  assert.equal(mem.readU32(last + 16n), 1);
});

test('loads the ELF vmlinux inside the Debian bzImage at its physical addresses', (t) => {
  const k = debianKernelOrSkip(t);
  if (!k) return;
  const vmlinux = extractVmlinux(k.bytes);
  const dv = new DataView(vmlinux.buffer, vmlinux.byteOffset, vmlinux.byteLength);
  assert.equal(dv.getUint32(0, false), 0x7f454c46, 'ELF magic');
  const memorySize = 128n << 20n;
  const mem = RegionGuestMemory.ofSize(Number(memorySize));
  const out = loadLinux(mem, { kernel: vmlinux, cmdline: 'console=ttyS0', memorySize });
  assert.equal(out.kind, 'elf');
  assert.equal(out.entry, dv.getBigUint64(24, true));
  assert.equal(out.kernelStart, 0x1000000n, 'CONFIG_PHYSICAL_START of the Debian kernel');
  assert.ok(out.pvhEntry !== undefined && out.pvhEntry >= out.kernelStart && out.pvhEntry < out.kernelEnd,
    'the PVH note points into the kernel');
  // Every PT_LOAD segment's file bytes are where its physical address says.
  const phoff = Number(dv.getBigUint64(32, true));
  let checked = 0;
  for (let i = 0; i < dv.getUint16(56, true); i++) {
    const ph = phoff + i * dv.getUint16(54, true);
    if (dv.getUint32(ph, true) !== 1) continue;
    const offset = Number(dv.getBigUint64(ph + 8, true));
    const paddr = dv.getBigUint64(ph + 24, true);
    const filesz = Number(dv.getBigUint64(ph + 32, true));
    const n = Math.min(filesz, 4096);
    assert.deepEqual(mem.slice(paddr, n), vmlinux.subarray(offset, offset + n));
    checked++;
  }
  assert.ok(checked >= 3, 'text, data and percpu segments at least');
});
