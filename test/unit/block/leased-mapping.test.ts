// Reads without a copy (BlockDriver.mapForRead): a file open read-only is mapped under a read
// lease, so nobody can shrink it under the mapping. A process that truncates it waits until
// the views in use are given back; no view is handed out after that, and reads go on as reads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, openSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { HostFile } from '../../../src/block/host-file.js';
import { MAPPING_WINDOW } from '../../../src/block/leased-mapping.js';
import { openImage } from '../../../src/block/index.js';
import { createQcow2 } from '../../../src/block/qcow2/create.js';
import { randomBytes, rng, tempDir } from './helpers.js';
import { waitFor } from '../../support/wait.js';

const MiB = 1 << 20;

test('a file open read-only hands out its bytes as mapped views; none past its end or across a window', async () => {
  const t = tempDir();
  try {
    const data = randomBytes(rng(11), 3 * MiB + 123);
    writeFileSync(t.path('disk.raw'), data);
    const f = await HostFile.open(t.path('disk.raw'), { readOnly: true });
    try {
      const view = f.mapForRead(4096, 2 * MiB);
      assert.ok(view, 'a view of a read-only file');
      assert.deepEqual(view.bytes, Buffer.from(data.subarray(4096, 4096 + 2 * MiB)));
      view.release();
      const tail = f.mapForRead(data.length - 123, 123);
      assert.deepEqual(tail?.bytes, Buffer.from(data.subarray(data.length - 123)));
      tail?.release();
      assert.equal(f.mapForRead(data.length - 10, 20), undefined, 'past the end of the file');
    } finally {
      await f.close();
    }

    // A sparse file one window and a page long: a view across the window's end is refused.
    writeFileSync(t.path('big.raw'), '');
    truncateSync(t.path('big.raw'), MAPPING_WINDOW + 4096);
    const big = await HostFile.open(t.path('big.raw'), { readOnly: true });
    try {
      assert.equal(big.mapForRead(MAPPING_WINDOW - 4096, 8192), undefined);
      const second = big.mapForRead(MAPPING_WINDOW, 4096);
      assert.deepEqual(second?.bytes, Buffer.alloc(4096));
      second?.release();
    } finally {
      await big.close();
    }
  } finally {
    t.cleanup();
  }
});

test('no mapping for a file open for writing, here or by anyone else', async () => {
  const t = tempDir();
  try {
    writeFileSync(t.path('disk.raw'), randomBytes(rng(12), MiB));
    const rw = await HostFile.open(t.path('disk.raw'));
    try {
      assert.equal(rw.mapForRead(0, 4096), undefined, 'opened read-write');
    } finally {
      await rw.close();
    }
    // Read-only here, but open for writing elsewhere: the kernel grants no lease.
    const writer = openSync(t.path('disk.raw'), 'r+');
    try {
      const ro = await HostFile.open(t.path('disk.raw'), { readOnly: true });
      try {
        assert.equal(ro.mapForRead(0, 4096), undefined, 'a writer holds the file open');
      } finally {
        await ro.close();
      }
    } finally {
      closeSync(writer);
    }
  } finally {
    t.cleanup();
  }
});

test('a process truncating a mapped file waits until the view in use is given back; reads go on after', async () => {
  const t = tempDir();
  try {
    const file = t.path('disk.raw');
    const data = randomBytes(rng(13), 4 * MiB);
    writeFileSync(file, data);
    const f = await HostFile.open(file, { readOnly: true });
    try {
      const view = f.mapForRead(MiB, 2 * MiB);
      assert.ok(view);
      // A blocking open with O_TRUNC (truncate(1) opens without blocking, and fails instead).
      const truncation = spawn('sh', ['-c', ': > "$1"', 'sh', file], { stdio: 'ignore' });
      const exited = new Promise<number | null>((resolve, reject) => {
        truncation.on('error', reject);
        truncation.on('exit', (code) => resolve(code));
      });
      // The kernel holds the truncation back while the lease stands, and signals the holder:
      // from then on no new view is handed out.
      await waitFor('the lease break to reach the mapping', () => {
        const probe = f.mapForRead(0, 4096);
        probe?.release();
        return probe === undefined;
      }, 20_000);
      assert.equal(truncation.exitCode, null, 'truncate went ahead while a view was in use');
      assert.equal(statSync(file).size, data.length);
      // The view's pages are all still there (a page past the end would raise SIGBUS).
      assert.deepEqual(view.bytes, Buffer.from(data.subarray(MiB, 3 * MiB)));
      view.release();
      // Well inside the kernel's own limit (lease-break-time, 45 s by default).
      const timeout = setTimeout(() => truncation.kill(), 20_000);
      assert.equal(await exited, 0);
      clearTimeout(timeout);
      assert.equal(statSync(file).size, 0);
      // Reads go on as reads: past the (new) end of the file, zeroes.
      const buf = Buffer.alloc(4096, 0xee);
      await f.readv(0, [buf]);
      assert.deepEqual(buf, Buffer.alloc(4096));
      assert.equal(f.mapForRead(0, 4096), undefined);
    } finally {
      await f.close();
    }
  } finally {
    t.cleanup();
  }
});

test('a qcow2 image open read-only maps its data clusters, a run per stretch that follows on in the file, and nothing else', async () => {
  const t = tempDir();
  try {
    const file = t.path('disk.qcow2');
    const cluster = 65536;
    await createQcow2(file, { size: 8n * BigInt(MiB) });
    const data = randomBytes(rng(14), 2 * MiB);
    const rw = await openImage(file, { format: 'qcow2' });
    await rw.writev(0n, [data]);
    // Two clusters written last one first: they lie in the file in the other order.
    const tail = randomBytes(rng(15), 2 * cluster);
    await rw.writev(BigInt(4 * MiB + cluster), [tail.subarray(cluster)]);
    await rw.writev(BigInt(4 * MiB), [tail.subarray(0, cluster)]);
    await rw.close();
    const ro = await openImage(file, { format: 'qcow2', readOnly: true });
    try {
      // The table is cached by a read first (convert asks block status before it maps).
      await ro.readv(0n, [Buffer.alloc(512)]);
      const one = ro.mapForRead?.(65536n, BigInt(MiB));
      assert.ok(one, 'clusters written in one go');
      assert.equal(one.runs.length, 1, 'follow each other in the file');
      assert.deepEqual(one.runs[0], { at: 0, bytes: Buffer.from(data.subarray(65536, 65536 + MiB)) });
      one.release();
      const two = ro.mapForRead?.(BigInt(4 * MiB), BigInt(2 * cluster));
      assert.ok(two);
      assert.deepEqual(two.runs.map((r) => r.at), [0, cluster]);
      assert.deepEqual(Buffer.concat(two.runs.map((r) => r.bytes)), Buffer.from(tail));
      two.release();
      assert.equal(ro.mapForRead?.(BigInt(3 * MiB), 4096n), undefined, 'unallocated');
      assert.equal(ro.mapForRead?.(BigInt(2 * MiB) - 4096n, 8192n), undefined, 'half data, half unallocated');
    } finally {
      await ro.close();
    }
  } finally {
    t.cleanup();
  }
});
