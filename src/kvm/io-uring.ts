// An io_uring instance of the process's own: submission and completion rings mapped into
// JavaScript, entries written in place, submitted a batch at a time. It serves a
// process that owns its event loop and waits for nothing but its disk (`tsvirt img bench`,
// like qemu-img's io_uring engine): when requests are in flight the loop's next turn
// polls the completion ring, then sleeps in the kernel until at least one completes, so a
// completion is handled the moment it arrives, with no helper thread between the disk and
// the code waiting for it. (libuv's
// own io_uring, UV_USE_IO_URING=1, hands submissions to a kernel polling thread and learns
// of completions through epoll: a hop each way.) Not for the VMM, whose event loop serves
// devices and the monitor and must never block on one disk.
import { koffi } from './ffi.js';
import { close as closeFd, errnoName, mmap, munmap, nativeView, strerror, MAP_POPULATE, MAP_SHARED, PROT_READ, PROT_WRITE } from './libc.js';

const SYS_IO_URING_SETUP = 425;
const SYS_IO_URING_ENTER = 426;
const IORING_OFF_SQ_RING = 0;
const IORING_OFF_CQ_RING = 0x8000000;
const IORING_OFF_SQES = 0x10000000;
const IORING_FEAT_SINGLE_MMAP = 1 << 0;
const IORING_FEAT_RW_CUR_POS = 1 << 3;
const IORING_ENTER_GETEVENTS = 1 << 0;
const IORING_OP_READV = 1;
const IORING_OP_WRITEV = 2;
const IORING_OP_READ = 22;
const IORING_OP_WRITE = 23;
const SQE_SIZE = 64;
const CQE_SIZE = 16;
const PARAMS_SIZE = 120;
const EINTR = 4;
const EBUSY = 16;
const EAGAIN = 11;
const EBADF = 9;
/** Microtask rounds a turn waits for more requests (see scheduleTurn). */
const BATCH_HOPS = 8;
/** Chaining on a settled promise queues a microtask more cheaply than queueMicrotask(). */
const RESOLVED = Promise.resolve();
/** Completions handed out per turn (see reap). */
const REAP_PER_TURN = 4;
/** How long a turn polls the completion ring before it sleeps in the kernel (ms; see poll). */
const POLL_MS = 0.15;
/** Submissions refused for lack of resources in a row before the queued requests fail. */
const MAX_REFUSALS = 1000;
/**
 * How long completions are handled without a turn of the event loop (ms); one wait in the
 * kernel can add the disk's latency to it.
 */
const YIELD_MS = 1;

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- koffi's functions take any arguments
type CFunction = (...args: any[]) => any;
let syscalls: { setup: CFunction; enter: CFunction } | undefined;
function sys(): { setup: CFunction; enter: CFunction } {
  if (!syscalls) {
    const libc = koffi.load('libc.so.6');
    // syscall(2) is variadic; glibc's implementation only moves registers, so fixed
    // prototypes per call shape are safe and spare koffi's variadic marshalling per call.
    syscalls = {
      setup: libc.func('long syscall(long n, unsigned int entries, _Inout_ uint8_t *params)'),
      enter: libc.func('long syscall(long n, int fd, unsigned int toSubmit, unsigned int minComplete, unsigned int flags, void *sig, size_t sigsz)'),
    };
  }
  return syscalls;
}

/** A failed request's error, with a `code` and `syscall` as Node's fs errors have (errno positive). */
export class IoUringError extends Error {
  readonly code: string;
  constructor(readonly errno: number, readonly syscall: string) {
    super(`${errnoName(errno)}: ${strerror(errno)}, ${syscall}`);
    this.code = errnoName(errno);
  }
}

/** A request's end: the bytes moved, or minus the errno. */
export type Completion = (result: number) => void;

/**
 * A promise of the bytes a request moves, for a request started by `start` with its
 * completion: rejected with an IoUringError naming `op` when it fails. `settled` runs first,
 * either way (a caller's count of requests in flight).
 */
