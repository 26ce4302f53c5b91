import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { HostFile, alignedBuffer, BlockError } from '../../../src/block/index.js';
import { tempDir, rng, randomBytes, firstDifference } from './helpers.js';

// cache=none: aligned requests skip the bounce buffer and run concurrently, unaligned ones
// read-modify-write whole blocks one at a time. Mixed together they must never lose a byte.
test('O_DIRECT host file: aligned, misaligned-memory and read-modify-write requests in flight together', async (t) => {
  const dir = tempDir();
  try {
    const size = 2 << 20;
    const f = dir.path('direct.img');
    writeFileSync(f, Buffer.alloc(size));
    let file: HostFile;
    try {
      file = await HostFile.open(f, { cache: 'none' });
    } catch (err) {
      assert.ok(err instanceof BlockError && /O_DIRECT/.test(err.message), String(err));
      t.skip('this file system refuses O_DIRECT');
      return;
    }
    const next = rng(4242);
    const shadow = new Uint8Array(size);
    const jobs: Promise<void>[] = [];
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 64; i++) {
        const block = round * 64 + i; // distinct 4 KiB blocks per request within a round
        const kind = i % 4;
        if (kind === 0) {
          // aligned in offset, length and memory: written straight from the caller's buffer
          const data = alignedBuffer(4096 * 2);
          data.set(randomBytes(next, data.length));
          shadow.set(data, block * 8192);
          jobs.push(file.write(block * 8192, data));
        } else if (kind === 1) {
          // aligned offset and length, memory off by one byte: bounced, still concurrent
          const raw = Buffer.alloc(8193);
          const data = raw.subarray(1);
          data.set(randomBytes(next, data.length));
          shadow.set(data, block * 8192);
          jobs.push(file.writev(block * 8192, [data.subarray(0, 4096), data.subarray(4096)]));
        } else {
          // two small writes into the same block, different bytes: read-modify-write each
          const base = block * 8192 + (kind === 2 ? 100 : 5000);
          const a = randomBytes(next, 700);
          const b = randomBytes(next, 300);
          shadow.set(a, base);
          shadow.set(b, base + 1000);
          jobs.push(file.write(base, a), file.write(base + 1000, b));
        }
      }
      await Promise.all(jobs.splice(0));
    }
    // Read back through all three read paths.
    const aligned = alignedBuffer(size);
    await file.read(0, aligned);
    assert.equal(firstDifference(aligned, shadow), -1, 'aligned read');
    const offByOne = Buffer.alloc(size + 1).subarray(1);
    await file.readv(0, [offByOne.subarray(0, 12288), offByOne.subarray(12288)]);
    assert.equal(firstDifference(offByOne, shadow), -1, 'bounced read');
    const piece = new Uint8Array(777);
    await file.read(size - 777, piece);
    assert.equal(firstDifference(piece, shadow.subarray(size - 777)), -1, 'unaligned read at the end');
    // Past the end of file reads as zeroes, aligned or not.
    const tail = alignedBuffer(8192);
    tail.fill(0xee);
    await file.read(size - 4096, tail);
    assert.equal(firstDifference(tail.subarray(0, 4096), shadow.subarray(size - 4096)), -1);
    assert.ok(tail.subarray(4096).every((x) => x === 0), 'aligned read past the end is zeroes');
    await file.close();
    assert.equal(firstDifference(new Uint8Array(readFileSync(f)), shadow), -1, 'file holds the data');
    assert.equal(statSync(f).size, size);
  } finally {
    dir.cleanup();
  }
});
