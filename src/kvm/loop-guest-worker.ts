// Worker half of loop-guest.ts: runs the loop guest's vCPU (by fd number) until it halts or
// is kicked, timing KVM_RUN from inside this thread so message latency is not measured.
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { pthreadSelf } from './libc.js';
import { VcpuFd } from './vcpu.js';

export interface LoopWorkerInput {
  vcpuFd: number;
  mmapSize: number;
}

export type LoopWorkerMessage =
  | { type: 'ready'; thread: bigint }
  | { type: 'done'; halted: boolean; seconds: number; rcx: bigint }
  | { type: 'error'; message: string };

const input = workerData as LoopWorkerInput;
const port = parentPort!;
const vcpu = new VcpuFd(input.vcpuFd, 0, input.mmapSize, false);
try {
  port.postMessage({ type: 'ready', thread: pthreadSelf() } satisfies LoopWorkerMessage);
  const start = performance.now();
  const exit = vcpu.runOnce();
  const seconds = (performance.now() - start) / 1000;
  if (exit.reason !== 'hlt' && exit.reason !== 'intr') {
    throw new Error(`loop guest exited with ${exit.reason}, expected hlt`);
  }
  port.postMessage({ type: 'done', halted: exit.reason === 'hlt', seconds, rcx: vcpu.getRegs().rcx } satisfies LoopWorkerMessage);
} catch (err) {
  port.postMessage({ type: 'error', message: (err as Error).message } satisfies LoopWorkerMessage);
} finally {
  vcpu.close();
}
