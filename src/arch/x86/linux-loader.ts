// Loads a Linux kernel (bzImage or ELF vmlinux) and its initrd into guest memory, fills the
// boot_params "zero page" and returns the 64-bit boot CPU state, following the x86 Linux
// boot protocol (64-bit entry: paging on, identity-mapped, RSI = boot_params).
import { GuestMemory } from '../../memory/guest-memory.js';
import { BootRegs, BootSregs, bootRegs, setupLongMode } from './boot-state.js';
import { randomSlot, relocationStub, virtualSlots } from './kaslr.js';
import {
  BDA_BASE_MEMORY_KB, BDA_EBDA_SEGMENT, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, E820Entry, KERNEL_LOAD_ADDRESS, ZERO_PAGE_START, e820Map, lowRamEnd,
} from './layout.js';
import { u16, u32, u64 } from './le-bytes.js';

export interface LoadLinuxOptions {
  kernel: Uint8Array;
  initrd?: Uint8Array;
  cmdline: string;
  memorySize: bigint;
  /** Guest address of the ACPI RSDP; passed in boot_params so Linux need not scan for it. */
  rsdpAddress?: bigint;
  /**
   * The bzImage's payload already unpacked (kernel-payload.ts): the ELF kernel and its
   * relocation table. The kernel is then placed and randomized here, and entered at its own
   * 64-bit entry, instead of by its decompressor in the guest.
   */
  unpackedKernel?: Uint8Array | KernelImage;
  /** Picks the kernel's KASLR slot, 0 <= slot < slots (randomSlot, from /dev/urandom, unless a test fixes it). */
  kaslrSlot?: (slots: number) => number;
}

export interface LoadedLinux {
  /** Guest-physical address where the boot vCPU starts: the 64-bit entry point, or the KASLR relocation stub that jumps there. */
  entry: bigint;
  /** Guest-physical address of boot_params (also in regs.rsi). */
  bootParams: bigint;
  regs: BootRegs;
  sregs: BootSregs;
  kind: 'bzImage' | 'elf';
  /** Where the kernel landed: [start, end) of the loaded image. */
  kernelStart: bigint;
  kernelEnd: bigint;
  /** Where the initrd landed, if any. */
  initrd?: { address: bigint; size: bigint };
  /**
   * For ELF kernels built with CONFIG_PVH: the 32-bit PVH entry point from the
   * XEN_ELFNOTE_PHYS32_ENTRY note (informational; this loader boots the 64-bit entry).
   */
  pvhEntry?: bigint;
  /** For a bzImage unpacked by the loader: how far KASLR moved the kernel's virtual base (0 with nokaslr). */
  kaslrOffset?: bigint;
}

/**
 * The bytes of an ELF kernel, in memory or in a file. A file's segments are read straight
 * into guest memory: no view of the whole file is made (an external buffer of 50 MB costs V8
 * a garbage collection, and mapping it costs a page fault per page).
 */
export interface KernelImage {
  readonly length: number;
  /** `length` bytes from `offset` (headers, notes, a relocation table: small reads). */
  read(offset: number, length: number): Uint8Array;
  /** Fills `into` with the bytes from `offset` on. */
  copyTo(into: Uint8Array, offset: number): void;
}

/** A KernelImage over bytes in memory. */
export function kernelImageOf(bytes: Uint8Array): KernelImage {
  return {
    length: bytes.length,
    read: (offset, length) => bytes.subarray(offset, offset + length),
    copyTo: (into, offset) => into.set(bytes.subarray(offset, offset + into.length)),
  };
}

/** A kernel or initrd the loader cannot use; the message names the problem in one line. */
export class KernelLoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KernelLoadError';
  }
}

// ---- boot_params (zero page) offsets, from the boot protocol's zero-page layout ----------
const BP_ACPI_RSDP_ADDR = 0x070;
const BP_EXT_RAMDISK_IMAGE = 0x0c0;
const BP_EXT_RAMDISK_SIZE = 0x0c4;
const BP_EXT_CMD_LINE_PTR = 0x0c8;
const BP_E820_ENTRIES = 0x1e8;
const BP_SETUP_HEADER = 0x1f1;
const BP_E820_TABLE = 0x2d0;
const BP_E820_MAX_ENTRIES = 128;
const BOOT_PARAMS_SIZE = 4096;

