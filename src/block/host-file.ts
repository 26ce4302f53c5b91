// A host file or block device opened for image I/O, with the cache mode applied:
//   none        O_DIRECT (page cache bypassed; I/O goes through aligned bounce buffers)
//   directsync  O_DIRECT | O_DSYNC
//   writethrough O_DSYNC (every write is durable when it completes)
//   writeback   page cache; flush() = fdatasync
//   unsafe      page cache; flush() does nothing
// Positioned reads and writes go through fs's callback API at a position, so many requests
// can be in flight at once: libuv runs pread/pwrite and preadv/pwritev on its thread pool (or
// submits them to its own io_uring when the process started with UV_USE_IO_URING=1). A file
// opened with a `ring` (`img bench`'s default engine) sends its reads and writes to that
// io_uring instead (src/kvm/io-uring.ts). (Measured against koffi's async preadv on the same
// pool: 4 KiB random reads at depth 32 ran at roughly 75-110k IOPS through Node's fs and 48k
// through koffi, whose per-call marshalling costs more.)
import { constants, read as fsRead, readv as fsReadv, statfsSync, write as fsWrite, writev as fsWritev } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { koffi } from '../kvm/ffi.js';
import { lseek, SEEK_END, seekDataOrHole } from '../kvm/libc.js';
import { BlockError } from './errors.js';
import type { CacheMode } from './driver.js';
import { completionPromise, IoUring, IoUringError, type Completion } from '../kvm/io-uring.js';
import { LeasedMapping, type MappedBytes } from './leased-mapping.js';

const DIRECT_ALIGN = 4096;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
const RWF_NOWAIT = 0x08;
const EAGAIN = 11;
/** Largest read tried on the spot: bigger copies would hold up the event loop. */
const CACHED_READ_MAX = 128 * 1024;
/** Most buffers one on-the-spot read takes. */
const CACHED_READ_IOVS = 16;
/**
 * The same limits for I/O on a memory file system done inline (memoryIoInline): as much as
 * virtio-blk merges into one request.
 */
const INLINE_IO_MAX = 4 * 1024 * 1024;
const INLINE_IO_IOVS = 1024;
/**
 * The iovecs, reused: on-the-spot I/O is synchronous, so nothing else uses them meanwhile.
 * Filled through 32-bit words: a Buffer's writeUInt32LE checks its arguments on every call.
 */
const onTheSpotWords = new Uint32Array(4 * INLINE_IO_IOVS);
const onTheSpotIov = Buffer.from(onTheSpotWords.buffer);
/** How many bytes the iovecs last filled by fillOnTheSpotIov cover. */
let onTheSpotBytes = 0;
/**
 * File systems whose files live in memory (statfs f_type): tmpfs, ramfs, hugetlbfs. Reading
 * one never waits for a device.
 */
const MEMORY_FILE_SYSTEMS = new Set([0x01021994, 0x858458f6, 0x958458f6]);

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type CFunction = (...args: any[]) => any;
interface Libc {
  fallocate: CFunction;
  preadv2: CFunction;
  pwritev2: CFunction;
  memchr: CFunction;
}
let libc: Libc | undefined;
function getLibc(): Libc {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    libc = {
      fallocate: lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
      preadv2: lib.func('int64_t preadv2(int fd, void *iov, int iovcnt, int64_t offset, int flags)'),
      pwritev2: lib.func('int64_t pwritev2(int fd, void *iov, int iovcnt, int64_t offset, int flags)'),
      // memchr on a one-byte search hands back the buffer's own address: the only way to
      // learn where V8 put a buffer, needed to carve O_DIRECT-aligned windows out of it.
      memchr: lib.func('void *memchr(void *s, int c, size_t n)'),
    };
  }
  return libc;
}

/** A zero-filled buffer whose first byte sits on a DIRECT_ALIGN boundary (V8 never moves backing stores). */
export function alignedBuffer(length: number): Buffer {
  return uninitializedAlignedBuffer(length).fill(0);
}

/**
 * alignedBuffer without the fill, for a caller that overwrites every byte before it reads
 * any (a read into the whole buffer). The fill touches every page on the calling thread: for
 * convert's eight 2 MiB buffers, 5-8 ms of page faults and stores on the main thread as the
 * copy starts, where the first read into each buffer faults its pages in on a pool thread.
 */
