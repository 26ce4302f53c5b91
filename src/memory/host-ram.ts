// Host memory backing guest RAM.
//
// Default backing is a memfd mapped MAP_SHARED: the memory has a file descriptor, so worker
// threads (and later vhost-user back ends or a migration stream) can map the same pages by fd
// number. Choices and why:
// - THP: MADV_HUGEPAGE by default (fewer TLB misses for the guest; on shmem it takes effect
//   when /sys/kernel/mm/transparent_hugepage/shmem_enabled is "advise" or "always").
// - KSM: MADV_MERGEABLE by default. Linux only merges private anonymous pages, so on the
//   memfd backing the advice is accepted but has no effect; choose backing 'anonymous'
//   (MAP_PRIVATE, no fd) when page merging between guests matters more than sharing by fd.
// - Never mlocked: guest RAM stays swappable and overcommittable like any process memory.
// - Reservation: shmem and anonymous memory are allocated on first touch, so the kernel
//   cannot refuse an impossible size at mmap time. allocate() therefore checks the size
//   against MemTotal + SwapTotal first and fails with a clear message; `prealloc` goes further
//   and allocates every page up front (fallocate), failing now instead of at guest run time.
//   Anonymous mappings use MAP_NORESERVE so overcommit accounting does not reject large
//   sparse guests. hugetlbfs mappings are made WITHOUT MAP_NORESERVE: the kernel then
//   reserves the huge pages at mmap time, so a shortage fails up front instead of
//   killing the VMM with SIGBUS when the guest first touches the page.
import { constants as bufferConstants } from 'node:buffer';
import { readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import {
  close, fallocate, ftruncate, madvise, MADV_HUGEPAGE, MADV_MERGEABLE, MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE,
  MAP_SHARED, memfdCreate, MFD_HUGETLB, mmap, mmapAligned, munmap, nativeView, O_CREAT, O_EXCL, O_RDWR, open, PROT_READ,
  PROT_WRITE, SyscallError,
} from '../kvm/libc.js';
import type { MemoryRegion } from './region-memory.js';
import { RegionGuestMemory } from './region-memory.js';

const PAGE_SIZE = 4096;
/**
 * Where guest RAM is mapped: KVM maps a guest 2 MiB page with one huge page-table entry only
 * when its host address has the same offset within 2 MiB as its guest address, and a
 * transparent huge page needs an aligned 2 MiB of the mapping. The kernel places anonymous
 * and shmem mappings at any page, so RAM is placed on a 2 MiB boundary explicitly, as QEMU
 * does. Without it every 4 KiB page of the guest costs a nested page fault of its own.
 */
const HUGE_PAGE_ALIGNMENT = 2 * 1024 * 1024;

/** Largest byte array one JavaScript view can cover: bigger regions must be split. */
export const MAX_VIEW_BYTES = bufferConstants.MAX_LENGTH;

export interface HostRamOptions {
  /** Bytes; a multiple of the page size (4 KiB, or the huge page size with hugetlb). */
  size: number;
  /** Name of the memfd (visible in /proc/PID/maps and fd listings). */
  name?: string;
  /** 'memfd' (default): shareable by fd. 'anonymous': private, no fd, KSM-mergeable. */
  backing?: 'memfd' | 'anonymous';
  /** Advise transparent huge pages (default true). */
  transparentHugePages?: boolean;
  /** Advise KSM merging (default true; effective for 'anonymous' backing only). */
  mergeable?: boolean;
  /** Back with explicit huge pages: a file in a hugetlbfs mount, or an MFD_HUGETLB memfd. */
  hugetlb?: { mount?: string; pageSize?: number };
  /** Allocate every page now so a shortage fails here, not while the guest runs. */
  prealloc?: boolean;
}

/**
 * The size asked for is more than the host's RAM plus swap. Callers that word their own
 * message (the VMM's guest RAM) read the figures from it.
 */
export class HostMemoryLimitError extends Error {
  constructor(message: string, readonly requested: number, readonly limit: number) {
    super(message);
  }
}

/** Bytes of RAM plus swap the host has, from /proc/meminfo. */
export function hostMemoryLimit(): number {
  const info = readFileSync('/proc/meminfo', 'utf8');
  const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(info)?.[1] ?? 0);
  return (kib('MemTotal') + kib('SwapTotal')) * 1024;
}

/** Free huge pages of `pageSize` bytes, from sysfs. */
export function freeHugePages(pageSize: number): number {
  try {
    return Number(readFileSync(`/sys/kernel/mm/hugepages/hugepages-${pageSize / 1024}kB/free_hugepages`, 'utf8').trim());
  } catch {
    return 0;
  }
}