// ---- setup header offsets (relative to the start of the bzImage / boot_params) ----------
const HDR_SETUP_SECTS = 0x1f1;
const HDR_VID_MODE = 0x1fa;
const HDR_BOOT_FLAG = 0x1fe;
const HDR_JUMP = 0x200;
const HDR_MAGIC = 0x202;
const HDR_VERSION = 0x206;
const HDR_TYPE_OF_LOADER = 0x210;
const HDR_LOADFLAGS = 0x211;
const HDR_CODE32_START = 0x214;
const HDR_RAMDISK_IMAGE = 0x218;
const HDR_RAMDISK_SIZE = 0x21c;
const HDR_CMD_LINE_PTR = 0x228;
const HDR_INITRD_ADDR_MAX = 0x22c;
const HDR_KERNEL_ALIGNMENT = 0x230;
const HDR_RELOCATABLE = 0x234;
const HDR_XLOADFLAGS = 0x236;
const HDR_CMDLINE_SIZE = 0x238;
const HDR_PREF_ADDRESS = 0x258;
const HDR_INIT_SIZE = 0x260;

const BOOT_FLAG_MAGIC = 0xaa55;
const HDRS_MAGIC = 0x53726448; // "HdrS" little-endian
const LOADED_HIGH = 0x01;
/** loadflags: the kernel's virtual base was randomized (the kernel then randomizes its memory layout too). */
const KASLR_FLAG = 0x02;
const XLF_KERNEL_64 = 0x01;
/** Boot protocol 2.06 added cmdline_size; everything this loader relies on is there. */
const MIN_PROTOCOL = 0x0206;
const TYPE_OF_LOADER_UNDEFINED = 0xff;
const VID_MODE_NORMAL = 0xffff;
/** Offset of the 64-bit entry point from the start of the protected-mode kernel. */
const STARTUP_64_OFFSET = 0x200n;
/** initrd_addr_max assumed when a kernel does not say (protocol < 2.03 and ELF kernels). */
const DEFAULT_INITRD_ADDR_MAX = 0x37ffffffn;
const PAGE = 4096n;

/** The fields of a bzImage setup header this loader uses. */
export interface SetupHeader {
  setupSects: number;
  version: number;
  loadflags: number;
  xloadflags: number;
  code32Start: number;
  initrdAddrMax: bigint;
  kernelAlignment: number;
  relocatable: boolean;
  cmdlineSize: number;
  prefAddress: bigint;
  initSize: bigint;
  /** Bytes of the header (from 0x1f1) that boot_params must carry. */
  headerLength: number;
}

function hex(v: bigint | number): string {
  return `0x${v.toString(16)}`;
}

/** Whether the bytes start like a bzImage (boot sector signature plus "HdrS"). */
export function isBzImage(kernel: Uint8Array): boolean {
  return kernel.length >= HDR_MAGIC + 4 && u32(kernel, HDR_MAGIC) === HDRS_MAGIC;
}

