// A read-only file's pages mapped into memory, for reads that need no copy: `tsvirt img
// convert` scans a source's bytes for zeroes and writes the rest straight from the page
// cache, where a read would first copy them into a buffer (half the kernel's work in a
// convert of a disk full of written zeroes; docs/design.md, "Reading a convert's source
// through a leased mapping").
//
// A mapping has one hazard: a page past the file's end raises SIGBUS when touched, which no
// JavaScript can catch. So the file is mapped only under a read lease (fcntl F_SETLEASE),
// which the kernel grants only while nobody has the file open for writing, and which makes
// anyone who then opens it for writing or truncates it wait until the holder lets go. The
// kernel tells the holder with a signal (SIGIO); the mapping then hands out no more views,
// and once the views in use are given back it is unmapped and the lease released: the
// other process goes on, and readers here go back to read(). The kernel waits for that at
// most /proc/sys/fs/lease-break-time seconds (45 by default); a view is held for one chunk's
// write, milliseconds.
//
// The file is mapped in windows, a few at a time, so that page tables do not grow with the
// size of the file as a convert goes through it. While any mapping holds a lease, the
// process listens for SIGIO (its default action would end the process); with the last one
// released, the listener goes too.
import { fstatSync } from 'node:fs';
import { createRequire } from 'node:module';
import { koffi } from '../kvm/ffi.js';
import { MAP_SHARED, mmap, nativeView, PROT_READ } from '../kvm/libc.js';

const F_SETLEASE = 1024;
const F_GETLEASE = 1025;
const F_RDLCK = 0;
const F_UNLCK = 2;
/**
 * Bytes per window: a multiple of convert's 2 MiB chunks, so a chunk never spans two. Large,
 * because tearing down a window's page-table entries costs about 15 ms per GiB mapped and
 * stalls threads faulting pages in meanwhile: with 64 MiB windows a convert of 1 GiB of data
 * took 0.45 s against 0.34 s with one window for the whole 2 GiB file. A window's page tables
 * take at most 2 MiB per GiB.
 */
export const MAPPING_WINDOW = 1024 * 1024 * 1024;
/** Windows kept mapped with no view in use, for lanes still working just behind the newest. */
const IDLE_WINDOWS = 2;

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- koffi's functions take any arguments
type CFunction = ((...args: any[]) => any) & { async: (...args: any[]) => void };
let libc: { fcntl: CFunction; munmap: CFunction } | undefined;
function getLibc(): { fcntl: CFunction; munmap: CFunction } {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    libc = { fcntl: lib.func('int fcntl(int fd, int cmd, ...)'), munmap: lib.func('int munmap(void *addr, size_t length)') };
  }
  return libc;
}

function fcntlInt(fd: number, cmd: number, arg: number): number {
  return getLibc().fcntl(fd, cmd, 'int', arg) as number;
}

/**
 * Unmaps a window on the thread pool: the page-table teardown (above) stays off the event
 * loop. Nothing touches the window's bytes after this is called.
 */
function unmapLater(window: Window): void {
  getLibc().munmap.async(window.address, window.length, () => undefined);
}

/** Bytes of a mapped file; `release()` gives them back, after which they must not be touched. */
export interface MappedBytes {
  readonly bytes: Buffer;
  release(): void;
}

interface Window {
  readonly start: number;
  readonly length: number;
  readonly address: bigint;
  readonly bytes: Buffer;
  holds: number;
}

/**
 * Signals reach only the main thread's listeners: elsewhere a lease break would find none,
 * and SIGIO's default action ends the process. (node:worker_threads is loaded only here.)
 */
function onMainThread(): boolean {
  return (createRequire(import.meta.url)('node:worker_threads') as typeof import('node:worker_threads')).isMainThread;
}

/** The mappings holding a lease: one SIGIO listener serves them all. */
const leased = new Set<LeasedMapping>();
function onLeaseBreak(): void {
  // The signal does not say which file: each mapping asks whether its own lease is being broken.
  for (const m of [...leased]) m.checkLease();
}

export class LeasedMapping {
  private readonly windows = new Map<number, Window>();
  private revoked = false;
  private closed = false;

  private constructor(
    private readonly fd: number,
    /** The file's length under the lease (it cannot shrink while the lease holds): views end there. */
    readonly length: number,
  ) {}

