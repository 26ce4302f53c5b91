// The process's own io_uring: reads and writes land where pread/pwrite would put them,
// failures come back as the request's error, more requests than slots wait their turn,
// and the event loop keeps turning while a stream of requests runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createQcow2, openImage, BlockError } from '../../../src/block/index.js';
import { alignedBuffer, createIoRing } from '../../../src/block/host-file.js';
import { IoUringError, type IoUring } from '../../../src/kvm/io-uring.js';

/**
 * A test with a ring of `entries` slots and a scratch directory, both gone afterwards;
 * skipped where the kernel offers no io_uring.
 */
function ringTest(name: string, entries: number, body: (ring: IoUring, dir: string) => Promise<void>): void {
  test(name, async (t) => {
    const ring = createIoRing(entries);
    if (!ring) return t.skip('this kernel offers no io_uring here');
    const dir = mkdtempSync(join(tmpdir(), 'tsvirt-ring-'));
    try {
      await body(ring, dir);
    } finally {
      ring.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

ringTest('io_uring: reads, writes and vectored I/O at offsets, as pread/pwrite would do them', 8, async (ring, dir) => {
  const file = join(dir, 'data');
  const content = Buffer.alloc(1 << 16);
  for (let i = 0; i < content.length; i++) content[i] = (i * 7) & 0xff;
  writeFileSync(file, content);
  const fd = openSync(file, 'r+');
  try {
    const a = Buffer.alloc(100);
    assert.equal(await ring.read(fd, a, 1000), 100);
    assert.deepEqual(a, content.subarray(1000, 1100));
    // A read past the end comes back short, as pread's does.
    const tail = Buffer.alloc(64);
    assert.equal(await ring.read(fd, tail, content.length - 10), 10);
    const parts = [Buffer.alloc(3), Buffer.alloc(5000), Buffer.alloc(1)];
    assert.equal(await ring.readv(fd, parts, 12345), 5004);
    assert.deepEqual(Buffer.concat(parts), content.subarray(12345, 12345 + 5004));
    assert.equal(await ring.write(fd, Buffer.from('hello'), 2), 5);
    assert.equal(await ring.writev(fd, [Buffer.from('ab'), Buffer.from('cd')], 60000), 4);
  } finally {
    closeSync(fd);
  }
  const after = readFileSync(file);
  assert.equal(after.subarray(2, 7).toString(), 'hello');
  assert.equal(after.subarray(60000, 60004).toString(), 'abcd');
  assert.deepEqual(after.subarray(7, 60000), content.subarray(7, 60000));
});

ringTest('io_uring: more requests than slots all complete, each with its own bytes', 4, async (ring, dir) => {
  const file = join(dir, 'many');
  const fd = openSync(file, 'w+');
  try {
    const writes = Array.from({ length: 200 }, (_, i) => ring.write(fd, Buffer.alloc(512, i & 0xff), i * 512));
    assert.deepEqual(await Promise.all(writes), Array(200).fill(512));
    const bufs = Array.from({ length: 200 }, () => Buffer.alloc(512));
    await Promise.all(bufs.map((b, i) => ring.read(fd, b, i * 512)));
    bufs.forEach((b, i) => assert.ok(b.every((x) => x === (i & 0xff)), `block ${i}`));
    assert.equal(ring.busy, false);
  } finally {
    closeSync(fd);
  }
});

ringTest('io_uring: callback requests share the slots with promised ones; a failure arrives as minus the errno', 4, async (ring, dir) => {
  const file = join(dir, 'callbacks');
  const fd = openSync(file, 'w+');
  try {
    const results: number[] = [];
    const ended = (n: number): Promise<void> => new Promise((resolve) => {
      for (let i = 0; i < n; i++) {
        ring.submitWrite(fd, Buffer.alloc(256, i), i * 256, (result) => {
          results.push(result);
          if (results.length === n) resolve();
        });
      }
    });
    // Twelve callbacks and four promises on a ring of four slots: most wait for a slot.
    const promised = Array.from({ length: 4 }, (_, i) => ring.write(fd, Buffer.alloc(256, 100 + i), (12 + i) * 256));
    await ended(12);
    assert.deepEqual(await Promise.all(promised), [256, 256, 256, 256]);
    assert.deepEqual(results, Array(12).fill(256));
    const back = Buffer.alloc(16 * 256);
    const got = await new Promise<number>((resolve) => ring.submitRead(fd, back, 0, resolve));
    assert.equal(got, back.length);
    for (let i = 0; i < 16; i++) assert.equal(back[i * 256], i < 12 ? i : 100 + i - 12, `block ${i}`);
    assert.equal(await new Promise<number>((resolve) => ring.submitRead(-1, back, 0, resolve)), -9, 'EBADF');
    assert.equal(ring.busy, false);
  } finally {
    closeSync(fd);
  }
});

ringTest('io_uring: a failed request rejects with its errno; others go on; a closed ring refuses work', 8, async (ring, dir) => {
  const file = join(dir, 'ro');
  writeFileSync(file, 'x'.repeat(100));
  const fd = openSync(file, 'r');
  try {
    const bad = ring.write(fd, Buffer.from('no'), 0); // opened read-only
    const good = ring.read(fd, Buffer.alloc(10), 0);
    await assert.rejects(bad, (err: unknown) => err instanceof IoUringError && err.code === 'EBADF' && /EBADF/.test(err.message));
    assert.equal(await good, 10);
    await assert.rejects(ring.read(-1, Buffer.alloc(1), 0), (err: unknown) => err instanceof IoUringError && err.code === 'EBADF');
  } finally {
    closeSync(fd);
  }
  ring.close();
  await assert.rejects(ring.read(0, Buffer.alloc(1), 0), /io_uring is closed/);
});

ringTest('io_uring: timers and the thread pool still get their turn while requests stream through', 8, async (ring, dir) => {
  const file = join(dir, 'stream');
  writeFileSync(file, Buffer.alloc(4096));
  const fd = openSync(file, 'r');
  try {
    let stop = false;
    let reads = 0;
    const stream = (async () => {
      const b = Buffer.alloc(512);
      while (!stop) {
        await ring.read(fd, b, 0);
        reads++;
      }
    })();
    // Both need the event loop: a stream that never let it turn would hang here.
    await new Promise((r) => setTimeout(r, 30));
    await import('node:fs/promises').then((fs) => fs.stat(file));
    stop = true;
    await stream;
    assert.ok(reads > 0);
  } finally {
    closeSync(fd);
  }
});

ringTest('io_uring: a qcow2 image opened on a ring holds what was written through it, in both cache modes', 16, async (ring, dir) => {
  for (const cache of ['writeback', 'none'] as const) {
    const file = join(dir, `ring-${cache}.qcow2`);
    await createQcow2(file, { size: 4n << 20n, clusterSize: 65536 });
    const img = await openImage(file, { cache, ring }).catch((err: unknown) => {
      assert.ok(err instanceof BlockError && /O_DIRECT/.test(err.message), String(err));
      return undefined;
    });
    if (!img) continue; // a file system without O_DIRECT (tmpfs)
    const blocks = Array.from({ length: 64 }, (_, i) => alignedBuffer(4096).fill(i + 1));
    // Scattered 4 KiB writes, all in flight at once: allocations and overwrites.
    await Promise.all(blocks.map((b, i) => img.writev(BigInt(((i * 37) % 64) * 65536 + (i % 3) * 4096), [b])));
    await img.flush();
    const back = blocks.map(() => alignedBuffer(4096));
    await Promise.all(back.map((b, i) => img.readv(BigInt(((i * 37) % 64) * 65536 + (i % 3) * 4096), [b])));
    back.forEach((b, i) => assert.ok(b.every((x) => x === i + 1), `${cache}: block ${i}`));
    await img.close();
    // And through the pool, after close: the same bytes.
    const again = await openImage(file, { readOnly: true });
    const one = new Uint8Array(4096);
    await again.readv(BigInt(((5 * 37) % 64) * 65536 + (5 % 3) * 4096), [one]);
    assert.ok(one.every((x) => x === 6), `${cache}: reopened`);
    await again.close();
  }
  assert.equal(ring.busy, false);
});