/** Parses and validates a bzImage's setup header. */
export function parseSetupHeader(kernel: Uint8Array): SetupHeader {
  if (kernel.length < 0x270) {
    throw new KernelLoadError(`kernel image is truncated: ${kernel.length} bytes, too short for a setup header`);
  }
  if (u32(kernel, HDR_MAGIC) !== HDRS_MAGIC) {
    throw new KernelLoadError(`not a bzImage: setup header magic is ${hex(u32(kernel, HDR_MAGIC))}, expected "HdrS"`);
  }
  if (u16(kernel, HDR_BOOT_FLAG) !== BOOT_FLAG_MAGIC) {
    throw new KernelLoadError(`not a bzImage: boot flag is ${hex(u16(kernel, HDR_BOOT_FLAG))}, expected 0xaa55`);
  }
  const version = u16(kernel, HDR_VERSION);
  if (version < MIN_PROTOCOL) {
    throw new KernelLoadError(
      `kernel boot protocol ${version >> 8}.${(version & 0xff).toString().padStart(2, '0')} is too old: 2.06 or newer is needed`);
  }
  const loadflags = kernel[HDR_LOADFLAGS]!;
  if (!(loadflags & LOADED_HIGH)) {
    throw new KernelLoadError('kernel is a zImage (LOADED_HIGH is clear): only bzImage kernels can be loaded');
  }
  const xloadflags = version >= 0x020c ? u16(kernel, HDR_XLOADFLAGS) : 0;
  if (!(xloadflags & XLF_KERNEL_64)) {
    throw new KernelLoadError('kernel has no 64-bit entry point (XLF_KERNEL_64 is clear in xloadflags)');
  }
  const setupSects = kernel[HDR_SETUP_SECTS]! === 0 ? 4 : kernel[HDR_SETUP_SECTS]!;
  const headerLength = HDR_JUMP + 2 + kernel[HDR_JUMP + 1]! - BP_SETUP_HEADER;
  if (HDR_JUMP + 2 + kernel[HDR_JUMP + 1]! > kernel.length || headerLength > BP_E820_TABLE - BP_SETUP_HEADER) {
    throw new KernelLoadError(`kernel setup header length ${headerLength} is corrupt`);
  }
  const setupSize = (setupSects + 1) * 512;
  if (kernel.length <= setupSize) {
    throw new KernelLoadError(
      `kernel image is truncated: ${kernel.length} bytes, but the setup code alone takes ${setupSize}`);
  }
  const kernelAlignment = u32(kernel, HDR_KERNEL_ALIGNMENT);
  if (kernelAlignment !== 0 && (kernelAlignment & (kernelAlignment - 1)) !== 0) {
    throw new KernelLoadError(`kernel_alignment ${hex(kernelAlignment)} is not a power of two`);
  }
  return {
    setupSects,
    version,
    loadflags,
    xloadflags,
    code32Start: u32(kernel, HDR_CODE32_START),
    initrdAddrMax: BigInt(u32(kernel, HDR_INITRD_ADDR_MAX)),
    kernelAlignment,
    relocatable: kernel[HDR_RELOCATABLE]! !== 0,
    cmdlineSize: u32(kernel, HDR_CMDLINE_SIZE),
    prefAddress: u64(kernel, HDR_PREF_ADDRESS),
    initSize: BigInt(u32(kernel, HDR_INIT_SIZE)),
    headerLength,
  };
}

interface PlacedKernel {
  kind: 'bzImage' | 'elf';
  entry: bigint;
  start: bigint;
  /** End of the memory the kernel needs while booting (image or init_size, whichever is larger). */
  end: bigint;
  cmdlineSize: number;
  initrdAddrMax: bigint;
  /** The setup header to copy into boot_params, or undefined for ELF kernels. */
  header?: Uint8Array;
  headerFields?: SetupHeader;
  pvhEntry?: bigint;
  /** ELF kernels: where the ELF file's last structure ends (a relocation table may follow). */
  fileEnd?: number;
  /** Set when the loader randomized the kernel's virtual base (KASLR). */
  kaslrOffset?: bigint;
}

function loadBzImage(mem: GuestMemory, kernel: Uint8Array, lowEnd: bigint): PlacedKernel {
  const hdr = parseSetupHeader(kernel);
  const setupSize = (hdr.setupSects + 1) * 512;
  const payload = kernel.subarray(setupSize);
  // Every common loader puts the protected-mode kernel at 1 MiB; a relocatable kernel then
  // moves itself to an aligned address (at least pref_address) before decompressing.
  const start = KERNEL_LOAD_ADDRESS;
  const end = bootFootprintEnd(hdr, start + BigInt(payload.length), lowEnd);
  mem.write(start, payload);
  return {
    kind: 'bzImage',
    entry: start + STARTUP_64_OFFSET,
    start,
    end,
    cmdlineSize: hdr.cmdlineSize,
    initrdAddrMax: hdr.initrdAddrMax,
    header: kernel.subarray(BP_SETUP_HEADER, BP_SETUP_HEADER + hdr.headerLength),
    headerFields: hdr,
  };
}

/**
 * Where the memory a bzImage kernel needs while it boots ends: its image, or init_size bytes
 * from the address it runs at (at least pref_address), whichever reaches further.
 */