const MiB = 1024 * 1024;
const describe = (bytes: number): string => {
  if (bytes >= 1024 * MiB) return `${(bytes / (1024 * MiB)).toFixed(1)} GiB`;
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(1)} MiB`;
  return `${(bytes / 1024).toFixed(0)} KiB`;
};

export class HostRam {
  private closed = false;
  /** Advice the kernel refused (e.g. no THP or KSM support): recorded, not fatal. */
  readonly refusedAdvice: string[] = [];

  private constructor(
    /** The memfd or hugetlbfs file, or -1 for anonymous backing. */
    readonly fd: number,
    readonly size: number,
    /** Host virtual address of the mapping (for KVM_SET_USER_MEMORY_REGION). */
    readonly address: bigint,
    private readonly ownsFd: boolean,
  ) {}

  static allocate(options: HostRamOptions): HostRam {
    const { size } = options;
    const name = options.name ?? 'tsvirt-guest-ram';
    const hugePage = options.hugetlb ? options.hugetlb.pageSize ?? 2 * MiB : 0;
    const granule = hugePage || PAGE_SIZE;
    if (hugePage && options.backing === 'anonymous') {
      throw new Error(`guest RAM '${name}': hugetlb backing needs a file, not 'anonymous'`);
    }
    if (!Number.isSafeInteger(size) || size <= 0 || size % granule !== 0) {
      throw new Error(`guest RAM '${name}': size ${size} is not a positive multiple of ${granule} bytes`);
    }
    const limit = hostMemoryLimit();
    if (size > limit) {
      throw new HostMemoryLimitError(`guest RAM '${name}': ${describe(size)} exceeds this host's memory plus swap (${describe(limit)})`, size, limit);
    }
    if (hugePage) {
      const free = freeHugePages(hugePage);
      if (size / hugePage > free) {
        throw new Error(`guest RAM '${name}': needs ${size / hugePage} huge pages of ${describe(hugePage)}, `
          + `the host has ${free} free (see /sys/kernel/mm/hugepages)`);
      }
    }
    if (options.backing === 'anonymous') {
      const address = mmapAligned(size, HUGE_PAGE_ALIGNMENT, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
      const ram = new HostRam(-1, size, address, false);
      ram.advise(options);
      return ram;
    }
    const fd = hugePage ? openHugetlbFile(name, hugePage, options.hugetlb?.mount) : memfdCreate(name, 0);
    try {
      ftruncate(fd, size);
      if (options.prealloc) fallocate(fd, 0, 0, size);
      let address: bigint;
      try {
        address = hugePage ? mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd) : mmapAligned(size, HUGE_PAGE_ALIGNMENT, PROT_READ | PROT_WRITE, MAP_SHARED, fd);
      } catch (err) {
        if (hugePage && err instanceof SyscallError) {
          throw new Error(`guest RAM '${name}': the kernel could not reserve ${size / hugePage} huge pages (${err.message})`);
        }
        throw err;
      }
      const ram = new HostRam(fd, size, address, true);
      if (!hugePage) ram.advise(options);
      return ram;
    } catch (err) {
      close(fd);
      throw err;
    }
  }

  /**
   * Maps RAM another thread allocated, by its fd number (valid in every thread of the
   * process). The result does not own the fd: close() only unmaps this thread's mapping.
   */
  static mapFd(fd: number, size: number): HostRam {
    const address = mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd);
    return new HostRam(fd, size, address, false);
  }

  /** The whole mapping as bytes (at most MAX_VIEW_BYTES; use view() for larger RAM). */
  get bytes(): Uint8Array {
    return this.view(0, this.size);
  }

  /** `length` bytes of the mapping from `offset`, without copying. */
  view(offset: number, length: number): Uint8Array {
    this.checkOpen();
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new Error(`host RAM view [${offset}, +${length}) is outside the ${this.size}-byte mapping`);
    }
    if (length > MAX_VIEW_BYTES) {
      throw new Error(`host RAM view of ${describe(length)} exceeds the ${describe(MAX_VIEW_BYTES)} a byte array can hold: split the region`);
    }
    return new Uint8Array(nativeView(this.address + BigInt(offset), length));
  }

  /**
   * Guest memory over slices of this RAM, e.g. [{ guestAddress: 0n, offset: 0, size: low },
   * { guestAddress: 1n << 32n, offset: low, size: high }] to leave a hole for PCI below 4 GiB.
   */
  guestMemory(layout: readonly { guestAddress: bigint; offset: number; size: number }[]): RegionGuestMemory {
    return new RegionGuestMemory(this.regions(layout).map((r) => ({ guestAddress: r.guestAddress, bytes: r.bytes })));
  }

  /** The layout's regions with their host addresses (what KVM memory slots need). */
  regions(layout: readonly { guestAddress: bigint; offset: number; size: number }[]): HostRegion[] {
    return layout.map((l) => ({
      guestAddress: l.guestAddress,
      hostAddress: this.address + BigInt(l.offset),
      size: l.size,
      bytes: this.view(l.offset, l.size),
    }));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    munmap(this.address, this.size);
    if (this.ownsFd) close(this.fd);
  }

  private advise(options: HostRamOptions): void {
    const tryAdvice = (enabled: boolean | undefined, advice: number, label: string): void => {
      if (enabled === false) return;
      try {
        madvise(this.address, this.size, advice);
      } catch (err) {
        this.refusedAdvice.push(`${label}: ${(err as Error).message}`);
      }
    };
    tryAdvice(options.transparentHugePages, MADV_HUGEPAGE, 'MADV_HUGEPAGE');
    tryAdvice(options.mergeable, MADV_MERGEABLE, 'MADV_MERGEABLE');
  }

  private checkOpen(): void {
    if (this.closed) throw new Error('host RAM is closed');
  }
}

/** A slice of host RAM placed in the guest-physical address space. */
export interface HostRegion extends MemoryRegion {
  readonly hostAddress: bigint;
  readonly size: number;
}

const HUGE_PAGE_FLAGS: Record<number, number> = { [2 * MiB]: 21 << 26, [1024 * MiB]: 30 << 26 };

function openHugetlbFile(name: string, pageSize: number, mount?: string): number {
  if (mount === undefined) {
    const sizeFlag = HUGE_PAGE_FLAGS[pageSize];
    if (sizeFlag === undefined) throw new Error(`guest RAM '${name}': huge page size ${pageSize} is not 2 MiB or 1 GiB`);
    return memfdCreate(name, MFD_HUGETLB | sizeFlag);
  }
  // A private file in the mount: unlinked at once so it disappears with the last fd.
  const path = join(mount, `${name}-${process.pid}-${Date.now()}`);
  const fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600);
  unlinkSync(path);
  return fd;
}
