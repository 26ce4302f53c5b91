// Guest RAM: host memory (src/memory/host-ram.ts) split into the regions of the x86 memory
// map and registered with KVM as memory slots.
//
// Backing: private anonymous memory by default. In this VMM only the main thread touches
// guest RAM (devices, loaders); vCPU threads need their kvm_run page, not RAM, so nothing
// requires an fd, and private anonymous memory is what KSM can merge (it ignores shared
// memory). hugetlbfs backing is a file on that mount. The mapping is advised for transparent
// huge pages and KSM unless switched off, and never locked: the host may swap it.
import type { VmFd } from '../kvm/index.js';
import { fallocate, madvise, MADV_DONTNEED } from '../kvm/libc.js';
import { guestMemoryRegions } from '../arch/x86/layout.js';
import { HostMemoryLimitError, HostRam, type HostRegion } from '../memory/host-ram.js';
import { RegionGuestMemory } from '../memory/region-memory.js';
import { formatSize } from './size.js';

export interface GuestRamOptions {
  size: bigint;
  thp: boolean;
  ksm: boolean;
  /** Directory on a hugetlbfs mount; RAM then comes from the host's huge page pool. */
  hugetlbfsPath?: string;
}

export class GuestRamError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestRamError';
  }
}

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

export class GuestRam {
  readonly memory: RegionGuestMemory;
  readonly regions: readonly HostRegion[];
  private closed = false;

  private constructor(private readonly host: HostRam, readonly size: bigint) {
    let offset = 0;
    const layout = guestMemoryRegions(size).map((r) => {
      const l = { guestAddress: r.guestAddress, offset, size: Number(r.size) };
      offset += l.size;
      return l;
    });
    // One view of each region, shared by the slots and the memory: every view of guest RAM
    // counts as V8 external memory, and each 64 MiB more of it can start a garbage collection.
    this.regions = host.regions(layout);
    this.memory = new RegionGuestMemory(this.regions);
  }

  /**
   * Allocate `size` bytes of guest RAM. Fails, before anything runs, when the host cannot
   * possibly provide that much (more than its RAM plus swap, or too few huge pages: HostRam
   * checks both).
   */
  static allocate(opts: GuestRamOptions): GuestRam {
    try {
      const host = HostRam.allocate({
        size: Number(opts.size),
        name: 'tsvirt-guest-ram',
        transparentHugePages: opts.thp,
        mergeable: opts.ksm,
        ...(opts.hugetlbfsPath ? { hugetlb: { mount: opts.hugetlbfsPath } } : { backing: 'anonymous' as const }),
      });
      return new GuestRam(host, opts.size);
    } catch (err) {
      if (err instanceof HostMemoryLimitError) {
        const limit = BigInt(err.limit);
        throw new GuestRamError(
          `guest memory ${formatSize(opts.size)} is more than this host can give (${formatSize(limit - (limit % (1024n * 1024n)))} of RAM and swap)`,
        );
      }
      const where = opts.hugetlbfsPath ? ` (hugetlbfs ${opts.hugetlbfsPath})` : '';
      throw new GuestRamError(`guest memory ${formatSize(opts.size)}${where}: ${(err as Error).message}`);
    }
  }

  /** Advice the kernel refused (no THP or KSM in this kernel): informational. */
  get refusedAdvice(): readonly string[] {
    return this.host.refusedAdvice;
  }

  /** Register every region as a KVM memory slot (slots 0, 1, ...). */
  registerWith(vm: VmFd): void {
    this.regions.forEach((r, slot) => vm.setUserMemoryRegion({
      slot, guestPhysAddr: r.guestAddress, memorySize: BigInt(r.size), userspaceAddr: r.hostAddress,
    }));
  }

  /**
   * Zero all of RAM (machine reset) by dropping the pages: they come back as zero on use,
   * so a reset never allocates RAM the guest had not used.
   */
  clear(): void {
    if (this.host.fd < 0) madvise(this.host.address, this.host.size, MADV_DONTNEED);
    else fallocate(this.host.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, this.host.size);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.host.close();
  }
}
