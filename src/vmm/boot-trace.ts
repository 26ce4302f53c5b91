// TSVIRT_BOOT_TRACE=1 prints where the time from process start to the first KVM_RUN goes:
// one stderr line per step, `tsvirt-trace <ms since process start> <step>`. It is how the
// boot benchmark's figures were taken apart (docs/design.md); off, it costs one branch.
// Written with writeSync so that lines from vCPU threads are not queued behind the main
// thread's event loop, and so the time printed is the time the step happened.
import { writeSync } from 'node:fs';
import { isMainThread, workerData } from 'node:worker_threads';

const enabled = Boolean(process.env.TSVIRT_BOOT_TRACE);

// Worker threads have their own performance.timeOrigin (the thread's start). A vCPU thread
// gets the process's origin with its worker data (vcpu-threads.cts), so every line is
// measured from the same instant.
const origin = isMainThread ? performance.timeOrigin : (workerData as { traceOrigin?: number } | null)?.traceOrigin ?? performance.timeOrigin;

export function bootTrace(step: string): void {
  if (!enabled) return;
  const ms = performance.timeOrigin + performance.now() - origin;
  writeSync(2, `tsvirt-trace ${ms.toFixed(1)} ${step}\n`);
}

/** Whether tracing is on (callers skip building expensive step names otherwise). */
export const bootTraceEnabled = enabled;
