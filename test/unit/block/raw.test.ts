import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { openImage, createRaw, probeFormat, BlockError, RawDriver, type CacheMode } from '../../../src/block/index.js';
import { tempDir, rng, randomBytes, firstDifference, scatter } from './helpers.js';

test('raw images: scatter-gather I/O in every cache mode matches the file', async () => {
  const t = tempDir();
  try {
    const size = 1 << 20;
    for (const cache of ['writeback', 'writethrough', 'unsafe', 'none', 'directsync'] as CacheMode[]) {
      const f = t.path(`${cache}.raw`);
      await createRaw(f, { size: BigInt(size) });
      let img;
      try {
        img = await openImage(f, { cache });
      } catch (err) {
        // O_DIRECT is refused by some file systems (tmpfs): that must be a clear error.
        assert.ok(err instanceof BlockError && /O_DIRECT/.test(err.message), String(err));
        continue;
      }
      assert.equal(img.format, 'raw');
      const next = rng(size + cache.length);
      const shadow = new Uint8Array(size);
      const jobs: Promise<void>[] = [];
      for (let i = 0; i < 40; i++) {
        // Unaligned, non-overlapping pieces in flight together.
        const off = i * 25000 + Math.floor(next() * 1000);
        const data = randomBytes(next, 1 + Math.floor(next() * 20000));
        shadow.set(data, off);
        jobs.push(img.writev(BigInt(off), scatter(data, next)));
      }
      await Promise.all(jobs);
      await img.flush();
      const back = new Uint8Array(size);
      await img.readv(0n, scatter(back, next));
      assert.equal(firstDifference(back, shadow), -1, `${cache}: reads back`);
      await img.close();
      assert.equal(firstDifference(new Uint8Array(readFileSync(f)), shadow), -1, `${cache}: file holds the data`);
      assert.equal(statSync(f).size, size, `${cache}: size unchanged`);
    }
  } finally {
    t.cleanup();
  }
});

test('raw images: holes, zeroes, discard, resize and bounds', async () => {
  const t = tempDir();
  try {
    const f = t.path('disk.img');
    await createRaw(f, { size: 8n << 20n });
    assert.equal(await probeFormat(f), 'raw');
    const img = await RawDriver.open(f);
    assert.equal(img.size(), 8n << 20n);
    const hole = await img.blockStatus(0n, 8n << 20n);
    assert.equal(hole.data, false, 'a new sparse file is one hole');
    assert.equal(hole.zero, true);
    await img.writev(1n << 20n, [new Uint8Array(65536).fill(9)]);
    const st = await img.blockStatus(1n << 20n, 1n << 20n);
    assert.equal(st.data, true);
    assert.ok(st.length >= 65536n);
    const before = await img.blockStatus(0n, 8n << 20n);
    assert.equal(before.length, 1n << 20n, 'the hole ends where data starts');
    await img.writeZeroes((1n << 20n) + 100n, 1000n);
    const z = new Uint8Array(1200);
    await img.readv((1n << 20n) + 50n, [z]);
    assert.ok(z.subarray(0, 50).every((b) => b === 9) && z.subarray(50, 1050).every((b) => b === 0) && z.subarray(1050).every((b) => b === 9));
    await img.discard(1n << 20n, 65536n);
    await img.resize(16n << 20n);
    assert.equal(img.size(), 16n << 20n);
    await assert.rejects(img.readv(16n << 20n, [new Uint8Array(1)]), /disk\.img: read of 1 bytes at offset 16777216 is beyond the disk size/);
    await assert.rejects(img.writev(-1n, [new Uint8Array(1)]), BlockError);
    await img.close();
    const ro = await openImage(f, { readOnly: true });
    await assert.rejects(ro.writev(0n, [new Uint8Array(1)]), /read-only/);
    await ro.close();
    await assert.rejects(openImage(t.path('missing.img')), /missing\.img: cannot open: ENOENT/);
    await assert.rejects(openImage(t.dir), /cannot read: EISDIR/);
    writeFileSync(t.path('full.img'), '');
    await createRaw(t.path('full.img'), { size: 100000n, preallocation: 'full' });
    assert.equal(statSync(t.path('full.img')).size, 100000);
  } finally {
    t.cleanup();
  }
});

