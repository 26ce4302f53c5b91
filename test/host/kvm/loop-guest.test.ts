// The calibration loop guest on this machine's /dev/kvm: it must halt with RCX at 0, and a
// timeout must kick its vCPU (blocked in KVM_RUN in a worker thread) out with a partial count.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loopGuestCode, measureLoopRate } from '../../../src/kvm/loop-guest.js';

test('loop guest code is mov rcx, imm64; dec rcx; jnz back; hlt', () => {
  assert.deepEqual(
    [...loopGuestCode(0x0102030405)],
    [0x48, 0xb9, 0x05, 0x04, 0x03, 0x02, 0x01, 0x00, 0x00, 0x00, 0x48, 0xff, 0xc9, 0x75, 0xfb, 0xf4],
  );
});

test('a short loop runs to HLT with RCX == 0', { timeout: 60_000 }, async () => {
  const rate = await measureLoopRate(20_000, { timeoutMs: 50_000 });
  assert.equal(rate.completed, true);
  assert.equal(rate.finalRcx, 0n);
  assert.equal(rate.iterations, 20_000);
  assert.ok(rate.seconds > 0);
  assert.ok(Math.abs(rate.iterationsPerSecond - 20_000 / rate.seconds) < 1e-6 * rate.iterationsPerSecond);
});

test('a timeout kicks the vCPU out of KVM_RUN in its worker and reports a partial rate', { timeout: 60_000 }, async () => {
  const iterations = 1_000_000_000_000; // far more than any host finishes in the timeout
  const started = Date.now();
  const rate = await measureLoopRate(iterations, { timeoutMs: 300 });
  const elapsed = Date.now() - started;
  assert.equal(rate.completed, false);
  assert.ok(rate.iterations > 0 && rate.iterations < iterations, `partial count ${rate.iterations}`);
  assert.equal(rate.finalRcx, BigInt(iterations - rate.iterations));
  // The timeout clock starts before the worker does, so the guest ran for less than it, but ran.
  assert.ok(rate.seconds > 0 && rate.seconds * 1000 <= elapsed, `ran ${rate.seconds} s of ${elapsed} ms`);
  assert.ok(elapsed < 30_000, `kick took ${elapsed} ms to take effect`);
  assert.ok(rate.iterationsPerSecond > 0);
});

test('bad arguments fail with a clear message', async () => {
  await assert.rejects(measureLoopRate(0), /iterations must be a positive integer, got 0/);
  await assert.rejects(measureLoopRate(1.5), /iterations must be a positive integer, got 1.5/);
  await assert.rejects(measureLoopRate(10, { timeoutMs: -1 }), /timeoutMs must be positive, got -1/);
});
