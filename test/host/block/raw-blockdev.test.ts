import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { openImage, createQcow2 } from '../../../src/block/index.js';
import { tempDir, rng, randomBytes, firstDifference } from '../../unit/block/helpers.js';

// Loop devices need root and a kernel with loop support; skip cleanly elsewhere.
function attach(file: string): string | undefined {
  const r = spawnSync('losetup', ['-f', '--show', file], { encoding: 'utf8', timeout: 30_000 });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

test('raw driver on a block device: size from the device, I/O through to the backing file, O_DIRECT', async (t) => {
  const dir = tempDir();
  const backing = dir.path('dev.img');
  let dev: string | undefined;
  try {
    writeFileSync(backing, '');
    truncateSync(backing, 8 << 20);
    dev = attach(backing);
  } finally {
    if (!dev) dir.cleanup();
  }
  if (!dev) {
    t.skip('cannot attach a loop device here');
    return;
  }
  try {
    for (const cache of ['writeback', 'none'] as const) {
      const img = await openImage(dev, { format: 'raw', cache });
      assert.equal(img.size(), 8n << 20n, 'size of the device, not of a stat');
      const data = randomBytes(rng(cache.length), 300000);
      await img.writev(12345n, [data.subarray(0, 1000), data.subarray(1000)]);
      await img.flush();
      const back = new Uint8Array(300000);
      await img.readv(12345n, [back]);
      assert.equal(firstDifference(back, data), -1);
      await assert.rejects(img.writev(8n << 20n, [new Uint8Array(1)]), /beyond the disk size/);
      await assert.rejects(img.resize(16n << 20n), /cannot grow/);
      await img.close();
      spawnSync('sync');
      const onDisk = new Uint8Array(readFileSync(backing)).subarray(12345, 12345 + 300000);
      assert.equal(firstDifference(onDisk, data), -1, `${cache}: data reached the backing file`);
    }
    // A qcow2 image stored on the device itself.
    await createQcow2(dir.path('tmp.qcow2'), { size: 4n << 20n });
    spawnSync('dd', [`if=${dir.path('tmp.qcow2')}`, `of=${dev}`, 'bs=64k', 'conv=fsync'], { timeout: 30_000 });
    const q = await openImage(dev);
    assert.equal(q.format, 'qcow2');
    await q.writev(1000n, [new Uint8Array(70000).fill(3)]);
    const b = new Uint8Array(70000);
    await q.readv(1000n, [b]);
    assert.ok(b.every((x) => x === 3));
    await q.close();
  } finally {
    spawnSync('losetup', ['-d', dev], { timeout: 30_000 });
    dir.cleanup();
  }
});
