// What `img bench` must change in its environment to measure the I/O set-up it was asked for
// (libuv reads these variables only when a process starts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IO_THREADS, ioSetupChanges, usingIoUring } from '../../../src/img/io-threads.js';

test('io_uring use is read from UV_USE_IO_URING as libuv reads it', () => {
  assert.equal(usingIoUring({}), false);
  assert.equal(usingIoUring({ UV_USE_IO_URING: '1' }), true);
  assert.equal(usingIoUring({ UV_USE_IO_URING: '0' }), false);
  assert.equal(usingIoUring({ UV_USE_IO_URING: 'yes' }), false);
  assert.equal(usingIoUring({ UV_USE_IO_URING: '2' }), true);
});

test('bench asks for a bigger pool unless one was set, and for the engine -i names', () => {
  const pool = String(IO_THREADS);
  assert.deepEqual(ioSetupChanges({}), { UV_THREADPOOL_SIZE: pool });
  assert.deepEqual(ioSetupChanges({ UV_THREADPOOL_SIZE: '4' }), {});
  assert.deepEqual(ioSetupChanges({ UV_THREADPOOL_SIZE: '4', UV_USE_IO_URING: '1' }, 'io_uring'), {});
  assert.deepEqual(ioSetupChanges({ UV_THREADPOOL_SIZE: '4', UV_USE_IO_URING: '1' }, 'threads'), { UV_USE_IO_URING: '0' });
  assert.deepEqual(ioSetupChanges({ UV_THREADPOOL_SIZE: '4' }, 'io_uring'), { UV_USE_IO_URING: '1' });
  assert.deepEqual(ioSetupChanges({}, 'threads'), { UV_THREADPOOL_SIZE: pool });
  // Not an engine (the command refuses it before asking): nothing to change for it.
  assert.deepEqual(ioSetupChanges({ UV_THREADPOOL_SIZE: '4' }, 'toString'), {});
});
