// Guest RAM: a memfd (or a file on a hugetlbfs mount) mapped shared into the VMM, split
// into the regions of the x86 memory map and registered with KVM as memory slots.
//
// A file descriptor rather than anonymous memory, so that any thread (and later a vhost-user
// backend or a migration helper) can map the same RAM by fd. The mapping is advised for
// transparent huge pages (fewer TLB misses, fewer EPT/NPT entries) and KSM (identical guest
// pages merged across VMs) unless switched off; it is never locked, so the host may swap it.
import { closeSync, openSync, readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { VmFd } from '../kvm/index.js';
import {
  close, fallocate, ftruncate, madvise, MADV_HUGEPAGE, MADV_MERGEABLE, MADV_NOHUGEPAGE, MAP_NORESERVE, MAP_SHARED,
  memfdCreate, mmap, munmap, nativeView, PROT_READ, PROT_WRITE,
} from '../kvm/libc.js';
import { guestMemoryRegions } from '../arch/x86/layout.js';
import { RegionGuestMemory } from '../memory/region-memory.js';
import { formatSize } from './size.js';

export interface GuestRamOptions {
  size: bigint;
  thp: boolean;
  ksm: boolean;
  /** Directory on a hugetlbfs mount; RAM then comes from the host's huge page pool. */
  hugetlbfsPath?: string;
}

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

export class GuestRamError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestRamError';
  }
}

/** Host RAM plus swap, in bytes, from /proc/meminfo. */
export function hostMemoryLimit(): bigint {
  const info = readFileSync('/proc/meminfo', 'utf8');
  const kib = (key: string): bigint => BigInt(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(info)?.[1] ?? '0');
  return (kib('MemTotal') + kib('SwapTotal')) * 1024n;
}

export class GuestRam {
  readonly memory: RegionGuestMemory;
  readonly regions: ReadonlyArray<{ guestAddress: bigint; size: bigint; hostAddress: bigint }>;
  private closed = false;

  private constructor(readonly fd: number, readonly size: bigint, private readonly hostAddress: bigint) {
    let offset = 0n;
    this.regions = guestMemoryRegions(size).map((r) => {
      const region = { guestAddress: r.guestAddress, size: r.size, hostAddress: hostAddress + offset };
      offset += r.size;
      return region;
    });
    this.memory = new RegionGuestMemory(this.regions.map((r) => ({
      guestAddress: r.guestAddress,
      bytes: new Uint8Array(nativeView(r.hostAddress, Number(r.size))),
    })));
  }

  /**
   * Allocate `size` bytes of guest RAM. Fails, before anything runs, when the host cannot
   * possibly provide that much (more than its RAM plus swap, or too few huge pages).
   */
  static allocate(opts: GuestRamOptions): GuestRam {
    const limit = hostMemoryLimit();
    if (opts.size > limit) {
      throw new GuestRamError(
        `guest memory ${formatSize(opts.size)} is more than this host can give (${formatSize(limit - (limit % (1024n * 1024n)))} of RAM and swap)`,
      );
    }
    const length = Number(opts.size);
    let fd: number;
    if (opts.hugetlbfsPath) {
      const path = join(opts.hugetlbfsPath, `tsvirt-ram-${process.pid}-${Date.now()}`);
      try {
        fd = openSync(path, 'w+', 0o600);
      } catch (err) {
        throw new GuestRamError(`hugetlbfs backend ${opts.hugetlbfsPath}: ${(err as Error).message}`);
      }
      // The file only has to live as long as the fd: unlink at once so nothing is left behind.
      unlinkSync(path);
      try {
        ftruncate(fd, length);
        // Reserve every huge page now: hugetlbfs would otherwise SIGBUS the VMM on first touch.
        fallocate(fd, 0, 0, length);
      } catch (err) {
        closeSync(fd);
        throw new GuestRamError(
          `hugetlbfs backend ${opts.hugetlbfsPath}: cannot reserve ${formatSize(opts.size)} of huge pages (${(err as Error).message}); see /proc/sys/vm/nr_hugepages`,
        );
      }
    } else {
      fd = memfdCreate('tsvirt-guest-ram', 0);
      ftruncate(fd, length);
    }
    let address: bigint;
    try {
      address = mmap(length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    } catch (err) {
      close(fd);
      throw new GuestRamError(`cannot map ${formatSize(opts.size)} of guest memory: ${(err as Error).message}`);
    }
    if (!opts.hugetlbfsPath) {
      // Advice is best effort: a kernel built without THP or KSM refuses it, and the guest
      // runs fine without.
      try { madvise(address, length, opts.thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE); } catch { /* no THP */ }
      if (opts.ksm) { try { madvise(address, length, MADV_MERGEABLE); } catch { /* no KSM */ } }
    }
    return new GuestRam(fd, opts.size, address);
  }

  /** Register every region as a KVM memory slot (slots 0, 1, ...). */
  registerWith(vm: VmFd): void {
    this.regions.forEach((r, slot) => vm.setUserMemoryRegion({
      slot, guestPhysAddr: r.guestAddress, memorySize: r.size, userspaceAddr: r.hostAddress,
    }));
  }

  /**
   * Zero all of RAM (machine reset) by punching the pages out of the file: they come back
   * as zero on use, and a reset never touches (allocates) RAM the guest had not used.
   */
  clear(): void {
    fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, Number(this.size));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    munmap(this.hostAddress, Number(this.size));
    close(this.fd);
  }
}