function bootFootprintEnd(hdr: SetupHeader, imageEnd: bigint, lowEnd: bigint): bigint {
  const runAddress = hdr.prefAddress > KERNEL_LOAD_ADDRESS ? hdr.prefAddress : KERNEL_LOAD_ADDRESS;
  const bootEnd = runAddress + hdr.initSize;
  const end = bootEnd > imageEnd ? bootEnd : imageEnd;
  if (end > lowEnd) {
    throw new KernelLoadError(
      `guest memory is too small for the kernel: it needs RAM up to ${hex(end)}, low RAM ends at ${hex(lowEnd)}`);
  }
  return end;
}

/**
 * A bzImage whose payload the VMM unpacked: its ELF kernel goes where the ELF asks (the
 * decompressor's default, pref_address), and the guest starts at the kernel's own 64-bit
 * entry with the bzImage's setup header in boot_params. Unless the command line says
 * nokaslr, the kernel's virtual base is randomized first: the guest starts at a stub that
 * applies the relocation table after the ELF image (kaslr.ts), then enters the kernel.
 */
function loadUnpackedBzImage(
  mem: GuestMemory, kernel: Uint8Array, unpacked: KernelImage, lowEnd: bigint, cmdline: string, pickSlot: (slots: number) => number,
): PlacedKernel {
  const hdr = parseSetupHeader(kernel);
  const elf = loadElf(mem, unpacked, lowEnd);
  const end = bootFootprintEnd(hdr, elf.end, lowEnd);
  const tableStart = elf.fileEnd!;
  // Three zero terminators at least: a kernel built without KASLR has no table at all.
  const hasTable = unpacked.length - tableStart >= 12;
  let kaslrOffset: bigint | undefined;
  let entry = elf.entry;
  if (hdr.relocatable && hasTable && !/(^|\s)nokaslr(\s|$)/.test(cmdline)) {
    // The decompressor's choice: any aligned base from the link address up to
    // KERNEL_IMAGE_SIZE that leaves room for the unpacked image, uniformly.
    const alignment = BigInt(hdr.kernelAlignment || 0x200000);
    const imageSize = BigInt(unpacked.length) > elf.end - elf.start ? BigInt(unpacked.length) : elf.end - elf.start;
    kaslrOffset = BigInt(pickSlot(virtualSlots(elf.start, imageSize, alignment))) * alignment;
    if (kaslrOffset > 0n) {
      // The table and the code that applies it go in the boot footprint above the image,
      // memory the kernel takes back once it runs.
      const tableLength = unpacked.length - tableStart;
      const tableAt = (elf.end + PAGE - 1n) & ~(PAGE - 1n);
      const stubAt = (tableAt + BigInt(tableLength) + 15n) & ~15n;
      const stub = relocationStub({ tableEnd: tableAt + BigInt(tableLength), delta: kaslrOffset, kernelEntry: elf.entry });
      if (stubAt + BigInt(stub.length) > end) {
        throw new KernelLoadError(`no room for the kernel's ${tableLength}-byte relocation table below ${hex(end)} (set kernelCache to false)`);
      }
      unpacked.copyTo(mem.slice(tableAt, tableLength), tableStart);
      mem.write(stubAt, stub);
      entry = stubAt;
    }
  }
  return {
    kind: 'bzImage',
    entry,
    start: elf.start,
    end,
    cmdlineSize: hdr.cmdlineSize,
    initrdAddrMax: hdr.initrdAddrMax,
    header: kernel.subarray(BP_SETUP_HEADER, BP_SETUP_HEADER + hdr.headerLength),
    headerFields: hdr,
    ...(kaslrOffset !== undefined ? { kaslrOffset } : {}),
  };
}

// ---- ELF ---------------------------------------------------------------------------------
const ELF_MAGIC = 0x464c457f; // "\x7fELF"
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const EM_X86_64 = 62;
const PT_LOAD = 1;
const PT_NOTE = 4;
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** The PVH entry point from a PT_NOTE segment's "Xen" notes, if present. */
function findPvhEntry(kernel: Uint8Array, offset: number, size: number): bigint | undefined {
  let off = offset;
  const end = offset + size;
  while (off + 12 <= end) {
    const namesz = u32(kernel, off);
    const descsz = u32(kernel, off + 4);
    const type = u32(kernel, off + 8);
    const nameStart = off + 12;
    const descStart = nameStart + ((namesz + 3) & ~3);
    const next = descStart + ((descsz + 3) & ~3);
    if (next > end || next <= off) return undefined; // malformed notes: ignore, they are optional
    const noteName = new TextDecoder().decode(kernel.subarray(nameStart, nameStart + Math.max(0, namesz - 1)));
    if (noteName === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4) {
      return descsz >= 8 ? u64(kernel, descStart) : BigInt(u32(kernel, descStart));
    }
    off = next;
  }
  return undefined;
}

