// Reads and writes of files on a memory file system run on the calling thread when the
// opener asks (HostFileOptions.memoryIoInline, as the VMM's disks do): the bytes are in the
// buffers (or the file) by the time readv (writev) returns its promise. Elsewhere, and
// without the option, they take the thread pool.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostFile } from '../../../src/block/host-file.js';
import { openImage } from '../../../src/block/index.js';
import { createQcow2 } from '../../../src/block/qcow2/create.js';
import { isTmpfs, randomBytes, rng, tmpfsDir } from './helpers.js';

const memoryDir = tmpfsDir();

function withFile(dir: string, bytes: Uint8Array, body: (file: string) => Promise<void>): Promise<void> {
  const d = mkdtempSync(join(dir, 'tsvirt-inline-'));
  const file = join(d, 'disk.raw');
  writeFileSync(file, bytes);
  return body(file).finally(() => rmSync(d, { recursive: true, force: true }));
}

const MiB = 1 << 20;

test('a file on tmpfs opened for inline I/O: the data is in the buffers when readv returns, in the file when writev returns', { skip: !memoryDir && 'no tmpfs at /dev/shm' }, async () => {
  const data = randomBytes(rng(7), 3 * MiB);
  await withFile(memoryDir!, data, async (file) => {
    const f = await HostFile.open(file, { readOnly: true, memoryIoInline: true });
    try {
      assert.equal(f.ioInline, true);
      // Three buffers, one of them 1 MiB: the shape of a merged guest read.
      const bufs = [new Uint8Array(4096), new Uint8Array(MiB), new Uint8Array(12288)];
      const pending = f.readv(8192n, bufs);
      assert.deepEqual(bufs[1]!.subarray(0, 64), data.subarray(8192 + 4096, 8192 + 4096 + 64), 'read before the promise settled');
      await pending;
      assert.deepEqual(Buffer.concat(bufs), Buffer.from(data.subarray(8192, 8192 + 4096 + MiB + 12288)));
      // Across the end of the file: the rest reads as zeroes.
      const tail = new Uint8Array(8192).fill(0xee);
      await f.readv(BigInt(data.length - 4096), [tail]);
      assert.deepEqual(tail.subarray(0, 4096), data.subarray(data.length - 4096));
      assert.ok(tail.subarray(4096).every((b) => b === 0), 'past the end: zeroes');
      // Larger than one inline read takes (4 MiB): the thread pool, with the same result.
      const big = new Uint8Array(5 * MiB);
      await f.readv(0n, [big]);
      assert.deepEqual(big.subarray(0, data.length), data);
      assert.ok(big.subarray(data.length).every((b) => b === 0), 'past the end: zeroes');
    } finally {
      await f.close();
    }
    const w = await HostFile.open(file, { memoryIoInline: true });
    try {
      const patch = randomBytes(rng(17), MiB + 4096);
      const pending = w.writev(4096n, [patch.subarray(0, 4096), patch.subarray(4096)]);
      assert.deepEqual(new Uint8Array(readFileSync(file)).subarray(4096, 4096 + patch.length), patch, 'written before the promise settled');
      await pending;
    } finally {
      await w.close();
    }
  });
});

test('without the option, or with TSVIRT_MEMORY_IO=pool, a tmpfs file is not read inline', { skip: !memoryDir && 'no tmpfs at /dev/shm' }, async () => {
  const data = randomBytes(rng(8), MiB);
  await withFile(memoryDir!, data, async (file) => {
    for (const [options, env] of [[{}, undefined], [{ memoryIoInline: true }, 'pool']] as const) {
      const saved = process.env.TSVIRT_MEMORY_IO;
      if (env) process.env.TSVIRT_MEMORY_IO = env;
      const f = await HostFile.open(file, { readOnly: true, ...options });
      if (env) {
        if (saved === undefined) delete process.env.TSVIRT_MEMORY_IO;
        else process.env.TSVIRT_MEMORY_IO = saved;
      }
      try {
        assert.equal(f.ioInline, false);
        // (Whether the pool ran a request before the caller looked is a race: only the
        // results are compared here.)
        const buf = new Uint8Array(MiB);
        await f.readv(0n, [buf]);
        assert.deepEqual(buf, data);
      } finally {
        await f.close();
      }
    }
  });
});

test('a file on a disk file system is not read inline, whatever the option says', { skip: isTmpfs(tmpdir()) && 'the temporary directory is on tmpfs' }, async () => {
  await withFile(tmpdir(), new Uint8Array(MiB).fill(3), async (file) => {
    const f = await HostFile.open(file, { readOnly: true, memoryIoInline: true });
    try {
      assert.equal(f.ioInline, false);
    } finally {
      await f.close();
    }
  });
});

