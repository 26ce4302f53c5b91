// Kicking a vCPU that is inside KVM_RUN in a worker thread: the signal alone (no
// immediate_exit) must make KVM_RUN return EINTR, leaving the guest's state intact.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { installKickHandler, kickThread } from '../../../src/kvm/kick.js';
import { loopGuestCode } from '../../../src/kvm/loop-guest.js';
import type { LoopWorkerInput, LoopWorkerMessage } from '../../../src/kvm/loop-guest-worker.js';
import { createMicroVm } from '../../../src/kvm/microguest.js';

test('SIGUSR2 via pthread_kill interrupts KVM_RUN in a worker thread', { timeout: 60_000 }, async () => {
  installKickHandler();
  const iterations = 1_000_000_000_000n;
  const micro = createMicroVm({ mode: 'long', code: loopGuestCode(Number(iterations)) });
  try {
    const input: LoopWorkerInput = { vcpuFd: micro.vcpu.fd, mmapSize: micro.vcpu.mmapSize };
    const workerUrl = new URL('../../../src/kvm/loop-guest-worker.js', import.meta.url);
    const worker = new Worker(workerUrl, { workerData: input });
    const exited = new Promise((resolve) => worker.once('exit', resolve));
    const messages: LoopWorkerMessage[] = [];
    worker.on('message', (m: LoopWorkerMessage) => messages.push(m));
    const waitFor = async (what: string, cond: () => boolean, ms: number, each?: () => void): Promise<void> => {
      const deadline = Date.now() + ms;
      while (!cond()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        each?.();
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    };
    await waitFor('the worker to start', () => messages.length > 0, 20_000);
    const ready = messages[0]!;
    assert.equal(ready.type, 'ready');
    assert.ok(ready.type === 'ready' && typeof ready.thread === 'bigint');
    // Let it get well into KVM_RUN, then kick without touching immediate_exit.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(micro.vcpu.immediateExit, false);
    await waitFor('the kicked vCPU to report', () => messages.length > 1, 20_000, () => kickThread(ready.thread as bigint));
    const done = messages[1]!;
    assert.ok(done.type === 'done', `worker said ${JSON.stringify(done, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
    assert.equal(done.halted, false, 'interrupted, not halted');
    assert.ok(done.rcx > 0n && done.rcx < iterations, `RCX ${done.rcx} shows the loop ran and was stopped midway`);
    await exited;
    // The guest state survived the interruption: RCX is where the loop stopped.
    assert.equal(micro.vcpu.getRegs().rcx, done.rcx);
  } finally {
    micro.close();
  }
});