/** One program header of an ELF kernel, as read. */
interface ProgramHeader {
  type: number;
  offset: bigint;
  paddr: bigint;
  filesz: bigint;
  memsz: bigint;
}

/** The ELF header's fields the loader uses and the program headers (checked by loadElf). */
function readElfHeaders(image: KernelImage): { entry: bigint; headersEnd: number; shEnd: number; program: ProgramHeader[] } {
  if (image.length < 64) throw new KernelLoadError(`ELF kernel is truncated: ${image.length} bytes, no ELF header`);
  const kernel = image.read(0, 64);
  if (kernel[4] !== ELFCLASS64) throw new KernelLoadError(`ELF kernel is not 64-bit (EI_CLASS ${kernel[4]})`);
  if (kernel[5] !== ELFDATA2LSB) throw new KernelLoadError(`ELF kernel is not little-endian (EI_DATA ${kernel[5]})`);
  const machine = u16(kernel, 18);
  if (machine !== EM_X86_64) throw new KernelLoadError(`ELF kernel is not x86-64 (e_machine ${machine})`);
  const phoff = Number(u64(kernel, 32));
  const phentsize = u16(kernel, 54);
  const phnum = u16(kernel, 56);
  if (phentsize < 56 || phoff + phnum * phentsize > image.length) {
    throw new KernelLoadError(`ELF kernel is truncated: program headers end beyond ${image.length} bytes`);
  }
  const headers = image.read(phoff, phnum * phentsize);
  const program: ProgramHeader[] = [];
  for (let ph = 0; ph < phnum * phentsize; ph += phentsize) {
    program.push({
      type: u32(headers, ph), offset: u64(headers, ph + 8), paddr: u64(headers, ph + 24),
      filesz: u64(headers, ph + 32), memsz: u64(headers, ph + 40),
    });
  }
  const shEnd = Number(u64(kernel, 40)) + u16(kernel, 58) * u16(kernel, 60);
  return { entry: u64(kernel, 24), headersEnd: phoff + phnum * phentsize, shEnd, program };
}

/**
 * Where an ELF kernel's file bytes go in guest memory: [file offset, guest address, length]
 * of each loadable segment, unchecked (loadLinux checks them). Lets a caller start reading
 * them before the rest of the machine is built.
 */
export function elfSegmentPlacements(image: KernelImage): { offset: number; paddr: bigint; length: number }[] {
  return readElfHeaders(image).program
    .filter((p) => p.type === PT_LOAD && p.filesz > 0n && p.offset + p.filesz <= BigInt(image.length))
    .map((p) => ({ offset: Number(p.offset), paddr: p.paddr, length: Number(p.filesz) }));
}

