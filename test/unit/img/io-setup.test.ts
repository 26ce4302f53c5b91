// What `img bench` must change in its environment to measure the I/O set-up it was asked for
// (libuv sizes its thread pool only when a process starts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IO_THREADS, ioSetupChanges, isAioEngine } from '../../../src/img/io-threads.js';

test('the thread-pool engine asks for a bigger pool unless one was set; io_uring needs nothing', () => {
  const pool = String(IO_THREADS);
  assert.deepEqual(ioSetupChanges({}, 'threads'), { UV_THREADPOOL_SIZE: pool });
  assert.deepEqual(ioSetupChanges({ UV_THREADPOOL_SIZE: '4' }, 'threads'), {});
  assert.deepEqual(ioSetupChanges({}, 'io_uring'), {});
});

test('engines are the names qemu-img uses, nothing else', () => {
  assert.ok(isAioEngine('io_uring') && isAioEngine('threads'));
  assert.ok(!isAioEngine('native') && !isAioEngine('toString') && !isAioEngine(''));
});
