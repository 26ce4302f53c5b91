// The libc calls the KVM layer needs, bound through koffi, and the errors they raise.
// Every wrapper here checks the C return value and throws a SyscallError that names
// the call and the errno, so callers never see a bare -1. Pointers are BigInt (koffi 3).
// koffi loads in worker_threads too, so every thread that imports this module gets
// its own bindings to the same process-wide libc.
import { constants as osConstants } from 'node:os';
import { koffi } from './ffi.js';

const libc = koffi.load('libc.so.6');

/** errno number -> symbolic name (EEXIST, ...), from Node's own table for this platform. */
const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(osConstants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

const strerrorC = lazyFunc('const char *strerror(int errnum)');

/** The C library's description of an errno ("File exists"). */
export function strerror(errno: number): string {
  return String(strerrorC(errno) ?? `errno ${errno}`);
}

/** A failed system call: `call` names it, `errno` says why. */
export class SyscallError extends Error {
  readonly code: string;
  constructor(
    readonly call: string,
    readonly errno: number,
    detail?: string,
  ) {
    super(`${call} failed: ${errnoName(errno)} (${strerror(errno)})${detail ? `: ${detail}` : ''}`);
    this.name = 'SyscallError';
    this.code = errnoName(errno);
  }
}

/** A failed KVM ioctl, named by its KVM_* constant: `KVM_CREATE_VCPU failed: EEXIST (File exists)`. */
export class KvmError extends SyscallError {
  constructor(
    readonly ioctl: string,
    errno: number,
    detail?: string,
  ) {
    super(ioctl, errno, detail);
    this.name = 'KvmError';
  }
}

// Linux x86-64 constants (asm-generic and x86 headers).
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_TRUNC = 0o1000;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;

export const MADV_DONTNEED = 4;
export const MADV_REMOVE = 9;
export const MADV_MERGEABLE = 12;
export const MADV_UNMERGEABLE = 13;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
export const MADV_DONTDUMP = 16;

export const MFD_CLOEXEC = 0x0001;
export const MFD_ALLOW_SEALING = 0x0002;
export const MFD_HUGETLB = 0x0004;
/** MFD_HUGETLB page size selectors: log2(page size) << 26. */
export const MFD_HUGE_2MB = 21 << 26;
export const MFD_HUGE_1GB = 30 << 26;

export const EFD_SEMAPHORE = 0o1;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;

export const EPOLL_CLOEXEC = 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
/** Report one event, then disable the fd until re-armed with EPOLL_CTL_MOD. */
export const EPOLLONESHOT = 1 << 30;
/** struct epoll_event is packed on x86-64: u32 events, u64 data. */
export const EPOLL_EVENT_SIZE = 12;

export const EINTR = osConstants.errno.EINTR;
export const EAGAIN = osConstants.errno.EAGAIN;
export const E2BIG = osConstants.errno.E2BIG;
const ENXIO = osConstants.errno.ENXIO;
export const SEEK_END = 2;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;

/** The MAP_FAILED pointer ((void *)-1) as koffi returns it. */
const MAP_FAILED = 0xffffffffffffffffn;

type LibcFunction = ReturnType<typeof libc.func>;

/**
 * A libc function declared on its first call. koffi parses each prototype when it is
 * declared, about a millisecond apiece under nested virtualization, and every thread that
 * loads this module (the main thread and each vCPU thread, on the way to the guest's first
 * KVM_RUN) would otherwise pay for all of them, used or not.
 */
export function lazyFunc(prototype: string): LibcFunction {
  let declared: LibcFunction | undefined;
  return ((...args: unknown[]) => (declared ??= libc.func(prototype))(...args)) as LibcFunction;
}

const openC = lazyFunc('int open(const char *path, int flags, ...)');
const closeC = lazyFunc('int close(int fd)');
const readC = lazyFunc('intptr_t read(int fd, void *buf, size_t count)');
const writeC = lazyFunc('intptr_t write(int fd, const void *buf, size_t count)');
const ioctlC = lazyFunc('int ioctl(int fd, unsigned long request, ...)');
const mmapC = lazyFunc('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)');
const munmapC = lazyFunc('int munmap(void *addr, size_t length)');
const madviseC = lazyFunc('int madvise(void *addr, size_t length, int advice)');
const memfdCreateC = lazyFunc('int memfd_create(const char *name, unsigned int flags)');
const ftruncateC = lazyFunc('int ftruncate(int fd, int64_t length)');
const fallocateC = lazyFunc('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
const eventfdC = lazyFunc('int eventfd(unsigned int initval, int flags)');
const fcntlC = lazyFunc('int fcntl(int fd, int cmd, ...)');
const epollCreate1C = lazyFunc('int epoll_create1(int flags)');
const epollCtlC = lazyFunc('int epoll_ctl(int epfd, int op, int fd, void *event)');
const epollWaitC = lazyFunc('int epoll_wait(int epfd, void *events, int maxevents, int timeout)');
const pthreadSelfC = lazyFunc('void *pthread_self(void)');
const pthreadKillC = lazyFunc('int pthread_kill(void *thread, int sig)');
const getpidC = lazyFunc('int getpid(void)');
const lseekC = lazyFunc('int64_t lseek(int fd, int64_t offset, int whence)');

// Every descriptor made here (open, memfd, eventfd, epoll) is close-on-exec, so child
// processes the stack spawns (QEMU for comparisons, helpers) never inherit VM or RAM fds.

function check(call: string, result: number, detail?: string): number {
  if (result < 0) throw new SyscallError(call, koffi.errno(), detail);
  return result;
}

export function open(path: string, flags: number, mode = 0o600): number {
  return check('open', openC(path, flags | O_CLOEXEC, 'uint32_t', mode) as number, path);
}

export function close(fd: number): void {
  check('close', closeC(fd) as number, `fd ${fd}`);
}

/** One read(2); returns the byte count (0 at end of file). */
export function read(fd: number, into: Uint8Array): number {
  return check('read', Number(readC(fd, into, into.byteLength)), `fd ${fd}`);
}

/** One read(2) that reports EAGAIN (non-blocking fd, nothing ready) as -1 instead of throwing. */
export function readNonBlocking(fd: number, into: Uint8Array): number {
  const n = Number(readC(fd, into, into.byteLength));
  if (n >= 0) return n;
  const errno = koffi.errno();
  if (errno === EAGAIN) return -1;
  throw new SyscallError('read', errno, `fd ${fd}`);
}

export function write(fd: number, data: Uint8Array): number {
  return check('write', Number(writeC(fd, data, data.byteLength)), `fd ${fd}`);
}

/** ioctl with an integer argument (or none). `name` is the request's KVM_* name for errors. */
export function ioctlValue(fd: number, request: number, value: number | bigint, name: string): number {
  const result = ioctlC(fd, request, 'unsigned long', value) as number;
  if (result < 0) throw new KvmError(name, koffi.errno());
  return result;
}

/** ioctl whose argument points at `arg` (the kernel reads and/or writes it in place). */
export function ioctlPointer(fd: number, request: number, arg: Uint8Array, name: string): number {
  const result = ioctlC(fd, request, 'void *', arg) as number;
  if (result < 0) throw new KvmError(name, koffi.errno());
  return result;
}

/** ioctl returning -errno instead of throwing, for callers that treat some errnos as normal (EINTR, E2BIG). */
export function ioctlPointerRaw(fd: number, request: number, arg: Uint8Array | null): number {
  const result = arg === null
    ? (ioctlC(fd, request, 'unsigned long', 0) as number)
    : (ioctlC(fd, request, 'void *', arg) as number);
  return result < 0 ? -koffi.errno() : result;
}

/** mmap(2); returns the mapping's address. */
export function mmap(length: number, prot: number, flags: number, fd: number, offset = 0, address = 0n): bigint {
  const p = mmapC(address === 0n ? null : address, length, prot, flags, fd, offset) as bigint | null;
  if (p === null || p === MAP_FAILED) {
    throw new SyscallError('mmap', koffi.errno(), `${length} bytes of fd ${fd}`);
  }
  return BigInt(p);
}

/**
 * mmap() at an address that is a multiple of `alignment` (a power of two): a larger range is
 * reserved without access, the mapping is placed over its aligned part, and the rest is
 * unmapped. The kernel aligns only hugetlb mappings by itself.
 */
export function mmapAligned(length: number, alignment: number, prot: number, flags: number, fd: number): bigint {
  const reserved = mmap(length + alignment, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
  const align = BigInt(alignment);
  const start = (reserved + align - 1n) & ~(align - 1n);
  try {
    mmap(length, prot, flags | MAP_FIXED, fd, 0, start);
  } catch (err) {
    munmap(reserved, length + alignment);
    throw err;
  }
  const head = Number(start - reserved);
  if (head > 0) munmap(reserved, head);
  const tail = alignment - head;
  if (tail > 0) munmap(start + BigInt(length), tail);
  return start;
}

export function munmap(address: bigint, length: number): void {
  check('munmap', munmapC(address, length) as number);
}

export function madvise(address: bigint, length: number, advice: number): void {
  check('madvise', madviseC(address, length, advice) as number, `advice ${advice}`);
}

export function memfdCreate(name: string, flags: number): number {
  return check('memfd_create', memfdCreateC(name, flags | MFD_CLOEXEC) as number, name);
}

export function ftruncate(fd: number, length: number): void {
  check('ftruncate', ftruncateC(fd, length) as number, `fd ${fd} to ${length} bytes`);
}

export function fallocate(fd: number, mode: number, offset: number, length: number): void {
  check('fallocate', fallocateC(fd, mode, offset, length) as number, `fd ${fd}, ${length} bytes at ${offset}`);
}

export function eventfd(initial: number, flags: number): number {
  return check('eventfd', eventfdC(initial, flags | EFD_CLOEXEC) as number);
}

const F_DUPFD_CLOEXEC = 1030;

/** A second, close-on-exec descriptor for the same open file (fcntl F_DUPFD_CLOEXEC). */
export function dup(fd: number): number {
  return check('fcntl(F_DUPFD_CLOEXEC)', fcntlC(fd, F_DUPFD_CLOEXEC, 'int', 0) as number, `fd ${fd}`);
}

export function epollCreate1(): number {
  return check('epoll_create1', epollCreate1C(EPOLL_CLOEXEC) as number);
}

/** epoll_ctl; `data` (default: the fd) comes back with each event for this fd. */
export function epollCtl(epfd: number, op: number, fd: number, events: number, data: bigint = BigInt(fd)): void {
  const ev = new Uint8Array(EPOLL_EVENT_SIZE);
  const view = new DataView(ev.buffer);
  view.setUint32(0, events, true);
  view.setBigUint64(4, data, true);
  check('epoll_ctl', epollCtlC(epfd, op, fd, ev) as number, `fd ${fd}`);
}

/** epoll_wait into `events` (a multiple of EPOLL_EVENT_SIZE bytes); returns the count, or -EINTR. */
export function epollWait(epfd: number, events: Uint8Array, timeoutMs: number): number {
  const n = epollWaitC(epfd, events, Math.floor(events.byteLength / EPOLL_EVENT_SIZE), timeoutMs) as number;
  if (n >= 0) return n;
  const errno = koffi.errno();
  if (errno === EINTR) return -EINTR;
  throw new SyscallError('epoll_wait', errno, `epoll fd ${epfd}`);
}

/** The calling thread's pthread_t (valid for pthread_kill from any thread of the process). */
export function pthreadSelf(): bigint {
  return BigInt(pthreadSelfC() as bigint);
}

export function pthreadKill(thread: bigint, signal: number): void {
  const result = pthreadKillC(thread, signal) as number;
  // pthread_kill returns the error number instead of setting errno.
  if (result !== 0) throw new SyscallError('pthread_kill', result, `signal ${signal}`);
}

/** lseek(2): the resulting offset, or -1n when the call failed (errno says why). */
export function lseek(fd: number, offset: bigint, whence: number): bigint {
  return BigInt(lseekC(fd, offset, whence) as number | bigint);
}

/**
 * lseek(2) on any descriptor with SEEK_DATA or SEEK_HOLE: the offset found; -1n when there is
 * no data at or after `offset` (ENXIO), -2n when the call failed otherwise (nothing is known).
 */
export function seekDataOrHole(fd: number, offset: bigint, what: 'data' | 'hole'): bigint {
  const r = lseek(fd, offset, what === 'data' ? SEEK_DATA : SEEK_HOLE);
  return r >= 0n ? r : koffi.errno() === ENXIO ? -1n : -2n;
}

export function getpid(): number {
  return getpidC() as number;
}

/** An ArrayBuffer over `length` bytes of native memory at `address` (no copy). */
export function nativeView(address: bigint, length: number): ArrayBuffer {
  return koffi.view(address, length);
}
