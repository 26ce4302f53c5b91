// Clusters handed out past the end of the file get space from the file system (fallocate)
// rather than being left as a hole: with O_DIRECT a partial write into one is then an
// overwrite that can run alongside others, and through the page cache writes skip delayed
// allocation's per-page reservation. The rest of such a cluster must still read as zeroes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { createQcow2, openQcow2, HostFile, BlockError } from '../../../src/block/index.js';
import { tempDir } from './helpers.js';

for (const cache of ['none', 'writeback'] as const) test(`qcow2 with cache=${cache}: a 4 KiB write into a new cluster finds the whole cluster allocated, and the rest reads as zeroes`, async (t) => {
  const dir = tempDir();
  try {
    const f = dir.path('grown.qcow2');
    await createQcow2(f, { size: 64n << 20n });
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
    assert.ok(back.subarray(0, 8192).every((b) => b === 0), 'bytes before the write read as zeroes');
    assert.deepEqual(back.subarray(8192, 12288), data);
    assert.ok(back.subarray(12288).every((b) => b === 0), 'bytes after the write read as zeroes');
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