  /**
   * A mapping of the regular file open read-only on `fd`, or undefined when the kernel
   * grants no read lease (the file is open for writing somewhere, the file system has no
   * leases, this process does not own the file) or the platform is not one this is written for.
   */
  static tryCreate(fd: number): LeasedMapping | undefined {
    if (!LeasedMapping.supported) return undefined;
    // The listener first: SIGIO with none ends the process. (It runs from the event loop,
    // so it finds this mapping in the set even if a break starts right after the lease.)
    if (leased.size === 0) process.on('SIGIO', onLeaseBreak);
    if (fcntlInt(fd, F_SETLEASE, F_RDLCK) !== 0) {
      if (leased.size === 0) process.off('SIGIO', onLeaseBreak);
      return undefined;
    }
    // Measured under the lease: a truncation between a look and the lease would go unseen.
    const mapping = new LeasedMapping(fd, fstatSync(fd).size);
    leased.add(mapping);
    return mapping;
  }

  /** Whether mappings are made here at all: Linux on x86-64, on the main thread. */
  static get supported(): boolean {
    return process.platform === 'linux' && process.arch === 'x64' && onMainThread();
  }

  /** False once the lease is being broken or the mapping is closed: no more views. */
  get usable(): boolean {
    return !this.revoked && !this.closed;
  }

  /**
   * The bytes [offset, offset+length) of the file, without a copy, or undefined: past the
   * leased length, across a window boundary, or once the lease is being broken.
   */
  view(offset: number, length: number): MappedBytes | undefined {
    if (!this.usable || length <= 0 || offset < 0 || offset + length > this.length) return undefined;
    const index = Math.floor(offset / MAPPING_WINDOW);
    if (Math.floor((offset + length - 1) / MAPPING_WINDOW) !== index) return undefined;
    let window = this.windows.get(index);
    if (!window) {
      window = this.mapWindow(index);
      if (!window) return undefined;
      window.holds++;
      // Held first, so that trimming never takes the window just mapped.
      this.trim();
    } else {
      window.holds++;
    }
    const from = offset - window.start;
    let released = false;
    return {
      bytes: window.bytes.subarray(from, from + length),
      release: () => {
        if (released) return;
        released = true;
        window.holds--;
        this.trim();
      },
    };
  }

  /** Called on SIGIO: when this file's lease is being broken, stop and let go as soon as no view is in use. */
  checkLease(): void {
    if (this.closed || this.revoked) return;
    // While a break is under way the kernel reports the type the lease is going to.
    if (fcntlInt(this.fd, F_GETLEASE, 0) === F_RDLCK) return;
    this.revoked = true;
    this.trim();
  }

  /** Unmaps everything and releases the lease; views still out must not be touched after this. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.windows.values()) unmapLater(w);
    this.windows.clear();
    this.forget();
  }

  private mapWindow(index: number): Window | undefined {
    const start = index * MAPPING_WINDOW;
    const length = Math.min(MAPPING_WINDOW, this.length - start);
    let address: bigint;
    try {
      address = mmap(length, PROT_READ, MAP_SHARED, this.fd, start);
    } catch {
      return undefined;
    }
    const window: Window = { start, length, address, bytes: Buffer.from(nativeView(address, length)), holds: 0 };
    // Newest last: trim() unmaps idle windows from the oldest.
    this.windows.set(index, window);
    return window;
  }

  /** Unmaps idle windows beyond IDLE_WINDOWS (all of them once revoked); with none left after a revocation, lets go of the lease. */
  private trim(): void {
    if (this.closed) return;
    let idle = 0;
    for (const w of this.windows.values()) if (w.holds === 0) idle++;
    const keep = this.revoked ? 0 : IDLE_WINDOWS;
    for (const [index, w] of this.windows) {
      if (idle <= keep) break;
      if (w.holds > 0) continue;
      unmapLater(w);
      this.windows.delete(index);
      idle--;
    }
    if (this.revoked && this.windows.size === 0) this.close();
  }

  /** Releases the lease and leaves the SIGIO listener's set (removing the listener with the last one). */
  private forget(): void {
    if (leased.delete(this)) {
      fcntlInt(this.fd, F_SETLEASE, F_UNLCK);
      if (leased.size === 0) process.off('SIGIO', onLeaseBreak);
    }
  }
}
