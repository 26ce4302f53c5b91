import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteRing } from '../../../src/vmm/byte-ring.js';

test('bytes come out in order, across the wrap-around of the buffer', () => {
  const ring = ByteRing.create(8);
  for (let round = 0; round < 5; round++) {
    for (let i = 0; i < 6; i++) assert.equal(ring.push(round * 10 + i), true);
    assert.deepEqual([...ring.drain()], [0, 1, 2, 3, 4, 5].map((i) => round * 10 + i));
  }
  assert.equal(ring.drain().length, 0);
});

test('a full ring makes the producer wait, then drop after its timeout', () => {
  const ring = ByteRing.create(4);
  for (let i = 0; i < 4; i++) assert.equal(ring.push(i), true);
  const start = Date.now();
  assert.equal(ring.push(9, 30), false);
  assert.ok(Date.now() - start >= 25);
  assert.deepEqual([...ring.drain()], [0, 1, 2, 3]);
  assert.throws(() => ByteRing.create(6), /not a power of two/);
});

test('a second view of the same shared buffer sees the producer\'s bytes', async () => {
  const producer = ByteRing.create(16);
  const consumer = new ByteRing(producer.buffer);
  const waiting = consumer.waitForData(5000);
  producer.push(0x41);
  await waiting;
  assert.deepEqual([...consumer.drain()], [0x41]);
});
