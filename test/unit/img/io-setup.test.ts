// What `img bench` must change in its environment to measure the I/O set-up it was asked for
// (libuv sizes its thread pool only when a process starts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IO_THREADS, ioSetupChanges, isAioEngine, startedAs } from '../../../src/img/io-threads.js';

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

test('a process is the command line running img when started by the tsvirt command or the CLI module, with the same arguments', () => {
  const args = ['bench', '-i', 'threads', 'disk.qcow2'];
  for (const script of ['/opt/tsvirt/dist/src/cli/tsvirt.cjs', '/opt/tsvirt/dist/src/cli/main.js']) {
    assert.ok(startedAs(args, ['node', script, 'img', ...args]), script);
    assert.ok(!startedAs(args, ['node', script, 'img', 'bench', 'disk.qcow2']), `${script} with other arguments`);
    assert.ok(!startedAs(args, ['node', script, 'run', ...args]), `${script} running another command`);
  }
  assert.ok(!startedAs(args, ['node', '/app/server.js', 'img', ...args]), 'a program that embeds the library');
  assert.ok(!startedAs(args, ['node', '/app/lib/tsvirt.cjs', 'img', ...args]), 'a file of that name outside cli/');
});