/** Loads the PT_LOAD segments of an ELF64 x86-64 vmlinux at their physical addresses. */
function loadElf(mem: GuestMemory, image: KernelImage, lowEnd: bigint): PlacedKernel {
  const { entry, headersEnd, shEnd, program } = readElfHeaders(image);
  let start = -1n;
  let end = 0n;
  // Where the file's last structure ends: program headers, segments, section headers.
  let fileEnd = shEnd <= image.length && shEnd > headersEnd ? shEnd : headersEnd;
  const segments: { paddr: bigint; offset: number; filesz: number; memsz: bigint }[] = [];
  let pvhEntry: bigint | undefined;
  for (const [i, { type, offset, paddr, filesz, memsz }] of program.entries()) {
    if (type === PT_NOTE && pvhEntry === undefined) {
      // A note segment's size is its file size.
      if (offset + filesz <= BigInt(image.length)) pvhEntry = findPvhEntry(image.read(Number(offset), Number(filesz)), 0, Number(filesz));
    }
    if (type !== PT_LOAD) continue;
    if (offset + filesz > BigInt(image.length)) {
      throw new KernelLoadError(
        `ELF kernel is truncated: segment ${i} needs file bytes up to ${hex(offset + filesz)}, file has ${hex(image.length)}`);
    }
    if (filesz > memsz) throw new KernelLoadError(`ELF kernel segment ${i} is corrupt: file size exceeds memory size`);
    if (paddr + memsz > lowEnd) {
      throw new KernelLoadError(
        `ELF kernel segment ${i} at ${hex(paddr)} (+${hex(memsz)}) does not fit in low RAM ending at ${hex(lowEnd)}`);
    }
    segments.push({ paddr, offset: Number(offset), filesz: Number(filesz), memsz });
    if (Number(offset + filesz) > fileEnd) fileEnd = Number(offset + filesz);
    if (start < 0n || paddr < start) start = paddr;
    if (paddr + memsz > end) end = paddr + memsz;
  }
  if (segments.length === 0) throw new KernelLoadError('ELF kernel has no loadable (PT_LOAD) segments');
  if (entry < start || entry >= end) {
    throw new KernelLoadError(`ELF kernel entry point ${hex(entry)} lies outside its loaded segments`);
  }
  for (const s of segments) {
    image.copyTo(mem.slice(s.paddr, s.filesz), s.offset);
    // Zero the .bss part explicitly: guest RAM may hold an earlier boot's bytes.
    if (s.memsz > BigInt(s.filesz)) mem.slice(s.paddr + BigInt(s.filesz), Number(s.memsz) - s.filesz).fill(0);
  }
  return {
    kind: 'elf',
    entry,
    start,
    end,
    cmdlineSize: CMDLINE_MAX_SIZE - 1,
    initrdAddrMax: DEFAULT_INITRD_ADDR_MAX,
    fileEnd,
    ...(pvhEntry !== undefined ? { pvhEntry } : {}),
  };
}

/**
 * Places the initrd as high as possible: below initrd_addr_max, below the end of low RAM,
 * page aligned, and above the kernel's boot-time footprint.
 */
export function placeInitrd(size: bigint, kernelEnd: bigint, initrdAddrMax: bigint, lowEnd: bigint): bigint {
  const limit = initrdAddrMax + 1n < lowEnd ? initrdAddrMax + 1n : lowEnd;
  const address = ((limit - size) / PAGE) * PAGE;
  if (size > limit || address < kernelEnd) {
    throw new KernelLoadError(
      `initrd of ${size} bytes does not fit between the kernel end ${hex(kernelEnd)} and ${hex(limit)}`);
  }
  return address;
}

function writeE820(bp: DataView, map: E820Entry[]): void {
  if (map.length > BP_E820_MAX_ENTRIES) throw new KernelLoadError(`e820 map has ${map.length} entries, at most 128 fit`);
  map.forEach((e, i) => {
    const off = BP_E820_TABLE + i * 20;
    bp.setBigUint64(off, e.address, true);
    bp.setBigUint64(off + 8, e.size, true);
    bp.setUint32(off + 16, e.type, true);
  });
  bp.setUint8(BP_E820_ENTRIES, map.length);
}