export function completionPromise(op: string, start: (done: Completion) => void, settled?: () => void): Promise<number> {
  return new Promise((resolve, reject) => {
    start((result) => {
      settled?.();
      if (result < 0) reject(new IoUringError(-result, op));
      else resolve(result);
    });
  });
}

/** Address of a Uint8Array's first byte, which must stay put while a request uses it. */
export type AddressOf = (b: Uint8Array) => number;

export class IoUring {
  private readonly sqTail: Uint32Array;
  private readonly sqArray: Uint32Array;
  private readonly sqMask: number;
  private readonly cqHead: Uint32Array;
  private readonly cqTail: Uint32Array;
  private readonly cqMask: number;
  private readonly cqes: DataView;
  private readonly sqes32: Uint32Array;
  private readonly sqes8: Uint8Array;
  private readonly entries: number;
  /** Requests written into the ring and not yet submitted with io_uring_enter. */
  private queued = 0;
  /** Requests the kernel has and has not completed. */
  private inFlight = 0;
  // Each request in the ring owns a slot; its tag (the entry's user_data) is the slot's index
  // plus one. Slots are plain arrays, not a map of objects: nothing is allocated per request
  // but the caller's completion.
  private readonly slotDone: Array<Completion | undefined>;
  /** Kept alive until the kernel is done with them (buffers, iovec block). */
  private readonly slotKeep: unknown[];
  private readonly freeSlots: number[];
  private turnScheduled = false;
  private closed = false;
  /** Requests waiting for a free submission slot. */
  private readonly overflow: Array<() => void> = [];

  private constructor(
    private readonly fd: number,
    private readonly maps: Array<{ address: bigint; length: number }>,
    params: DataView,
    sqRing: ArrayBuffer,
    cqRing: ArrayBuffer,
    sqes: ArrayBuffer,
    private readonly addressOf: AddressOf,
  ) {
    const u32 = (o: number): number => params.getUint32(o, true);
    this.entries = u32(0);
    this.sqTail = new Uint32Array(sqRing, u32(44), 1);
    this.sqMask = new Uint32Array(sqRing, u32(48), 1)[0]!;
    this.sqArray = new Uint32Array(sqRing, u32(64), this.entries);
    this.cqHead = new Uint32Array(cqRing, u32(80), 1);
    this.cqTail = new Uint32Array(cqRing, u32(84), 1);
    this.cqMask = new Uint32Array(cqRing, u32(88), 1)[0]!;
    this.cqes = new DataView(cqRing, u32(100), u32(4) * CQE_SIZE);
    this.sqes32 = new Uint32Array(sqes);
    this.sqes8 = new Uint8Array(sqes);
    this.slotDone = new Array<Completion | undefined>(this.entries).fill(undefined);
    this.slotKeep = new Array<unknown>(this.entries).fill(undefined);
    this.freeSlots = Array.from({ length: this.entries }, (_, i) => this.entries - 1 - i);
  }

  /**
   * A ring of `entries` slots (a power of two); undefined when the kernel offers no
   * io_uring (too old, or switched off: kernel.io_uring_disabled, seccomp).
   */
  static create(entries: number, addressOf: AddressOf): IoUring | undefined {
    // The rings are read and written with plain loads and stores, in program order: x86-64
    // keeps that order; elsewhere barriers would be needed.
    if (process.arch !== 'x64') return undefined;
    const params = new Uint8Array(PARAMS_SIZE);
    let fd: number;
    try {
      fd = Number(sys().setup(SYS_IO_URING_SETUP, entries, params));
    } catch {
      return undefined;
    }
    if (fd < 0) return undefined;
    const view = new DataView(params.buffer);
    const u32 = (o: number): number => view.getUint32(o, true);
    // IORING_OP_READ/WRITE came with Linux 5.6, as did this feature bit: older rings would
    // fail every request with EINVAL.
    if (!(u32(20) & IORING_FEAT_RW_CUR_POS)) {
      closeFd(fd);
      return undefined;
    }
    const sqEntries = u32(0);
    const cqEntries = u32(4);
    const sqSize = u32(64) + sqEntries * 4;
    const cqSize = u32(100) + cqEntries * CQE_SIZE;
    const maps: Array<{ address: bigint; length: number }> = [];
    const map = (length: number, offset: number): ArrayBuffer => {
      const address = mmap(length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, offset);
      maps.push({ address, length });
      return nativeView(address, length);
    };
    try {
      let sqRing: ArrayBuffer;
      let cqRing: ArrayBuffer;
      if (u32(20) & IORING_FEAT_SINGLE_MMAP) {
        sqRing = cqRing = map(Math.max(sqSize, cqSize), IORING_OFF_SQ_RING);
      } else {
        sqRing = map(sqSize, IORING_OFF_SQ_RING);
        cqRing = map(cqSize, IORING_OFF_CQ_RING);
      }
      const sqes = map(sqEntries * SQE_SIZE, IORING_OFF_SQES);
      return new IoUring(fd, maps, view, sqRing, cqRing, sqes, addressOf);
    } catch {
      for (const m of maps) munmap(m.address, m.length);
      closeFd(fd);
      return undefined;
    }
  }

