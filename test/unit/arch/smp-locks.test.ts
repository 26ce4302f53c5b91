// The loader's elision of a one-CPU kernel's lock prefixes (src/arch/x86/smp-locks.ts): on
// Debian's kernel and on small ELF files made here with the tables a kernel has, and broken ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { elideLockPrefixes, kernelElidesLocks, lockPrefixSites } from '../../../src/arch/x86/smp-locks.js';
import { kernelImageOf } from '../../../src/arch/x86/linux-loader.js';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { debianKernelOrSkip, extractVmlinux } from './debian-kernel.js';

const TEXT_VADDR = 0xffffffff81000000n;
const TEXT_PADDR = 0x1000000n;
const TEXT_OFFSET = 0x1000;
const TEXT_SIZE = 0x100;

/**
 * A minimal x86-64 ELF kernel: one PT_LOAD holding .text (then .smp_locks right after it, in
 * the same segment), the section headers and their names. `locks` are the table's 32-bit
 * self-relative entries, given here as the site's offset in .text (or null for a raw 0).
 */
function tinyKernel(text: Uint8Array, locks: (number | null)[], opts: { sectionNames?: string[]; truncateSections?: boolean } = {}): Uint8Array {
  const locksOffset = TEXT_OFFSET + TEXT_SIZE;
  const locksVaddr = TEXT_VADDR + BigInt(TEXT_SIZE);
  const names = opts.sectionNames ?? ['.text', '.smp_locks'];
  const strtab = Buffer.from(`\0${names.join('\0')}\0.shstrtab\0`);
  const strtabOffset = locksOffset + locks.length * 4;
  const shoff = (strtabOffset + strtab.length + 7) & ~7;
  const shnum = 4; // null, .text, .smp_locks, .shstrtab
  const file = new Uint8Array(shoff + shnum * 64);
  const dv = new DataView(file.buffer);
  file.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(16, 2, true); // ET_EXEC
  dv.setUint16(18, 62, true); // EM_X86_64
  dv.setBigUint64(24, TEXT_VADDR, true);
  dv.setBigUint64(32, 64n, true); // e_phoff
  dv.setBigUint64(40, BigInt(shoff), true);
  dv.setUint16(54, 56, true);
  dv.setUint16(56, 1, true);
  dv.setUint16(58, 64, true);
  dv.setUint16(60, opts.truncateSections ? 200 : shnum, true);
  dv.setUint16(62, 3, true);
  // The PT_LOAD: .text and .smp_locks.
  const segmentSize = BigInt(TEXT_SIZE + locks.length * 4);
  dv.setUint32(64, 1, true);
  dv.setBigUint64(64 + 8, BigInt(TEXT_OFFSET), true);
  dv.setBigUint64(64 + 16, TEXT_VADDR, true);
  dv.setBigUint64(64 + 24, TEXT_PADDR, true);
  dv.setBigUint64(64 + 32, segmentSize, true);
  dv.setBigUint64(64 + 40, segmentSize, true);
  file.set(text, TEXT_OFFSET);
  locks.forEach((site, i) => {
    const entryVaddr = locksVaddr + BigInt(i * 4);
    dv.setInt32(locksOffset + i * 4, site === null ? 0 : Number(TEXT_VADDR + BigInt(site) - entryVaddr), true);
  });
  file.set(strtab, strtabOffset);
  const section = (i: number, nameAt: number, addr: bigint, offset: number, size: number): void => {
    const at = shoff + i * 64;
    dv.setUint32(at, nameAt, true);
    dv.setUint32(at + 4, 1, true);
    dv.setBigUint64(at + 16, addr, true);
    dv.setBigUint64(at + 24, BigInt(offset), true);
    dv.setBigUint64(at + 32, BigInt(size), true);
  };
  section(1, 1, TEXT_VADDR, TEXT_OFFSET, TEXT_SIZE);
  section(2, 2 + names[0]!.length, locksVaddr, locksOffset, locks.length * 4);
  section(3, 3 + names[0]!.length + names[1]!.length, 0n, strtabOffset, strtab.length);
  return file;
}

/** .text with lock prefixes at 0x10, 0x20 and 0x30, and a DS prefix already at 0x40. */
function tinyText(): Uint8Array {
  const text = new Uint8Array(TEXT_SIZE).fill(0x90);
  for (const at of [0x10, 0x20, 0x30]) text[at] = 0xf0;
  text[0x40] = 0x3e;
  return text;
}

function placed(elf: Uint8Array): RegionGuestMemory {
  const mem = RegionGuestMemory.ofSize(32 << 20);
  mem.write(TEXT_PADDR, elf.subarray(TEXT_OFFSET, TEXT_OFFSET + TEXT_SIZE));
  return mem;
}

