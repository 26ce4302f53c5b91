// Clusters handed out past the end of the file get space from the file system (fallocate)
// rather than being left as a hole: with O_DIRECT a partial write into one is then an
// overwrite that can run alongside others, and through the page cache writes skip delayed
// allocation's per-page reservation. The rest of such a cluster must still read as zeroes.
// A memory file system has none of that to skip: there the file grows as a hole.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createQcow2, openQcow2, HostFile, BlockError } from '../../../src/block/index.js';
import { isTmpfs, tempDir, tmpfsDir } from './helpers.js';

/** The 64 KiB read back from the start of a cluster holds `data` at 8 KiB and zeroes around it. */
function assertZeroesAround(back: Uint8Array, data: Uint8Array): void {
  assert.ok(back.subarray(0, 8192).every((b) => b === 0), 'bytes before the write read as zeroes');
  assert.deepEqual(back.subarray(8192, 8192 + data.length), data);
  assert.ok(back.subarray(8192 + data.length).every((b) => b === 0), 'bytes after the write read as zeroes');
}

for (const cache of ['none', 'writeback'] as const) test(`qcow2 with cache=${cache}: a 4 KiB write into a new cluster finds the whole cluster allocated, and the rest reads as zeroes`, async (t) => {
  const dir = tempDir();
  try {
    const f = dir.path('grown.qcow2');
    await createQcow2(f, { size: 64n << 20n });
    if (isTmpfs(dir.dir)) return t.skip('the temporary directory is on tmpfs, where the file grows as a hole (tested below)');
    // The file system must take fallocate (and, for cache=none, O_DIRECT) for this to apply.
    const probe = await HostFile.open(f, { cache }).catch((err: unknown) => {
      assert.ok(err instanceof BlockError && /O_DIRECT/.test(err.message), String(err));
      return undefined;
    });
    if (!probe) return t.skip('this file system refuses O_DIRECT');
    await probe.close();
    const scratch = await HostFile.open(dir.path('scratch'), { create: true });
    const canAllocate = scratch.allocate(0n, 65536n);
    await scratch.close();
    if (!canAllocate) return t.skip('this file system cannot fallocate');

    const img = await openQcow2(f, { cache });
    const data = Buffer.alloc(4096, 0xa5);
    await img.writev(8192n, [data]); // inside the first cluster, not at its start
    const status = await img.blockStatus(0n, 65536n);
    assert.equal(status.data, true);
    assert.notEqual(status.hostOffset, undefined);
    const host = status.hostOffset!;
    // The file system has space behind the whole cluster (SEEK_HOLE cannot tell: it calls
    // allocated-but-unwritten space a hole), where a hole would leave only the 4 KiB written.
    const allocatedBytes = statSync(f).blocks * 512;
    assert.ok(BigInt(allocatedBytes) >= host + 65536n, `only ${allocatedBytes} bytes allocated for a cluster at ${host}`);
    const back = Buffer.alloc(65536, 0xff);
    await img.readv(0n, [back]);
    assertZeroesAround(back, data);
    await img.close();

    // And after reopening (the reservation's unused tail trimmed at close).
    const again = await openQcow2(f, { readOnly: true });
    const reread = Buffer.alloc(65536, 0xff);
    await again.readv(0n, [reread]);
    assert.deepEqual(reread, back);
    await again.close();
  } finally {
    dir.cleanup();
  }
});

test('qcow2 on tmpfs: new clusters past the end of the file are a hole until written, and read as zeroes', { skip: !tmpfsDir() && 'no tmpfs at /dev/shm' }, async () => {
  const dir = mkdtempSync(join(tmpfsDir()!, 'tsvirt-grow-'));
  try {
    const f = join(dir, 'grown.qcow2');
    await createQcow2(f, { size: 64n << 20n });
    const img = await openQcow2(f);
    const data = Buffer.alloc(4096, 0xa5);
    await img.writev(8192n, [data]);
    const host = (await img.blockStatus(0n, 65536n)).hostOffset!;
    const { size, blocks } = statSync(f);
    // The first reservation is about 1 MiB of clusters, the file grown over all of it; grown
    // with space, all of it would be allocated. As a hole, only the metadata and the 4 KiB
    // written take pages.
    assert.ok(size > Number(host) + 65536, `the file (${size} bytes) covers reserved clusters after the one at ${host}`);
    assert.ok(blocks * 512 < Number(host) + 65536, `${blocks * 512} bytes allocated: the cluster at ${host} was not left a hole`);
    const back = Buffer.alloc(65536, 0xff);
    await img.readv(0n, [back]);
    assertZeroesAround(back, data);
    await img.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
