// vCPU 0 of a one-vCPU machine runs on the main thread until its own thread is up.
//
// A vCPU thread is a Node worker: its isolate boots in about 20 ms on a host that runs
// guests natively and in 0.4-0.6 s under nested virtualization, mostly Node compiling its
// own modules for the new isolate (docs/design.md, boot time). The guest need not wait for
// that: the main thread calls KVM_RUN itself and serves the exits in place, through the same
// devices the thread's forwarded exits reach. A thread-directed timer interrupts KVM_RUN
// every SLICE_MS, so the event loop still turns (the thread's "ready" message, timers,
// lifecycle calls) while the guest runs. Once the thread is ready the machine stops this
// runner between two KVM_RUN calls and hands the vCPU over (machine.ts).
//
// Everything here happens on the main thread, so nothing the machine does can meet the vCPU
// inside KVM_RUN: a lifecycle call (pause, reset, stop) runs only while the loop waits for
// its next turn, and stop() only has to tell it not to go on.
import type { VcpuExit, VcpuFd } from '../kvm/vcpu.js';
import { installKickHandler, KICK_SIGNAL_NUMBER } from '../kvm/kick.js';
import { ThreadTimer } from '../kvm/thread-timer.js';
import { bootTrace } from './boot-trace.js';
import { runsOnAfter } from './vcpu-channel.js';

/** How long the guest runs before the event loop gets a turn, at most. */
export const SLICE_MS = 10;

export interface MainThreadVcpuHooks {
  /** A port or MMIO access, to complete before the next KVM_RUN. */
  serve(exit: Extract<VcpuExit, { reason: 'io' | 'mmio' }>): void;
  /** An exit that stops the vCPU (shutdown, a system event, an error exit): the runner ends. */
  stopped(exit: VcpuExit): void;
  /** KVM_RUN itself failed: the runner ends. */
  failed(err: Error): void;
}

export class MainThreadVcpu {
  private stopping = false;
  private readonly finished: Promise<void>;

  constructor(private readonly vcpu: VcpuFd, private readonly hooks: MainThreadVcpuHooks) {
    installKickHandler(); // the timer's signal must not end the process
    this.finished = this.loop();
  }

  /** Stops after the current slice; resolves once the vCPU is out of KVM_RUN for good. */
  stop(): Promise<void> {
    this.stopping = true;
    return this.finished;
  }

  private async loop(): Promise<void> {
    // Started from a lifecycle call: the first slice waits for the next turn, so that
    // call completes first (as a vCPU thread's RUN takes effect asynchronously too).
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (this.stopping) return;
    const timer = ThreadTimer.start(KICK_SIGNAL_NUMBER, SLICE_MS);
    bootTrace('vcpu0: first KVM_RUN (main thread)');
    try {
      let sliceStart = performance.now();
      while (!this.stopping) {
        let exit: VcpuExit;
        try {
          exit = this.vcpu.runOnce();
        } catch (err) {
          if ((err as { code?: string }).code === 'EAGAIN') continue;
          this.hooks.failed(err as Error);
          return;
        }
        if (exit.reason === 'io' || exit.reason === 'mmio') this.hooks.serve(exit);
        else if (!runsOnAfter(exit)) {
          this.hooks.stopped(exit);
          return;
        }
        if (exit.reason === 'intr' || performance.now() - sliceStart >= SLICE_MS) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          sliceStart = performance.now();
        }
      }
    } finally {
      timer.stop();
    }
  }
}