test('lock prefixes are found through .smp_locks and become DS prefixes; nothing else in the text changes', () => {
  const text = tinyText();
  // Out of .text (before it, into .smp_locks itself) and a padding zero are skipped, as the kernel skips them.
  const elf = tinyKernel(text, [0x10, null, 0x20, -0x10, TEXT_SIZE + 4, 0x30, 0x40]);
  const sites = lockPrefixSites(kernelImageOf(elf));
  assert.ok(sites);
  assert.equal(sites.textAddress, TEXT_PADDR);
  assert.equal(sites.textLength, TEXT_SIZE);
  assert.deepEqual([...sites.offsets], [0x10, 0x20, 0x30, 0x40]);
  const mem = placed(elf);
  assert.equal(elideLockPrefixes(mem, sites), 3, 'the DS prefix already at 0x40 is left as it is');
  const after = mem.slice(TEXT_PADDR, TEXT_SIZE);
  const expected = Uint8Array.from(text);
  for (const at of [0x10, 0x20, 0x30]) expected[at] = 0x3e;
  assert.deepEqual(after, expected);
  assert.equal(elideLockPrefixes(mem, sites), 0, 'a second pass finds nothing more, as the kernel would');
});

test('kernels whose tables are missing or broken get no elision: the kernel does its own pass', () => {
  const text = tinyText();
  assert.equal(lockPrefixSites(kernelImageOf(tinyKernel(text, [0x10], { sectionNames: ['.text', '.data'] }))), undefined, 'no .smp_locks (a kernel without SMP)');
  assert.equal(lockPrefixSites(kernelImageOf(tinyKernel(text, [0x10], { sectionNames: ['.txt', '.smp_locks'] }))), undefined, 'no .text');
  assert.equal(lockPrefixSites(kernelImageOf(tinyKernel(text, [0x10], { truncateSections: true }))), undefined, 'section headers beyond the file');
  const whole = tinyKernel(text, [0x10]);
  assert.equal(lockPrefixSites(kernelImageOf(whole.subarray(0, whole.length - 64))), undefined, 'file cut inside the section headers');
  const noStrings = Uint8Array.from(whole);
  new DataView(noStrings.buffer).setUint16(62, 9, true); // e_shstrndx past the table
  assert.equal(lockPrefixSites(kernelImageOf(noStrings)), undefined, 'no section names');
});

test('the kernel elides its lock prefixes on one CPU only, and not when told noreplace-smp', () => {
  assert.equal(kernelElidesLocks(1, 'console=ttyS0 quiet'), true);
  assert.equal(kernelElidesLocks(2, 'console=ttyS0'), false);
  assert.equal(kernelElidesLocks(1, 'console=ttyS0 noreplace-smp'), false);
  assert.equal(kernelElidesLocks(1, 'noreplace-smp'), false);
  assert.equal(kernelElidesLocks(1, 'xnoreplace-smp noreplace-smpy'), true);
});

test("Debian's kernel: every .smp_locks site in .text is a lock prefix, and elision changes exactly those bytes", (t) => {
  const k = debianKernelOrSkip(t);
  if (!k) return;
  const vmlinux = extractVmlinux(k.bytes);
  const sites = lockPrefixSites(kernelImageOf(vmlinux));
  assert.ok(sites);
  // Cross-checked with binutils: .text's address and size, and the table's entry count.
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-smp-locks-'));
  writeFileSync(join(dir, 'vmlinux'), vmlinux);
  const headers = execFileSync('readelf', ['-S', '-W', join(dir, 'vmlinux')], { encoding: 'utf8' });
  const row = (name: string): string[] => headers.split('\n').find((l) => l.includes(` ${name} `))!.replace(/^.*\]\s+/, '').split(/\s+/);
  const [, , textAddr, textOff, textSize] = row('.text');
  assert.equal(sites.textLength, parseInt(textSize!, 16));
  assert.equal(sites.textAddress, 0x1000000n, `.text at ${textAddr}, file offset ${textOff}`);
  const locksSize = parseInt(row('.smp_locks')[4]!, 16);
  assert.ok(sites.offsets.length > 1000 && sites.offsets.length <= locksSize / 4, `${sites.offsets.length} sites of ${locksSize / 4} entries`);
  const textStart = parseInt(textOff!, 16);
  const original = vmlinux.subarray(textStart, textStart + sites.textLength);
  for (const at of sites.offsets) assert.equal(original[at], 0xf0, `site ${at.toString(16)}`);

  const mem = RegionGuestMemory.ofSize(64 << 20);
  mem.write(sites.textAddress, original);
  assert.equal(elideLockPrefixes(mem, sites), new Set(sites.offsets).size);
  const after = mem.slice(sites.textAddress, sites.textLength);
  const isSite = new Set(sites.offsets);
  let differing = 0;
  for (let i = 0; i < after.length; i++) {
    if (after[i] === original[i]) continue;
    differing++;
    assert.ok(isSite.has(i) && after[i] === 0x3e, `byte ${i.toString(16)} changed to ${after[i]!.toString(16)}`);
  }
  assert.equal(differing, isSite.size);
});