test('raw and qcow2 images on tmpfs read back what was written, through inline reads', { skip: !memoryDir && 'no tmpfs at /dev/shm' }, async () => {
  const d = mkdtempSync(join(memoryDir!, 'tsvirt-inline-'));
  try {
    const next = rng(9);
    for (const format of ['raw', 'qcow2'] as const) {
      const file = join(d, `disk.${format}`);
      if (format === 'raw') writeFileSync(file, new Uint8Array(8 * MiB));
      else await createQcow2(file, { size: BigInt(8 * MiB) });
      const img = await openImage(file, { format, memoryIoInline: true });
      try {
        const data = randomBytes(next, 2 * MiB + 512);
        await img.writev(BigInt(MiB - 512), [data]);
        const back = [new Uint8Array(MiB), new Uint8Array(MiB + 512)];
        await img.readv(BigInt(MiB - 512), back);
        assert.deepEqual(Buffer.concat(back), Buffer.from(data), format);
      } finally {
        await img.close();
      }
    }
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('inline I/O of hundreds of views into one memory block, as a guest request brings them: adjacent, scattered and empty ones', { skip: !memoryDir && 'no tmpfs at /dev/shm' }, async () => {
  const next = rng(10);
  const data = randomBytes(next, 2 * MiB);
  await withFile(memoryDir!, data, async (file) => {
    const f = await HostFile.open(file, { memoryIoInline: true });
    try {
      // 256 pages of a "guest RAM" block in a shuffled order; every fourth one follows the
      // page before it in memory (they share an iovec), and empty views sit between them.
      const ram = new Uint8Array(512 * 4096);
      const order = Array.from({ length: 512 }, (_, i) => i);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      const views: Uint8Array[] = [];
      for (let i = 0; i < 256; i++) {
        const page = i % 4 === 3 ? (order[i - 1]! + 1) % 512 : order[i]!;
        views.push(new Uint8Array(ram.buffer, page * 4096, 4096));
        if (i % 50 === 0) views.push(new Uint8Array(ram.buffer, 0, 0));
      }
      const distinct = new Set(views.filter((v) => v.length > 0).map((v) => v.byteOffset));
      const patch = randomBytes(next, 256 * 4096);
      // Pages listed twice hold the later copy: what the kernel writes from is what counts.
      for (let i = 0, at = 0; i < views.length; i++) {
        if (views[i]!.length === 0) continue;
        views[i]!.set(patch.subarray(at, at + 4096));
        at += 4096;
      }
      const expected = Buffer.concat(views.filter((v) => v.length > 0).map((v) => Buffer.from(v)));
      const pending = f.writev(4096n, views);
      assert.deepEqual(new Uint8Array(readFileSync(file)).subarray(4096, 4096 + expected.length), new Uint8Array(expected), 'written before the promise settled');
      await pending;
      ram.fill(0);
      await f.readv(4096n, views);
      // Read back into the same views: each page holds the file's bytes for its last place in the list.
      const last = new Map<number, number>();
      for (let i = 0, at = 0; i < views.length; i++) {
        if (views[i]!.length === 0) continue;
        last.set(views[i]!.byteOffset, at);
        at += 4096;
      }
      assert.equal(last.size, distinct.size);
      for (const [offset, at] of last) {
        assert.deepEqual(ram.subarray(offset, offset + 4096), new Uint8Array(expected.subarray(at, at + 4096)), `page at ${offset}`);
      }
      // Wholly past the end of the file: zeroes, without a trip to the pool.
      const beyond = [new Uint8Array(4096).fill(0xee), new Uint8Array(8192).fill(0xee)];
      const settled = f.readv(BigInt(4 * MiB), beyond);
      assert.ok(beyond.every((b) => b.every((x) => x === 0)), 'zeroes before the promise settled');
      await settled;
    } finally {
      await f.close();
    }
  });
});

test('readvNow and writevNow: done at once on a memory file system, or refused with nothing done', { skip: !memoryDir && 'no tmpfs at /dev/shm' }, async () => {
  const data = randomBytes(rng(23), MiB);
  await withFile(memoryDir!, data, async (file) => {
    const { RawDriver } = await import('../../../src/block/raw.js');
    const raw = await RawDriver.open(file, { memoryIoInline: true });
    try {
      const bufs = [new Uint8Array(4096), new Uint8Array(8192)];
      assert.equal(raw.readvNow(4096n, bufs), true);
      assert.deepEqual(Buffer.concat(bufs), Buffer.from(data.subarray(4096, 4096 + 12288)));
      const patch = randomBytes(rng(29), 12288);
      assert.equal(raw.writevNow(8192n, [patch.subarray(0, 4096), patch.subarray(4096)]), true);
      assert.deepEqual(new Uint8Array(readFileSync(file)).subarray(8192, 8192 + 12288), patch, 'in the file on return');
      // Past the end of the disk: refused, with nothing read or written.
      const over = new Uint8Array(8192).fill(0xee);
      assert.equal(raw.readvNow(BigInt(MiB - 4096), [over]), false);
      assert.ok(over.every((b) => b === 0xee), 'nothing was read');
      assert.equal(raw.writevNow(BigInt(MiB - 4096), [new Uint8Array(8192)]), false);
      assert.equal(readFileSync(file).length, MiB, 'the file did not grow');
    } finally {
      await raw.close();
    }
    const ro = await RawDriver.open(file, { readOnly: true, memoryIoInline: true });
    try {
      assert.equal(ro.writevNow(0n, [new Uint8Array(4096)]), false, 'a read-only image writes nothing on the spot');
    } finally {
      await ro.close();
    }
    const notInline = await HostFile.open(file, {});
    try {
      assert.equal(notInline.writevNow(0, [new Uint8Array(4096)]), false, 'writes on the spot need memoryIoInline');
    } finally {
      await notInline.close();
    }
  });
});