export function uninitializedAlignedBuffer(length: number): Buffer {
  const raw = Buffer.allocUnsafeSlow(length + DIRECT_ALIGN);
  raw[0] = 0x5a;
  const address = koffi.address(getLibc().memchr(raw, 0x5a, 1)) as bigint;
  const skip = Number((BigInt(DIRECT_ALIGN) - (address % BigInt(DIRECT_ALIGN))) % BigInt(DIRECT_ALIGN));
  return raw.subarray(skip, skip + length);
}

// Where V8 put each backing store, learned once per ArrayBuffer: lets a request whose
// buffers already sit on DIRECT_ALIGN boundaries skip the bounce buffer (and its copy).
// The base's offset within an alignment block is kept as a number, so that the per-request
// alignment check needs no BigInt arithmetic.
// (Asking for `b.buffer` also moves a small array that V8 kept inside its own heap out of
// it, so the address learned stays valid.) User-space addresses have 47 bits: a number
// holds them exactly, and the io_uring path uses that form.
const baseAddresses = new WeakMap<ArrayBufferLike, { baseNumber: number; misalign: number }>();
function baseOf(b: Uint8Array): { baseNumber: number; misalign: number } {
  let known = baseAddresses.get(b.buffer);
  if (known === undefined) {
    const base = (koffi.address(getLibc().memchr(b, b[0]!, 1)) as bigint) - BigInt(b.byteOffset);
    known = { baseNumber: Number(base), misalign: Number(base % BigInt(DIRECT_ALIGN)) };
    baseAddresses.set(b.buffer, known);
  }
  return known;
}
function addressNumberOf(b: Uint8Array): number {
  return baseOf(b).baseNumber + b.byteOffset;
}

/** True when O_DIRECT can use these buffers as they are: every one aligned in address and length. */
function directReady(buffers: Uint8Array[]): boolean {
  for (const b of buffers) {
    // Small views may live on V8's moving heap; only whole aligned blocks qualify anyway.
    if (b.length === 0 || b.length % DIRECT_ALIGN !== 0) return false;
    if ((baseOf(b).misalign + b.byteOffset) % DIRECT_ALIGN !== 0) return false;
  }
  return true;
}

// Bounce buffers are reused: allocating an aligned one costs a native call and a fill.
const BOUNCE_POOL_MAX = 64;
const bouncePool = new Map<number, Buffer[]>();
function takeBounce(length: number): Buffer {
  const free = bouncePool.get(length);
  return free?.pop() ?? alignedBuffer(length);
}
function giveBounce(b: Buffer): void {
  if (b.length > 1 << 20) return;
  let free = bouncePool.get(b.length);
  if (!free) bouncePool.set(b.length, (free = []));
  if (free.length < BOUNCE_POOL_MAX) free.push(b);
}

/**
 * Adjacent views of one memory block merged into one view. A request split into per-cluster
 * pieces of one caller buffer then reaches the kernel as one buffer: pwritev with 32 iovecs
 * of 64 KiB measured several times slower than one pwrite of the same 2 MiB.
 */
function coalesce(buffers: Uint8Array[]): Uint8Array[] {
  if (buffers.length < 2) return buffers;
  const out: Uint8Array[] = [];
  let cur = buffers[0]!;
  for (let i = 1; i < buffers.length; i++) {
    const b = buffers[i]!;
    if (b.buffer === cur.buffer && cur.byteOffset + cur.length === b.byteOffset) {
      cur = new Uint8Array(cur.buffer, cur.byteOffset, cur.length + b.length);
    } else {
      out.push(cur);
      cur = b;
    }
  }
  out.push(cur);
  return out;
}

function totalLength(buffers: Uint8Array[]): number {
  let n = 0;
  for (const b of buffers) n += b.length;
  return n;
}