/** Loads kernel, initrd and command line, builds boot_params and returns the boot CPU state. */
export function loadLinux(mem: GuestMemory, opts: LoadLinuxOptions): LoadedLinux {
  const lowEnd = lowRamEnd(opts.memorySize);
  const kernel = opts.kernel;
  let placed: PlacedKernel;
  if (kernel.length >= 4 && u32(kernel, 0) === ELF_MAGIC) {
    placed = loadElf(mem, kernelImageOf(kernel), lowEnd);
  } else if (isBzImage(kernel) && opts.unpackedKernel) {
    const unpacked = opts.unpackedKernel instanceof Uint8Array ? kernelImageOf(opts.unpackedKernel) : opts.unpackedKernel;
    placed = loadUnpackedBzImage(mem, kernel, unpacked, lowEnd, opts.cmdline, opts.kaslrSlot ?? randomSlot);
  } else if (isBzImage(kernel)) {
    placed = loadBzImage(mem, kernel, lowEnd);
  } else if (kernel.length < HDR_MAGIC + 4) {
    throw new KernelLoadError(`kernel image is truncated: ${kernel.length} bytes, neither a bzImage nor an ELF file`);
  } else {
    throw new KernelLoadError('not a Linux kernel: no ELF magic and no bzImage "HdrS" setup header');
  }

  // Command line: NUL-terminated, within the kernel's cmdline_size and our reserved area.
  const cmdline = new TextEncoder().encode(opts.cmdline);
  const maxCmdline = Math.min(placed.cmdlineSize, CMDLINE_MAX_SIZE - 1);
  if (cmdline.length > maxCmdline) {
    throw new KernelLoadError(`kernel command line is ${cmdline.length} bytes, the kernel accepts at most ${maxCmdline}`);
  }
  if (cmdline.includes(0)) throw new KernelLoadError('kernel command line contains a NUL byte');
  mem.write(CMDLINE_START, cmdline);
  mem.writeU8(CMDLINE_START + BigInt(cmdline.length), 0);

  let initrd: { address: bigint; size: bigint } | undefined;
  if (opts.initrd && opts.initrd.length > 0) {
    const size = BigInt(opts.initrd.length);
    const address = placeInitrd(size, placed.end, placed.initrdAddrMax, lowEnd);
    mem.write(address, opts.initrd);
    initrd = { address, size };
  }

  // boot_params: zeroed, then the kernel's own setup header, then what the loader fills in.
  const bpBytes = new Uint8Array(BOOT_PARAMS_SIZE);
  const bp = new DataView(bpBytes.buffer);
  if (placed.header) {
    bpBytes.set(placed.header, BP_SETUP_HEADER);
  } else {
    // ELF kernels carry no setup header: write the fields the kernel checks.
    bp.setUint16(HDR_BOOT_FLAG, BOOT_FLAG_MAGIC, true);
    bp.setUint32(HDR_MAGIC, HDRS_MAGIC, true);
    bp.setUint32(HDR_KERNEL_ALIGNMENT, 0x1000000, true);
    bp.setUint32(HDR_CMDLINE_SIZE, placed.cmdlineSize, true);
  }
  bp.setUint16(HDR_VID_MODE, VID_MODE_NORMAL, true);
  bp.setUint8(HDR_TYPE_OF_LOADER, TYPE_OF_LOADER_UNDEFINED);
  bp.setUint8(HDR_LOADFLAGS, bp.getUint8(HDR_LOADFLAGS) | LOADED_HIGH | (placed.kaslrOffset !== undefined ? KASLR_FLAG : 0));
  bp.setUint32(HDR_CMD_LINE_PTR, Number(CMDLINE_START & 0xffffffffn), true);
  bp.setUint32(BP_EXT_CMD_LINE_PTR, Number(CMDLINE_START >> 32n), true);
  if (initrd) {
    bp.setUint32(HDR_RAMDISK_IMAGE, Number(initrd.address & 0xffffffffn), true);
    bp.setUint32(HDR_RAMDISK_SIZE, Number(initrd.size & 0xffffffffn), true);
    bp.setUint32(BP_EXT_RAMDISK_IMAGE, Number(initrd.address >> 32n), true);
    bp.setUint32(BP_EXT_RAMDISK_SIZE, Number(initrd.size >> 32n), true);
  }
  if (opts.rsdpAddress !== undefined) bp.setBigUint64(BP_ACPI_RSDP_ADDR, opts.rsdpAddress, true);
  writeE820(bp, e820Map(opts.memorySize));
  mem.write(ZERO_PAGE_START, bpBytes);

  // The BIOS data area: Linux finds the EBDA (and so the MP table) and the end of base
  // memory through these two words, as a PC BIOS would have left them.
  mem.writeU16(BDA_EBDA_SEGMENT, Number(EBDA_START >> 4n));
  mem.writeU16(BDA_BASE_MEMORY_KB, Number(EBDA_START >> 10n));

  const sregs = setupLongMode(mem);
  return {
    entry: placed.entry,
    bootParams: ZERO_PAGE_START,
    regs: bootRegs(placed.entry, ZERO_PAGE_START),
    sregs,
    kind: placed.kind,
    kernelStart: placed.start,
    kernelEnd: placed.end,
    ...(initrd ? { initrd } : {}),
    ...(placed.pvhEntry !== undefined ? { pvhEntry: placed.pvhEntry } : {}),
    ...(placed.kaslrOffset !== undefined ? { kaslrOffset: placed.kaslrOffset } : {}),
  };
}
