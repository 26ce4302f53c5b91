// A one-CPU guest's lock prefixes, elided by the loader as the kernel itself would elide them.
//
// Linux built for SMP marks the LOCK prefix of every atomic instruction in its text: each
// LOCK_PREFIX adds a 32-bit self-relative pointer to it to the `.smp_locks` section. When
// the kernel boots with one present CPU (and no `noreplace-smp`), alternative_instructions()
// walks that table and turns each 0xf0 byte in [_text, _etext) into 0x3e, a DS segment
// override that changes nothing (alternatives_smp_unlock): one CPU needs no bus lock.
//
// It rewrites each byte through text_poke(), which maps the page in a temporary address
// space, switches CR3 to it and back and flushes the TLB entry: several privileged
// operations per byte. Natively that is microseconds. Under shadow paging (KVM nested
// without nested paging, as in the lab) each CR3 write, INVLPG and page-table write of the
// guest is a VM exit, and the 8 652 sites of Debian's 6.1 cloud kernel took 1.35 s of a
// 5.2 s boot, under QEMU as under tsvirt (measured with `noreplace-smp`, docs/design.md).
//
// When tsvirt places an unpacked kernel itself (kernel-cache.ts), it makes the same edits in
// guest RAM before the first instruction. The kernel's own pass then finds a DS prefix where
// it looks for 0xf0, and leaves each site alone: the text ends up byte for byte as the
// kernel would have made it. The sites are not relocated by KASLR (the table is relative,
// and a prefix byte is never part of a relocated field).
import { elfSegmentPlacements, KernelLoadError, type KernelImage } from './linux-loader.js';
import { u16, u32, u64 } from './le-bytes.js';
import type { GuestMemory } from '../../memory/guest-memory.js';

const LOCK_PREFIX = 0xf0;
const DS_PREFIX = 0x3e;
const SECTION_HEADER_SIZE = 64;
/** Section headers and names are small; a header claiming more is not a kernel's. */
const MAX_SECTION_TABLE = 1 << 20;
/** Debian's kernel has 36 KiB of .smp_locks; a table beyond this is not believed. */
const MAX_SMP_LOCKS = 4 << 20;

/** The lock prefixes the kernel would elide on one CPU: where its text is, and each site's offset in it. */
export interface LockPrefixSites {
  /** Guest-physical address of the kernel's `.text` (_text). */
  textAddress: bigint;
  /** Length of `.text` in bytes (_etext - _text). */
  textLength: number;
  /** Offsets into `.text` of the LOCK prefixes `.smp_locks` lists, in table order. */
  offsets: Uint32Array;
}

interface Section {
  name: string;
  addr: bigint;
  offset: bigint;
  size: bigint;
}

function sections(image: KernelImage): Section[] {
  const elf = image.read(0, 64);
  const shoff = Number(u64(elf, 40));
  const shentsize = u16(elf, 58);
  const shnum = u16(elf, 60);
  const shstrndx = u16(elf, 62);
  const tableLength = shnum * shentsize;
  if (shentsize < SECTION_HEADER_SIZE || shnum === 0 || shstrndx >= shnum || tableLength > MAX_SECTION_TABLE || shoff + tableLength > image.length) return [];
  const table = image.read(shoff, tableLength);
  const raw = Array.from({ length: shnum }, (_, i) => {
    const at = i * shentsize;
    return { nameAt: u32(table, at), addr: u64(table, at + 16), offset: u64(table, at + 24), size: u64(table, at + 32) };
  });
  const names = raw[shstrndx]!;
  if (names.size > BigInt(MAX_SECTION_TABLE) || names.offset + names.size > BigInt(image.length)) return [];
  const strings = image.read(Number(names.offset), Number(names.size));
  const decoder = new TextDecoder();
  const nameAt = (at: number): string => {
    if (at >= strings.length) return '';
    const end = strings.indexOf(0, at);
    return decoder.decode(strings.subarray(at, end < 0 ? strings.length : end));
  };
  return raw.map((s) => ({ name: nameAt(s.nameAt), addr: s.addr, offset: s.offset, size: s.size }));
}

/**
 * The LOCK prefixes of an ELF kernel's `.text` that `.smp_locks` lists, or undefined when
 * the kernel has no such table (a kernel built without SMP), or its sections are not what a
 * Linux kernel's are (then nothing is elided, and the kernel does its own pass).
 */
export function lockPrefixSites(image: KernelImage): LockPrefixSites | undefined {
  try {
    return sitesIn(image);
  } catch {
    return undefined; // an image the loader reads but whose tables do not add up: the kernel's own pass does it
  }
}

function sitesIn(image: KernelImage): LockPrefixSites | undefined {
  const all = sections(image);
  const text = all.find((s) => s.name === '.text');
  const locks = all.find((s) => s.name === '.smp_locks');
  if (!text || !locks || locks.size === 0n || locks.size > BigInt(MAX_SMP_LOCKS) || locks.offset + locks.size > BigInt(image.length)) return undefined;
  const textOffset = Number(text.offset);
  const textLength = Number(text.size);
  const segment = elfSegmentPlacements(image).find((s) => textOffset >= s.offset && textOffset + textLength <= s.offset + s.length);
  if (!segment) return undefined;
  const table = image.read(Number(locks.offset), Number(locks.size));
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const offsets: number[] = [];
  for (let at = 0; at + 4 <= table.length; at += 4) {
    const relative = view.getInt32(at, true);
    if (relative === 0) continue; // alignment padding: the kernel skips it too
    const site = locks.addr + BigInt(at + relative) - text.addr;
    if (site >= 0n && site < BigInt(textLength)) offsets.push(Number(site));
  }
  return { textAddress: segment.paddr + BigInt(textOffset - segment.offset), textLength, offsets: Uint32Array.from(offsets) };
}

/**
 * Whether the kernel, booted on `cpus` CPUs with `cmdline`, elides its lock prefixes itself:
 * alternative_instructions() does when one CPU is present, unless told `noreplace-smp`.
 */
export function kernelElidesLocks(cpus: number, cmdline: string): boolean {
  return cpus === 1 && !/(^|\s)noreplace-smp(\s|$)/.test(cmdline);
}

/**
 * Turns each listed LOCK prefix in guest memory into a DS prefix, as the kernel does on one
 * CPU; a site holding anything else is left alone, as the kernel leaves it. Returns how many
 * were changed.
 */
export function elideLockPrefixes(mem: GuestMemory, sites: LockPrefixSites): number {
  let text: Uint8Array;
  try {
    text = mem.slice(sites.textAddress, sites.textLength);
  } catch (err) {
    throw new KernelLoadError(`kernel text at ${sites.textAddress.toString(16)} is outside guest RAM: ${(err as Error).message}`);
  }
  let changed = 0;
  for (const at of sites.offsets) {
    if (text[at] === LOCK_PREFIX) {
      text[at] = DS_PREFIX;
      changed++;
    }
  }
  return changed;
}
