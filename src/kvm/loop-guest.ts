// The calibration guest: a 64-bit micro-guest counting RCX down from `iterations` with
// `dec rcx; jnz` and then halting, timed around KVM_RUN. It tells how fast this host's KVM
// runs guest code (about 1 M iterations/s where KVM emulates, hundreds of millions natively).
// The vCPU runs in a worker thread so a timeout can kick it out of KVM_RUN (see kick.ts);
// RCX at that point gives the iterations done, hence a partial rate.
import { Worker } from 'node:worker_threads';
import { installKickHandler, kickThread } from './kick.js';
import type { LoopWorkerInput, LoopWorkerMessage } from './loop-guest-worker.js';
import { createMicroVm, GuestCode } from './microguest.js';

export interface LoopRate {
  /** Iterations the guest completed (all of them unless interrupted). */
  iterations: number;
  seconds: number;
  iterationsPerSecond: number;
  /** Whether the guest reached HLT before the timeout. */
  completed: boolean;
  /** RCX when the vCPU stopped: 0 after HLT, the iterations left when interrupted. */
  finalRcx: bigint;
}

/** Interval between repeated kicks while waiting for an interrupted vCPU to come back. */
const KICK_INTERVAL_MS = 20;
/** How long a kicked vCPU may take to leave KVM_RUN before we give up on it. */
const KICK_GIVE_UP_MS = 10_000;

/** The loop guest's code: mov rcx, iterations; L: dec rcx; jnz L; hlt. */
export function loopGuestCode(iterations: number): Uint8Array {
  const code = new GuestCode('long').movRcxImm64(BigInt(iterations));
  const loop = code.offset;
  return code.decCounter().jnzBack(loop).hlt().bytes();
}

export async function measureLoopRate(
  iterations: number,
  options: { timeoutMs?: number } = {},
): Promise<LoopRate> {
  if (!Number.isSafeInteger(iterations) || iterations < 1) {
    throw new Error(`loop guest: iterations must be a positive integer, got ${iterations}`);
  }
  const { timeoutMs } = options;
  if (timeoutMs !== undefined && !(timeoutMs > 0)) {
    throw new Error(`loop guest: timeoutMs must be positive, got ${timeoutMs}`);
  }
  installKickHandler();
  const micro = createMicroVm({ mode: 'long', code: loopGuestCode(iterations) });
  try {
    const input: LoopWorkerInput = { vcpuFd: micro.vcpu.fd, mmapSize: micro.vcpu.mmapSize };
    const worker = new Worker(new URL('./loop-guest-worker.js', import.meta.url), { workerData: input });
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    const result = await new Promise<{ halted: boolean; seconds: number; rcx: bigint }>((resolve, reject) => {
      let thread: bigint | undefined;
      let timer: NodeJS.Timeout | undefined;
      let kicker: NodeJS.Timeout | undefined;
      let giveUp: NodeJS.Timeout | undefined;
      const finish = (): void => {
        clearTimeout(timer);
        clearInterval(kicker);
        clearTimeout(giveUp);
      };
      const kick = (): void => {
        if (thread !== undefined) kickThread(thread);
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          // immediate_exit covers a kick that lands before the worker enters KVM_RUN.
          micro.vcpu.immediateExit = true;
          kick();
          kicker = setInterval(kick, KICK_INTERVAL_MS);
          giveUp = setTimeout(() => {
            finish();
            reject(new Error(`loop guest: vCPU did not leave KVM_RUN within ${KICK_GIVE_UP_MS} ms of being kicked`));
          }, KICK_GIVE_UP_MS);
        }, timeoutMs);
      }
      worker.on('message', (msg: LoopWorkerMessage) => {
        if (msg.type === 'ready') thread = msg.thread;
        else if (msg.type === 'error') { finish(); reject(new Error(`loop guest: ${msg.message}`)); }
        else { finish(); resolve(msg); }
      });
      worker.on('error', (err) => { finish(); reject(err); });
      worker.on('exit', (code) => {
        finish();
        reject(new Error(`loop guest: worker exited (code ${code}) without a result`));
      });
    });
    // The worker unmaps its view of the run page as it ends; free the VM only after that.
    await exited;
    const done = iterations - Number(result.rcx);
    return {
      iterations: done,
      seconds: result.seconds,
      iterationsPerSecond: result.seconds > 0 ? done / result.seconds : 0,
      completed: result.halted,
      finalRcx: result.rcx,
    };
  } finally {
    micro.close();
  }
}