/** Create `filename` empty (truncating an existing file), as the image creators start from. */
export async function createEmptyFile(filename: string): Promise<void> {
  let handle: FileHandle;
  try {
    handle = await open(filename, 'w');
  } catch (err) {
    throw new BlockError(filename, `cannot create: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  await handle.close();
}

export interface HostFileOptions {
  readOnly?: boolean;
  cache?: CacheMode;
  create?: boolean;
  /** Reads and writes go through this ring instead of the thread pool (see IoUring). */
  ring?: IoUring;
  /**
   * When the file is on a memory file system (tmpfs, ramfs, hugetlbfs), buffered reads and
   * writes of up to 4 MiB run on the calling thread: they are copies that never wait for a
   * device, like the cached reads done on the spot elsewhere (tmpfs does not take RWF_NOWAIT
   * before Linux 6.6, so those never run on it). For a VMM's event loop the thread pool's
   * round trip costs more than the copy (docs/design.md, "Disk files in memory").
   * TSVIRT_MEMORY_IO=pool turns it off.
   */
  memoryIoInline?: boolean;
}

/**
 * Fill onTheSpotIov with `buffers` when they are few and small enough for an on-the-spot call,
 * and return how many iovecs that took (0 when they do not fit; onTheSpotBytes then says how
 * many bytes they cover). Buffers that follow each other in memory share an iovec, and empty
 * ones are left out, so the caller needs neither coalesce() nor a filter first. Tiny requests
 * (under 64 bytes) are left to the caller's usual path.
 */
function fillOnTheSpotIov(buffers: Uint8Array[], maxBuffers: number, maxBytes: number): number {
  if (buffers.length > maxBuffers) return 0;
  let count = 0;
  let total = 0;
  let end = -1;
  for (let i = 0; i < buffers.length; i++) {
    const b = buffers[i]!;
    const length = b.length;
    if (length === 0) continue;
    total += length;
    if (total > maxBytes) return 0;
    // Addresses have 47 bits: written as two 32-bit halves, without a BigInt per buffer.
    const address = addressNumberOf(b);
    if (address === end) {
      onTheSpotWords[4 * count - 2]! += length;
    } else {
      const high = Math.floor(address / 0x1_0000_0000);
      const at = 4 * count++;
      onTheSpotWords[at] = address - high * 0x1_0000_0000;
      onTheSpotWords[at + 1] = high;
      onTheSpotWords[at + 2] = length;
      onTheSpotWords[at + 3] = 0;
    }
    end = address + length;
  }
  if (total < 64) return 0;
  onTheSpotBytes = total;
  return count;
}

/** Whether `filename` is on a memory file system; false when that cannot be told. */
function onMemoryFileSystem(filename: string): boolean {
  try {
    return MEMORY_FILE_SYSTEMS.has(statfsSync(filename).type);
  } catch {
    return false;
  }
}

/** A ring for HostFile.open's `ring` option: undefined when the kernel offers no io_uring. */
export function createIoRing(entries = 128): IoUring | undefined {
  return IoUring.create(entries, addressNumberOf);
}

export class HostFile {
  private constructor(
    readonly filename: string,
    private readonly handle: FileHandle,
    readonly readOnly: boolean,
    readonly cache: CacheMode,
    readonly direct: boolean,
    readonly isBlockDevice: boolean,
    private readonly ring: IoUring | undefined,
    /** The file lives on a memory file system (tmpfs, ramfs, hugetlbfs). */
    readonly inMemory = false,
    /** Buffered reads and writes run on the calling thread (HostFileOptions.memoryIoInline). */
    private readonly inlineIo = false,
  ) {}

  static async open(filename: string, options: HostFileOptions = {}): Promise<HostFile> {
    const readOnly = options.readOnly ?? false;
    const cache = options.cache ?? 'writeback';
    let flags = readOnly ? constants.O_RDONLY : constants.O_RDWR;
    if (options.create) flags |= constants.O_CREAT;
    if (cache === 'writethrough' || cache === 'directsync') flags |= constants.O_DSYNC;
    const direct = cache === 'none' || cache === 'directsync';
    if (direct) flags |= constants.O_DIRECT;
    let handle: FileHandle;
    try {
      handle = await open(filename, flags, 0o644);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (direct && e.code === 'EINVAL') {
        throw new BlockError(filename, `cache=${cache} needs O_DIRECT, which this file system refuses`);
      }
      throw new BlockError(filename, `cannot open${readOnly ? '' : ' read-write'}: ${e.code ?? e.message}`);
    }
    const stat = await handle.stat();
    if (!stat.isFile() && !stat.isBlockDevice()) {
      await handle.close();
      throw new BlockError(filename, 'is neither a regular file nor a block device');
    }
    const inMemory = stat.isFile() && onMemoryFileSystem(filename);
    const inlineIo = options.memoryIoInline === true && process.env.TSVIRT_MEMORY_IO !== 'pool' && !direct && inMemory;
    return new HostFile(filename, handle, readOnly, cache, direct, stat.isBlockDevice(), options.ring, inMemory, inlineIo);
  }

  get fd(): number {
    return this.handle.fd;
  }

  /** Current length in bytes (for block devices: the device size). */
  async length(): Promise<bigint> {
    if (this.isBlockDevice) {
      // A block device reports size 0 in stat; seeking to its end tells its size.
      const end = lseek(this.fd, 0n, SEEK_END);
      if (end < 0n) throw new BlockError(this.filename, 'cannot determine the block device size');
      return end;
    }
    const stat = await this.handle.stat({ bigint: true });
    return stat.size;
  }

  /** Read exactly the buffers' total length at offset; bytes beyond the end of file read as zeroes. */
  readv(offset: bigint | number, buffers: Uint8Array[]): Promise<void> {
    // One aligned buffer, O_DIRECT, on the ring: the shape of every `img bench` request, taken
    // without an async frame (see Qcow2Image.readv for why that matters).
    const ring = this.ring;
    if (ring && this.direct && buffers.length === 1) {
      const pos = Number(offset);
      const b = buffers[0]!;
      if (pos % DIRECT_ALIGN === 0 && directReady(buffers)) {
        this.rawInFlight++;
        return new Promise((resolve, reject) => {
          ring.submitRead(this.fd, b, pos, (n) => {
            this.rawDone();
            if (n < 0) reject(new IoUringError(-n, 'read'));
            else if (n === b.length) resolve();
            else this.readLoop(pos + n, [b.subarray(n)], false).then(resolve, reject);
          });
        });
      }
    }
    return this.readvAny(offset, buffers);
  }

  private async readvAny(offset: bigint | number, buffers: Uint8Array[]): Promise<void> {
    if (buffers.length === 0) return;
    if (this.inlineIo) {
      // On the spot first, on the buffers as they came: coalescing them costs more than the
      // call when a request has hundreds of buffers (a guest's 1 MiB read can have 256).
      const pos = Number(offset);
      const n = this.cachedRead(buffers, pos);
      if (n !== undefined) {
        if (n === onTheSpotBytes) return;
        if (n === 0) {
          // Wholly past the end of the file: zeroes, as readLoop gives.
          for (const b of buffers) b.fill(0);
          return;
        }
        return this.readLoop(pos + n, advance(buffers, n).filter((b) => b.length > 0), true);
      }
    }
    buffers = coalesce(buffers);
    if (this.direct) return this.directRead(Number(offset), buffers);
    // An inline read that was just tried (too large, or failed) is not tried again.
    return this.readLoop(Number(offset), buffers.filter((b) => b.length > 0), !this.inlineIo);
  }

  /**
   * Read the buffers from `pos` on, as many system calls as it takes; past the end of the
   * file they are zero-filled. `cached`: try the page cache on the spot first (never with
   * O_DIRECT, where the read would wait for the device on the event loop).
   */
  private async readLoop(pos: number, bufs: Uint8Array[], cached: boolean): Promise<void> {
    while (bufs.length > 0) {
      const bytesRead = (cached ? this.cachedRead(bufs, pos) : undefined)
        ?? (bufs.length === 1 ? await this.pread(bufs[0]!, pos) : await this.preadv(bufs, pos));
      if (bytesRead === 0) {
        for (const b of bufs) b.fill(0);
        return;
      }
      pos += bytesRead;
      bufs = advance(bufs, bytesRead);
    }
  }

  /**
   * Write the buffers at `pos`, as many system calls as it takes. `inline`: try each call on
   * the spot first (a memory file system's file, after an inline write that stopped short).
   */
  private async writeLoop(pos: number, bufs: Uint8Array[], inline = false): Promise<void> {
    while (bufs.length > 0) {
      const bytesWritten = (inline ? this.inlineWrite(bufs, pos) : undefined)
        ?? (bufs.length === 1 ? await this.pwrite(bufs[0]!, pos) : await this.pwritev(bufs, pos));
      if (bytesWritten === 0) throw new BlockError(this.filename, `short write at offset ${pos}`);
      pos += bytesWritten;
      bufs = advance(bufs, bytesWritten);
    }
  }

  async writev(offset: bigint | number, buffers: Uint8Array[]): Promise<void> {
    if (this.readOnly) throw new BlockError(this.filename, 'is open read-only');
    if (buffers.length === 0) return;
    if (this.inlineIo) {
      // As for reads: on the spot first, on the buffers as they came.
      const pos = Number(offset);
      const n = this.inlineWrite(buffers, pos);
      if (n === onTheSpotBytes) return;
      if (n !== undefined) return this.writeLoop(pos + n, advance(buffers, n).filter((b) => b.length > 0), true);
      // Too large, or failed: the pool's path below, which also reports an error.
    }
    buffers = coalesce(buffers);
    if (this.direct) return this.directWrite(Number(offset), buffers);
    return this.writeLoop(Number(offset), buffers.filter((b) => b.length > 0));
  }

  read(offset: bigint | number, buffer: Uint8Array): Promise<void> {
    return this.readv(offset, [buffer]);
  }

  write(offset: bigint | number, buffer: Uint8Array): Promise<void> {
    return this.writev(offset, [buffer]);
  }

  // Reads of data already in the page cache are done on the spot with preadv2(RWF_NOWAIT):
  // a few microseconds, where a round trip through the thread pool costs more than the copy
  // itself. The kernel answers EAGAIN rather than wait for the disk; that request (and any
  // larger one) goes to the pool. A kernel or file system without the flag turns this off.
  private cachedReads = true;

  /**
   * Bytes read on the spot, from the page cache or (inlineIo) from a memory file system, or
   * undefined when the read must go to the pool (which also reports any error).
   */
  private cachedRead(buffers: Uint8Array[], position: number): number | undefined {
    const inline = this.inlineIo;
    if (!inline && !this.cachedReads) return undefined;
    const iovs = fillOnTheSpotIov(buffers, inline ? INLINE_IO_IOVS : CACHED_READ_IOVS, inline ? INLINE_IO_MAX : CACHED_READ_MAX);
    if (iovs === 0) return undefined;
    const n = Number(getLibc().preadv2(this.handle.fd, onTheSpotIov, iovs, position, inline ? 0 : RWF_NOWAIT));
    if (n >= 0) return n;
    if (!inline && koffi.errno() !== EAGAIN) this.cachedReads = false;
    return undefined;
  }

  /**
   * Bytes written on the spot into a file on a memory file system, or undefined when the
   * write must go to the pool (too large, or failed: the pool's try reports the error).
   */
  private inlineWrite(buffers: Uint8Array[], position: number): number | undefined {
    const iovs = fillOnTheSpotIov(buffers, INLINE_IO_IOVS, INLINE_IO_MAX);
    if (iovs === 0) return undefined;
    const n = Number(getLibc().pwritev2(this.handle.fd, onTheSpotIov, iovs, position, 0));
    return n > 0 ? n : undefined;
  }

  /**
   * Read all of the buffers at `position` on the calling thread if that can be done at once
   * (a memory file system with memoryIoInline, or a page-cache hit); false when it cannot, or
   * read short: nothing is reported then, and readv() does the read (again) and reports.
   */
  readvNow(position: number, buffers: Uint8Array[]): boolean {
    if (buffers.length === 0) return true;
    return !this.direct && this.cachedRead(buffers, position) === onTheSpotBytes;
  }

  /** As readvNow, for a write on a memory file system (memoryIoInline); false: use writev(). */
  writevNow(position: number, buffers: Uint8Array[]): boolean {
    if (this.readOnly || !this.inlineIo) return false;
    if (buffers.length === 0) return true;
    return this.inlineWrite(buffers, position) === onTheSpotBytes;
  }

  /** Whether buffered reads and writes run on the calling thread (HostFileOptions.memoryIoInline). */
  get ioInline(): boolean {
    return this.inlineIo;
  }

  // Positioned I/O on the raw descriptor (onPool, onRing) is counted: close() waits until
  // none of it is in flight.
  private rawInFlight = 0;
  private rawIdle: (() => void) | undefined;

  private rawDone(): void {
    if (--this.rawInFlight === 0 && this.rawIdle) {
      const idle = this.rawIdle;
      this.rawIdle = undefined;
      idle();
    }
  }

  /**
   * One request on the thread pool through fs's callback API, counted for close(). FileHandle's
   * promise methods wrap the same calls in an async function and its bookkeeping, which
   * profiling showed as a large share of a small request's CPU time.
   */
  private onPool(start: (done: (err: NodeJS.ErrnoException | null, n: number) => void) => void): Promise<number> {
    this.rawInFlight++;
    return new Promise((resolve, reject) => {
      start((err, n) => {
        this.rawDone();
        if (err) reject(err);
        else resolve(n);
      });
    });
  }

  /** One request on the ring, ended by callback inside this one promise, counted for close(). */
  private onRing(op: string, start: (done: Completion) => void): Promise<number> {
    this.rawInFlight++;
    return completionPromise(op, start, () => this.rawDone());
  }

  private preadv(buffers: Uint8Array[], position: number): Promise<number> {
    const ring = this.ring;
    if (ring) return this.onRing('readv', (done) => ring.submitReadv(this.fd, buffers, position, done));
    return this.onPool((done) => fsReadv(this.handle.fd, buffers, position, done));
  }

  private pwritev(buffers: Uint8Array[], position: number): Promise<number> {
    const ring = this.ring;
    if (ring) return this.onRing('writev', (done) => ring.submitWritev(this.fd, buffers, position, done));
    return this.onPool((done) => fsWritev(this.handle.fd, buffers, position, done));
  }

  private pread(buffer: Uint8Array, position: number): Promise<number> {
    const ring = this.ring;
    if (ring) return this.onRing('read', (done) => ring.submitRead(this.fd, buffer, position, done));
    return this.onPool((done) => fsRead(this.handle.fd, buffer, 0, buffer.length, position, done));
  }

  private pwrite(buffer: Uint8Array, position: number): Promise<number> {
    const ring = this.ring;
    if (ring) return this.onRing('write', (done) => ring.submitWrite(this.fd, buffer, position, done));
    return this.onPool((done) => fsWrite(this.handle.fd, buffer, 0, buffer.length, position, done));
  }

  // O_DIRECT needs offset, length and memory address aligned. Requests whose buffers are
  // aligned already go straight to the file; others go through an aligned bounce buffer
  // covering the request rounded out to the alignment. A write that does not cover whole
  // aligned blocks first reads the blocks it touches (read-modify-write): those run one at
  // a time, after every write already in flight, and writes issued while one is pending
  // queue behind it, so a read-modify-write never interleaves with another write. Whole-block
  // writes otherwise run concurrently.
  private directQueue: Promise<void> = Promise.resolve();
  private rmwPending = 0;
  private readonly directInFlight = new Set<Promise<void>>();

  private async directRead(offset: number, buffers: Uint8Array[]): Promise<void> {
    const length = totalLength(buffers);
    if (offset % DIRECT_ALIGN === 0 && directReady(buffers)) return this.readLoop(offset, buffers, false);
    const start = Math.floor(offset / DIRECT_ALIGN) * DIRECT_ALIGN;
    const end = Math.ceil((offset + length) / DIRECT_ALIGN) * DIRECT_ALIGN;
    const bounce = takeBounce(end - start);
    try {
      await this.readLoop(start, [bounce], false);
      let from = offset - start;
      for (const b of buffers) {
        b.set(bounce.subarray(from, from + b.length));
        from += b.length;
      }
    } finally {
      giveBounce(bounce);
    }
  }

  private directWrite(offset: number, buffers: Uint8Array[]): Promise<void> {
    const length = totalLength(buffers);
    if (offset % DIRECT_ALIGN === 0 && length % DIRECT_ALIGN === 0) {
      const run = (): Promise<void> => this.wholeBlockWrite(offset, buffers);
      if (this.rmwPending > 0) {
        const next = this.directQueue.then(run, run);
        this.directQueue = next.catch(() => undefined);
        return next;
      }
      const p = run();
      const tracked = p.catch(() => undefined).then(() => {
        this.directInFlight.delete(tracked);
      });
      this.directInFlight.add(tracked);
      return p;
    }
    const before = [...this.directInFlight];
    this.rmwPending++;
    const run = async (): Promise<void> => {
      try {
        await Promise.all(before);
        await this.readModifyWrite(offset, length, buffers);
      } finally {
        this.rmwPending--;
      }
    };
    const next = this.directQueue.then(run, run);
    this.directQueue = next.catch(() => undefined);
    return next;
  }

  private async wholeBlockWrite(offset: number, buffers: Uint8Array[]): Promise<void> {
    if (directReady(buffers)) return this.writeLoop(offset, buffers);
    const bounce = takeBounce(totalLength(buffers));
    try {
      let at = 0;
      for (const b of buffers) {
        bounce.set(b, at);
        at += b.length;
      }
      await this.writeLoop(offset, [bounce]);
    } finally {
      giveBounce(bounce);
    }
  }

  private async readModifyWrite(offset: number, length: number, buffers: Uint8Array[]): Promise<void> {
    const start = Math.floor(offset / DIRECT_ALIGN) * DIRECT_ALIGN;
    const end = Math.ceil((offset + length) / DIRECT_ALIGN) * DIRECT_ALIGN;
    const bounce = takeBounce(end - start);
    try {
      bounce.fill(0);
      const fileEnd = Number(await this.length());
      const readable = Math.max(0, Math.min(end, Math.ceil(fileEnd / DIRECT_ALIGN) * DIRECT_ALIGN) - start);
      if (readable > 0) await this.readLoop(start, [bounce.subarray(0, readable)], false);
      let at = offset - start;
      for (const b of buffers) {
        bounce.set(b, at);
        at += b.length;
      }
      await this.writeLoop(start, [bounce]);
      // Rounding up to the alignment may have grown the file past the request's end.
      if (end > fileEnd && offset + length < end && !this.isBlockDevice) {
        await this.handle.truncate(Math.max(fileEnd, offset + length));
      }
    } finally {
      giveBounce(bounce);
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.cache === 'unsafe') return;
    await this.handle.datasync();
  }

  /**
   * Make every write so far durable before any later one: the ordering point between
   * dependent metadata writes. Needed only where writes can be reordered on their way to
   * the disk (page cache, device cache); O_DSYNC writes are durable on return already, and
   * 'unsafe' promises nothing.
   */
  async barrier(): Promise<void> {
    if (this.readOnly || (this.cache !== 'writeback' && this.cache !== 'none')) return;
    await this.handle.datasync();
  }

  async truncate(length: bigint): Promise<void> {
    if (this.isBlockDevice) {
      if (length > (await this.length())) throw new BlockError(this.filename, 'a block device cannot grow');
      return;
    }
    await this.handle.truncate(Number(length));
  }

  /**
   * The next data (or hole) at or after offset, from lseek(SEEK_DATA/SEEK_HOLE);
   * -1 when there is none or the file system cannot tell.
   */
  seek(offset: bigint, what: 'data' | 'hole'): bigint {
    const r = seekDataOrHole(this.fd, offset, what);
    return r < 0n ? -1n : r;
  }

  /** Reserve space without writing it (posix fallocate); false when the file system cannot. */
  allocate(offset: bigint, length: bigint): boolean {
    return getLibc().fallocate(this.fd, 0, offset, length) === 0;
  }

  /** Give the range back to the file system (it then reads as zeroes); false when unsupported. */
  punchHole(offset: bigint, length: bigint): boolean {
    if (this.readOnly) return false;
    return getLibc().fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0;
  }

  /** Zero the range cheaply (no data written) when the file system can; false otherwise. */
  zeroRange(offset: bigint, length: bigint): boolean {
    if (this.readOnly) return false;
    return getLibc().fallocate(this.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length) === 0;
  }

  /** The file's leased mapping (mapForRead) once tried: null when none could be had. */
  private mapping: LeasedMapping | null | undefined;

  /**
   * [offset, offset+length) of the file as mapped bytes, without a copy, or undefined (a file
   * open for writing or with O_DIRECT, a block device, a range past the end, no lease to be
   * had: see LeasedMapping). The caller releases the bytes and touches them no more after.
   */
  mapForRead(offset: number, length: number): MappedBytes | undefined {
    if (this.mapping === undefined) {
      const mappable = this.readOnly && !this.direct && !this.isBlockDevice;
      this.mapping = (mappable ? LeasedMapping.tryCreate(this.fd) : undefined) ?? null;
    }
    return this.mapping?.view(offset, length);
  }

  async close(): Promise<void> {
    await this.directQueue;
    await Promise.all(this.directInFlight);
    while (this.rawInFlight > 0) await new Promise<void>((r) => (this.rawIdle = r));
    this.mapping?.close();
    await this.handle.close();
  }
}

function advance(buffers: Uint8Array[], count: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = count;
  for (const b of buffers) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}