  // Each request has two forms: ended by a callback (submit*), for callers that wrap it in a
  // promise of their own anyway (one promise per request, not two), and promised.

  /** pread(2) through the ring, ended by `done`. */
  submitRead(fd: number, buffer: Uint8Array, position: number, done: Completion): void {
    this.submit(IORING_OP_READ, fd, this.addressOf(buffer), buffer.length, position, buffer, done);
  }

  /** pwrite(2) through the ring, ended by `done`. */
  submitWrite(fd: number, buffer: Uint8Array, position: number, done: Completion): void {
    this.submit(IORING_OP_WRITE, fd, this.addressOf(buffer), buffer.length, position, buffer, done);
  }

  /** preadv(2) through the ring, ended by `done`. */
  submitReadv(fd: number, buffers: Uint8Array[], position: number, done: Completion): void {
    const iov = this.iovecs(buffers);
    this.submit(IORING_OP_READV, fd, this.addressOf(iov), buffers.length, position, [iov, buffers.slice()], done);
  }

  /** pwritev(2) through the ring, ended by `done`. */
  submitWritev(fd: number, buffers: Uint8Array[], position: number, done: Completion): void {
    const iov = this.iovecs(buffers);
    this.submit(IORING_OP_WRITEV, fd, this.addressOf(iov), buffers.length, position, [iov, buffers.slice()], done);
  }

  /** pread(2) through the ring: resolves to the bytes read. */
  read(fd: number, buffer: Uint8Array, position: number): Promise<number> {
    return this.promised('read', (done) => this.submitRead(fd, buffer, position, done));
  }

  /** pwrite(2) through the ring: resolves to the bytes written. */
  write(fd: number, buffer: Uint8Array, position: number): Promise<number> {
    return this.promised('write', (done) => this.submitWrite(fd, buffer, position, done));
  }

  /** preadv(2) through the ring. */
  readv(fd: number, buffers: Uint8Array[], position: number): Promise<number> {
    return this.promised('readv', (done) => this.submitReadv(fd, buffers, position, done));
  }

  /** pwritev(2) through the ring. */
  writev(fd: number, buffers: Uint8Array[], position: number): Promise<number> {
    return this.promised('writev', (done) => this.submitWritev(fd, buffers, position, done));
  }

  /** Requests submitted or waiting to be: close() refuses while there are any. */
  get busy(): boolean {
    return this.inFlight + this.queued + this.overflow.length > 0;
  }

  close(): void {
    if (this.closed) return;
    if (this.busy) throw new Error('io_uring closed with requests in flight');
    this.closed = true;
    for (const m of this.maps) munmap(m.address, m.length);
    closeFd(this.fd);
  }

