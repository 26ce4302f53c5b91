// The eventfd watcher in both of its forms (the main thread's event loop, and the fd poller
// thread), with real eventfds: each burst of writes is one call, the watcher drains the
// counter, and unwatch() stops the calls but leaves the caller's descriptor open.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createEventfdWatcher } from '../../../src/kvm/eventfd-watcher.js';
import { close, EFD_NONBLOCK, eventfd } from '../../../src/kvm/libc.js';
import { signal, drain } from '../../support/eventfds.js';
import { waitFor } from '../../support/wait.js';

for (const thread of [false, true]) {
  const kind = thread ? 'thread' : 'loop';
  test(`eventfd watcher (${kind}): one call per burst, drained, unwatch leaves the fd open`, { timeout: 30_000 }, async () => {
    const watcher = createEventfdWatcher({ thread });
    assert.equal(watcher.kind, kind);
    const a = eventfd(0, EFD_NONBLOCK);
    const b = eventfd(0, EFD_NONBLOCK);
    try {
      const seen: string[] = [];
      watcher.watch(a, () => seen.push('a'));
      watcher.watch(b, () => seen.push('b'));
      signal(a, 3);
      signal(a, 4); // same burst: the watcher has not run yet, this thread is busy here
      await waitFor('eventfd a', () => seen.length >= 1);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(seen, ['a']);
      assert.equal(drain(a), -1, 'the watcher drained the counter');
      signal(b, 1);
      await waitFor('eventfd b', () => seen.length === 2);
      signal(a, 1);
      await waitFor('eventfd a again', () => seen.length === 3);
      assert.deepEqual(seen, ['a', 'b', 'a']);
      assert.throws(() => watcher.watch(a, () => {}), new RegExp(`fd ${a} is already watched`));
      watcher.unwatch(a);
      watcher.unwatch(12345); // unknown: ignored
      await new Promise((resolve) => setTimeout(resolve, 50));
      signal(a, 7);
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.deepEqual(seen, ['a', 'b', 'a'], 'no call after unwatch()');
      assert.equal(drain(a), 7, 'the caller still owns a working descriptor');
      watcher.watch(a, () => seen.push('a2')); // watched again after unwatch
      signal(a, 1);
      await waitFor('eventfd a, watched again', () => seen.includes('a2'));
    } finally {
      await watcher.close();
      close(a);
      close(b);
    }
  });
}

test('eventfd watcher: a descriptor that cannot be watched is a one-line error naming it', async () => {
  const watcher = createEventfdWatcher();
  try {
    assert.throws(() => watcher.watch(99999, () => {}), /fd 99999/);
  } finally {
    await watcher.close();
  }
});
