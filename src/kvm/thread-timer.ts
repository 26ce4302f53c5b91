// A periodic signal aimed at one thread: a POSIX timer with SIGEV_THREAD_ID. A thread that
// runs KVM_RUN synchronously gets EINTR from it at every tick, so it can look at its event
// loop between guest slices (src/vmm/main-thread-vcpu.ts). The signal needs a handler, or it
// ends the process: kick.ts's installKickHandler() for SIGUSR2.
import { koffi } from './ffi.js';
import { lazyFunc, SyscallError } from './libc.js';

const gettidC = lazyFunc('int gettid(void)');
const timerCreateC = lazyFunc('int timer_create(int clockid, void *sevp, void *timerid)');
const timerSettimeC = lazyFunc('int timer_settime(void *timerid, int flags, void *newValue, void *oldValue)');
const timerDeleteC = lazyFunc('int timer_delete(void *timerid)');

const CLOCK_MONOTONIC = 1;
const SIGEV_THREAD_ID = 4;
/** struct sigevent on x86-64: sigev_value (8), sigev_signo (4), sigev_notify (4), then the union whose first int is the thread id. */
const SIGEVENT_BYTES = 64;
/** struct itimerspec: it_interval then it_value, each { tv_sec, tv_nsec } as 64-bit integers. */
const ITIMERSPEC_BYTES = 32;

export class ThreadTimer {
  private live = true;

  private constructor(private readonly id: bigint) {}

  /** Every `intervalMs`, send `signal` to the calling thread, until stop(). */
  static start(signal: number, intervalMs: number): ThreadTimer {
    const event = new DataView(new ArrayBuffer(SIGEVENT_BYTES));
    event.setInt32(8, signal, true);
    event.setInt32(12, SIGEV_THREAD_ID, true);
    event.setInt32(16, gettidC() as number, true);
    const idOut = new Uint8Array(8);
    if ((timerCreateC(CLOCK_MONOTONIC, new Uint8Array(event.buffer), idOut) as number) < 0) {
      throw new SyscallError('timer_create', koffi.errno(), `signal ${signal} to this thread`);
    }
    const timer = new ThreadTimer(new DataView(idOut.buffer).getBigUint64(0, true));
    const spec = new DataView(new ArrayBuffer(ITIMERSPEC_BYTES));
    const ns = BigInt(Math.round(intervalMs * 1e6));
    for (const at of [0, 16]) {
      spec.setBigInt64(at, ns / 1_000_000_000n, true);
      spec.setBigInt64(at + 8, ns % 1_000_000_000n, true);
    }
    if ((timerSettimeC(timer.id, 0, new Uint8Array(spec.buffer), null) as number) < 0) {
      const errno = koffi.errno();
      timer.stop();
      throw new SyscallError('timer_settime', errno, `every ${intervalMs} ms`);
    }
    return timer;
  }

  /** Deletes the timer (a tick already sent may still arrive, harmlessly). Idempotent. */
  stop(): void {
    if (!this.live) return;
    this.live = false;
    timerDeleteC(this.id);
  }
}