  private iovecs(buffers: Uint8Array[]): Uint8Array {
    const iov = Buffer.allocUnsafeSlow(16 * buffers.length);
    for (let i = 0; i < buffers.length; i++) {
      const address = this.addressOf(buffers[i]!);
      iov.writeUInt32LE(address % 0x100000000, 16 * i);
      iov.writeUInt32LE(Math.floor(address / 0x100000000), 16 * i + 4);
      iov.writeUInt32LE(buffers[i]!.length, 16 * i + 8);
      iov.writeUInt32LE(0, 16 * i + 12);
    }
    return iov;
  }

  private promised(op: string, start: (done: Completion) => void): Promise<number> {
    if (this.closed) return Promise.reject(new Error('io_uring is closed'));
    return completionPromise(op, start);
  }

  private submit(opcode: number, fd: number, address: number, length: number, position: number, keep: unknown, done: Completion): void {
    if (this.closed) {
      done(-EBADF);
      return;
    }
    if (this.queued + this.inFlight < this.entries) this.put(opcode, fd, address, length, position, keep, done);
    else this.overflow.push(() => this.put(opcode, fd, address, length, position, keep, done));
  }

  private put(opcode: number, fd: number, address: number, length: number, position: number, keep: unknown, done: Completion): void {
    // A free slot exists: put runs only while fewer than `entries` requests are queued or in flight.
    const slot = this.freeSlots.pop()!;
    this.slotDone[slot] = done;
    this.slotKeep[slot] = keep;
    this.writeEntry(opcode, fd, address, length, position, slot + 1);
    this.scheduleTurn();
  }

  /** Hand a slot's request its result and free the slot. */
  private settle(slot: number, result: number): void {
    const done = this.slotDone[slot];
    if (!done) return;
    this.slotDone[slot] = undefined;
    this.slotKeep[slot] = undefined;
    this.freeSlots.push(slot);
    done(result);
  }

  private writeEntry(opcode: number, fd: number, address: number, length: number, position: number, tag: number): void {
    const tail = this.sqTail[0]!;
    const index = tail & this.sqMask;
    const w = (index * SQE_SIZE) / 4;
    const s = this.sqes32;
    // Every field of the entry is written: a slot still holds its previous request's bytes.
    s[w] = 0; // opcode, flags, ioprio
    this.sqes8[index * SQE_SIZE] = opcode;
    s[w + 1] = fd;
    s[w + 2] = position % 0x100000000;
    s[w + 3] = Math.floor(position / 0x100000000);
    s[w + 4] = address % 0x100000000;
    s[w + 5] = Math.floor(address / 0x100000000);
    s[w + 6] = length;
    s[w + 7] = 0; // rw_flags
    s[w + 8] = tag;
    s[w + 9] = 0;
    for (let k = 10; k < 16; k++) s[w + k] = 0;
    this.sqArray[index] = index;
    // x86-64 keeps stores in program order: the entry is complete before the tail moves.
    this.sqTail[0] = tail + 1;
    this.queued++;
  }

  private scheduleTurn(): void {
    if (this.turnScheduled) return;
    this.turnScheduled = true;
    // The next turn runs as a microtask, after those already queued (the requests they make
    // join its batch): a trip round the event loop per completion cost 6 us of a 4 KiB
    // read's 29 us. The loop still gets its turn at least every YIELD_MS, for the thread
    // pool's completions and timers, which waiting in the kernel here would hold up.
    const now = performance.now();
    if (now - this.lastYield < YIELD_MS) {
      this.hops = 0;
      void RESOLVED.then(this.hop);
    } else {
      setImmediate(() => {
        this.lastYield = performance.now();
        this.turn();
      });
    }
  }

  // The turn waits a few microtask rounds first: a completion reaches its requester
  // through a chain of awaits (driver, format, file), and the requests made at the end of
  // those chains should join this turn's batch rather than wait for the next one.
  private hops = 0;
  private readonly hop = (): void => {
    if (++this.hops < BATCH_HOPS) void RESOLVED.then(this.hop);
    else this.turn();
  };
  private lastYield = 0;

