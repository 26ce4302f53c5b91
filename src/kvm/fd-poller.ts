// Tells the main thread when file descriptors (ioeventfds, irqfd resample fds, sockets...)
// become readable, without blocking its event loop: a worker thread blocks in epoll_wait and
// posts ready descriptors back, and the callback runs on the main thread.
//
// Each descriptor is registered EPOLLONESHOT: after one report it stays disarmed until its
// callback has run, then is re-armed. So an eventfd the callback drains is reported once per
// burst of writes, and a callback that does not drain its fd is called again (level-triggered)
// rather than flooding the thread with duplicate messages while it is busy.
// Registrations carry a token rather than the fd number, so a late report for an fd that was
// removed (and whose number was reused) is recognised and dropped.
import { Worker } from 'node:worker_threads';
import {
  close, EFD_NONBLOCK, epollCreate1, epollCtl, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD, EPOLLIN, EPOLLONESHOT,
  eventfd, SyscallError, write,
} from './libc.js';

export interface PollerWorkerInput {
  epollFd: number;
  /** Wait at most this long per epoll_wait, so the thread notices process shutdown. */
  waitMs: number;
  /** Element 0 non-zero: stamp each report with the time it was seen (see stampReports). */
  stamp: Int32Array;
}

/** epoll token of the poller's wake eventfd; watched fds get tokens from 1 up. */
export const WAKE_TOKEN = 0n;

export type FdCallback = (fd: number) => void;

interface Watch {
  fd: number;
  token: bigint;
  callback: FdCallback;
}

const ARMED = EPOLLIN | EPOLLONESHOT;

// Shared with every poller thread, so one switch reaches pollers started before it too.
const stamp = new Int32Array(new SharedArrayBuffer(4));

/**
 * Have the poller threads stamp each report with the time they saw it, for lastReportAt().
 * Off by default: only request tracing reads the stamps, and a clock read per report is
 * not free on the doorbell path.
 */
export function stampReports(on: boolean): void {
  Atomics.store(stamp, 0, on ? 1 : 0);
}

let reportAt: number | undefined;
/**
 * While a poller callback runs, and reports are stamped (stampReports): when the worker
 * thread saw the fd ready (ms since the epoch, sub-millisecond, comparable to
 * performance.timeOrigin + performance.now()). Undefined otherwise. For tracing.
 */
export function lastReportAt(): number | undefined {
  return reportAt;
}

export class FdPoller {
  private readonly byFd = new Map<number, Watch>();
  private readonly byToken = new Map<bigint, Watch>();
  private nextToken = 1n;
  private readonly epollFd: number;
  private readonly wakeFd: number;
  private readonly worker: Worker;
  private readonly exited: Promise<void>;
  private closing: Promise<void> | undefined;

  constructor() {
    this.epollFd = epollCreate1();
    this.wakeFd = eventfd(0, EFD_NONBLOCK);
    epollCtl(this.epollFd, EPOLL_CTL_ADD, this.wakeFd, EPOLLIN, WAKE_TOKEN);
    const input: PollerWorkerInput = { epollFd: this.epollFd, waitMs: 1000, stamp };
    // Named through its directory: from the run bundle (dist/src/vmm/) this module's URL is
    // the bundle's, one directory over.
    this.worker = new Worker(new URL('../kvm/fd-poller-worker.js', import.meta.url), { workerData: input });
    // The poller alone must not keep the process alive.
    this.worker.unref();
    this.worker.on('message', (report: Array<bigint | number>) => this.dispatch(report));
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
  }

  /**
   * Calls `callback(fd)` on this thread each time `fd` becomes readable. The callback should
   * drain the fd (read the eventfd); an exception it throws is not caught (like an event
   * listener's), but the fd is re-armed first.
   */
  add(fd: number, callback: FdCallback): void {
    if (this.closing) throw new Error(`fd poller is closed: cannot watch fd ${fd}`);
    if (this.byFd.has(fd)) throw new Error(`fd poller: fd ${fd} is already watched`);
    const watch: Watch = { fd, token: this.nextToken++, callback };
    try {
      epollCtl(this.epollFd, EPOLL_CTL_ADD, fd, ARMED, watch.token);
    } catch (err) {
      if (err instanceof SyscallError) throw new Error(`fd poller: cannot watch fd ${fd}: ${err.message}`);
      throw err;
    }
    this.byFd.set(fd, watch);
    this.byToken.set(watch.token, watch);
  }

  /** Stops watching `fd` (before the caller closes it). Unknown fds are ignored. */
  remove(fd: number): void {
    const watch = this.byFd.get(fd);
    if (!watch) return;
    this.byFd.delete(fd);
    this.byToken.delete(watch.token);
    try {
      epollCtl(this.epollFd, EPOLL_CTL_DEL, fd, 0);
    } catch {
      // Already closed by its owner: the kernel dropped it from the set with the last reference.
    }
  }

  /** Whether `fd` is being watched. */
  has(fd: number): boolean {
    return this.byFd.has(fd);
  }

  /** Stops the worker and releases the epoll set; resolves once the thread has ended. */
  close(): Promise<void> {
    if (!this.closing) {
      for (const fd of [...this.byFd.keys()]) this.remove(fd);
      // Keep the process alive until the thread has stopped and its exit event has come
      // back: ref before waking it, or a fast exit can race an unref'd exit notification.
      this.worker.ref();
      const one = new Uint8Array(8);
      one[0] = 1;
      write(this.wakeFd, one);
      this.closing = this.exited.then(() => {
        close(this.epollFd);
        close(this.wakeFd);
      });
    }
    return this.closing;
  }

  /** A report: the tokens of the ready fds, then, when stamped, the time (a number). */
  private dispatch(report: Array<bigint | number>): void {
    let failure: { error: unknown } | undefined;
    const last = report[report.length - 1];
    const stamped = typeof last === 'number';
    reportAt = stamped ? last : undefined;
    const tokens = stamped ? report.length - 1 : report.length;
    for (let i = 0; i < tokens; i++) {
      const token = report[i] as bigint;
      const watch = this.byToken.get(token);
      if (!watch) continue; // removed since the worker saw it
      try {
        watch.callback(watch.fd);
      } catch (error) {
        // Finish the batch (every reported fd must be re-armed), then rethrow the first error.
        failure ??= { error };
      }
      // Re-arm unless the callback removed it.
      if (this.byToken.get(token) === watch) {
        try {
          epollCtl(this.epollFd, EPOLL_CTL_MOD, watch.fd, ARMED, token);
        } catch {
          // Closed by its owner without remove(): forget it.
          this.byFd.delete(watch.fd);
          this.byToken.delete(token);
        }
      }
    }
    reportAt = undefined;
    if (failure) throw failure.error;
  }
}
