// A one-vCPU machine runs its vCPU on the main thread until the vCPU's thread is up
// (src/vmm/main-thread-vcpu.ts). A vCPU thread made slow on purpose (support/
// slow-vcpu-worker.ts) shows each part: the guest starts at once, pauses and resumes,
// resets and powers off there, the thread takes over, and a guest that never exits still
// leaves the event loop turning.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Machine } from '../../../src/vmm/machine.js';
import { GUEST_ADDRESS, powerOffGuest, resetGuest, scratchLoopGuest, spinGuest } from './micro-guests.js';
import { waitFor } from '../../support/wait.js';

const TIMEOUT = 20_000;
const slowWorker = new URL('./support/slow-vcpu-worker.js', import.meta.url);

function create(code: Uint8Array): Promise<Machine> {
  return Machine.create({ cpus: 1, memory: '32M' }, { rawBoot: { code, address: GUEST_ADDRESS }, workerUrl: slowWorker });
}

test('one vCPU: the guest starts on the main thread, pauses and resumes there, and its thread takes over', { timeout: 60_000 }, async () => {
  const m = await create(scratchLoopGuest());
  try {
    await m.start();
    await waitFor('exits on the main thread', () => m.exitStats().mainThread > 100, TIMEOUT);
    assert.equal(m.exitStats().local, 0, 'the thread is not up yet');
    assert.equal(m.cpus()[0]!.threadId, process.pid, 'QMP reports the main thread as the vCPU\'s');
    await m.pause();
    const paused = m.exitStats().mainThread;
    await sleep(50);
    assert.equal(m.exitStats().mainThread, paused, 'a paused vCPU takes no exits');
    await m.resume();
    await waitFor('exits again after resume', () => m.exitStats().mainThread > paused, TIMEOUT);
    await waitFor('the thread took over', () => m.exitStats().local > 100, TIMEOUT);
    const handedOver = m.exitStats().mainThread;
    await sleep(100);
    assert.equal(m.exitStats().mainThread, handedOver, 'no exits on the main thread once the thread has the vCPU');
    assert.equal(m.exitStats().forwarded, 0);
    const threadId = m.cpus()[0]!.threadId;
    assert.ok(threadId > 0 && threadId !== process.pid, `the vCPU thread's own id once it has the vCPU: ${threadId}`);
  } finally {
    await m.stop();
  }
  assert.deepEqual(await m.waitForExit(), { code: 0, reason: 'host-stop' });
});

test('one vCPU on the main thread: a guest power-off ends the machine with exit 0', { timeout: 60_000 }, async () => {
  const m = await create(powerOffGuest('bye'));
  let out = '';
  m.console.on('data', (d: Buffer) => { out += d.toString('latin1'); });
  await m.start();
  assert.deepEqual(await m.waitForExit(), { code: 0, reason: 'guest-shutdown' });
  assert.equal(out, 'bye');
  assert.ok(m.exitStats().mainThread >= 4, 'the console and the power-off were taken on the main thread');
  assert.equal(m.exitStats().local, 0);
});

test('one vCPU on the main thread: a guest reset rebuilds the machine and the guest runs again, then on its thread', { timeout: 60_000 }, async () => {
  const m = await create(resetGuest('R'));
  let out = '';
  let resets = 0;
  m.console.on('data', (d: Buffer) => { out += d.toString('latin1'); });
  m.on('reset', () => { resets++; });
  try {
    await m.start();
    await waitFor('two resets on the main thread', () => resets >= 2, TIMEOUT);
    assert.equal(m.exitStats().local, 0);
    await waitFor('the guest printing on its thread', () => m.exitStats().local > 0, TIMEOUT);
    const handedOver = resets;
    await waitFor('a reset on the thread', () => resets > handedOver, TIMEOUT);
    assert.match(out, /^R+$/);
    assert.ok(out.length >= resets, `one "R" per boot: ${out.length} for ${resets} resets`);
  } finally {
    await m.stop();
  }
});

test('one vCPU on the main thread: a guest that never exits leaves the event loop turning', { timeout: 60_000 }, async () => {
  const m = await create(spinGuest());
  try {
    await m.start();
    const before = performance.now();
    await sleep(30);
    // Timers fire on time although the main thread is the one running the guest.
    assert.ok(performance.now() - before < 1000, `a 30 ms timer took ${performance.now() - before} ms`);
    await m.pause();
    assert.equal(m.runState(), 'paused');
    await m.resume();
    assert.equal(m.runState(), 'running');
  } finally {
    await m.stop();
  }
  assert.deepEqual(m.exitStats(), { local: 0, forwarded: 0, mainThread: 0 });
});
