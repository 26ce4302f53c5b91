// The virtio-blk request trace's time of a doorbell: the poller thread's report time when a
// poller callback started the pass, else (eventfds watched on the main loop) the main thread's.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlkTracer, traceNow } from '../../../src/virtio/blk-trace.js';

test('a doorbell no poller thread reported counts as seen when the main thread saw it', () => {
  const tracer = new BlkTracer('virtio-blk-test');
  const before = traceNow();
  const doorbell = tracer.pass('doorbell');
  assert.equal(doorbell.pollerSeen, doorbell.mainSeen);
  assert.ok(doorbell.mainSeen >= before && doorbell.mainSeen <= traceNow());
  const trace = tracer.start(0, doorbell, 'read', 4096, 1);
  assert.equal(trace.pollerSeen, trace.mainSeen, 'the poller->main phase is 0, not missing');
  assert.ok(Number.isFinite(trace.pollerSeen), 'doorbell->interrupt has a start');
});

test('passes not started by a doorbell have no doorbell time', () => {
  const tracer = new BlkTracer('virtio-blk-test');
  for (const source of ['completion', 'timer', 'activate'] as const) {
    assert.ok(Number.isNaN(tracer.pass(source).pollerSeen), source);
  }
});