  /**
   * Submit what is queued; when requests are in flight and none has completed yet, poll the
   * completion ring briefly, then wait in the kernel for one; hand out up to REAP_PER_TURN
   * completions.
   */
  private turn(): void {
    this.turnScheduled = false;
    if (this.closed) return;
    const toSubmit = this.queued;
    if (toSubmit > 0) {
      const r = Number(sys().enter(SYS_IO_URING_ENTER, this.fd, toSubmit, 0, 0, null, 0));
      if (r >= 0) {
        this.queued -= r;
        this.inFlight += r;
      }
    }
    if (this.inFlight > 0 && this.cqHead[0] === this.cqTail[0] && POLL_MS > 0) this.poll();
    // Wait in the kernel only when no completion is ready to hand out already.
    const wait = this.inFlight + this.queued > 0 && this.cqHead[0] === this.cqTail[0] ? 1 : 0;
    const r = this.queued + wait === 0 ? 0 : Number(sys().enter(SYS_IO_URING_ENTER, this.fd, this.queued, wait, wait ? IORING_ENTER_GETEVENTS : 0, null, 0));
    let backOff = false;
    if (r >= 0) {
      this.queued -= r;
      this.inFlight += r;
      this.refusals = 0;
    } else {
      const errno = koffi.errno();
      if (errno === EINTR) {
        // A signal: the next turn tries again.
      } else if ((errno === EAGAIN || errno === EBUSY) && ++this.refusals < MAX_REFUSALS) {
        // Short of resources: completions in flight free some; with none in flight, the
        // next try waits for a turn of the event loop rather than spinning.
        backOff = this.inFlight === 0;
      } else {
        this.failQueued(errno);
      }
    }
    this.reap();
    while (this.overflow.length > 0 && this.queued + this.inFlight < this.entries) this.overflow.shift()!();
    if (this.inFlight + this.queued === 0) return;
    if (backOff) {
      this.turnScheduled = true;
      setTimeout(() => this.turn(), 1);
    } else {
      this.scheduleTurn();
    }
  }

  /** Submissions refused in a row for lack of resources (EAGAIN, EBUSY). */
  private refusals = 0;

  /**
   * Watch the completion ring for up to POLL_MS before the turn sleeps in the kernel. The
   * clock is read once per 256 looks: reading it costs far more than a look.
   */
  private poll(): void {
    const head = this.cqHead[0];
    const tail = this.cqTail;
    const until = performance.now() + POLL_MS;
    for (;;) {
      for (let i = 0; i < 256; i++) if (tail[0] !== head) return;
      if (performance.now() >= until) return;
    }
  }

  private reap(): void {
    let head = this.cqHead[0]!;
    const tail = this.cqTail[0]!;
    // A few completions per turn: the requests their owners make next are submitted before
    // the rest are handed out, so the disk is not left idle while JavaScript works through
    // a whole batch (at depth 32, whole batches ran at 60 % of qemu-img's rate).
    for (let n = 0; head !== tail && n < REAP_PER_TURN; n++) {
      const at = (head & this.cqMask) * CQE_SIZE;
      const tag = this.cqes.getUint32(at, true);
      const res = this.cqes.getInt32(at + 8, true);
      head = (head + 1) >>> 0;
      this.inFlight--;
      // The entry is consumed before its callback runs: one that throws leaves the ring consistent.
      this.cqHead[0] = head;
      // A tag from outside 1..entries is not one of ours: skipped.
      if (tag >= 1 && tag <= this.entries) this.settle(tag - 1, res);
    }
  }

  /** The kernel refused the submission itself: the queued requests fail with its error. */
  private failQueued(errno: number): void {
    // Only requests not yet handed over fail: the kernel owns the others (and their buffers).
    if (this.queued === 0) return;
    // Queued entries are the newest `queued` ones; take them back out of the ring.
    const tail = (this.sqTail[0]! - this.queued) >>> 0;
    this.sqTail[0] = tail;
    const slots: number[] = [];
    for (let i = 0; i < this.queued; i++) slots.push(this.sqes32[(((tail + i) & this.sqMask) * SQE_SIZE) / 4 + 8]! - 1);
    this.queued = 0;
    for (const slot of slots) this.settle(slot, -errno);
  }
}
