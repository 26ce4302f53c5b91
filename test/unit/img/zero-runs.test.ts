// Zero detection for convert's sparse output: runs must match a byte-by-byte reference on
// any layout, including data in the last byte of a block and blocks shorter than 8 bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isZero, zeroRuns, type ZeroRun } from '../../../src/img/extents.js';

/** The obvious definition: each block zero or not, neighbours of the same kind merged. */
function referenceRuns(buf: Uint8Array, block: number): ZeroRun[] {
  const runs: ZeroRun[] = [];
  for (let pos = 0; pos < buf.length; pos += block) {
    const end = Math.min(buf.length, pos + block);
    const zero = buf.subarray(pos, end).every((b) => b === 0);
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.end = end;
    else runs.push({ start: pos, end, zero });
  }
  return runs;
}

test('isZero finds a single non-zero byte anywhere, in Buffers and plain Uint8Arrays', () => {
  for (const size of [1, 7, 8, 9, 4096, 65536 + 3]) {
    const plain = new Uint8Array(size + 16).subarray(5, 5 + size);
    assert.equal(isZero(plain), true);
    for (const at of [0, 1, 7, 8, size >> 1, size - 1]) {
      if (at >= size) continue;
      plain[at] = 1;
      assert.equal(isZero(plain), false, `size ${size}, byte ${at}`);
      assert.equal(isZero(Buffer.from(plain)), false);
      // The range excludes the byte: zero again.
      assert.equal(isZero(plain, at + 1, size), true);
      plain[at] = 0;
    }
  }
});

test('zeroRuns agrees with a byte-by-byte reference on random layouts', () => {
  let seed = 7;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  for (let round = 0; round < 200; round++) {
    const block = [1, 3, 512, 4096][rand(4)]!;
    const size = rand(64 * 1024) + 1;
    const buf = Buffer.alloc(size);
    // A few data islands of random length at random places, some a single byte.
    for (let k = rand(6); k > 0; k--) {
      const at = rand(size);
      const n = rand(3) === 0 ? 1 : rand(size - at) + 1;
      for (let i = at; i < at + n; i++) buf[i] = rand(255) + 1;
    }
    assert.deepEqual(zeroRuns(buf, block), referenceRuns(buf, block), `round ${round}: block ${block}, size ${size}`);
  }
});

test('zeroRuns covers a long zero run and a trailing partial block', () => {
  const buf = Buffer.alloc((3 << 20) + 100);
  buf[(2 << 20) + 4095] = 9; // last byte of the block at 2 MiB
  assert.deepEqual(zeroRuns(buf, 4096), [
    { start: 0, end: 2 << 20, zero: true },
    { start: 2 << 20, end: (2 << 20) + 4096, zero: false },
    { start: (2 << 20) + 4096, end: buf.length, zero: true },
  ]);
  assert.deepEqual(zeroRuns(Buffer.alloc(0), 4096), []);
});

test('zeroRuns tells data blocks that start with a zero byte from zero blocks', () => {
  // Blocks of 4 KiB: data with a non-zero first byte, data whose only non-zero byte is the
  // last, a zero block, data again, then a short tail whose first byte is zero.
  const block = 4096;
  const buf = Buffer.alloc(4 * block + 100);
  buf[0] = 1;
  buf[2 * block - 1] = 2;
  buf[3 * block] = 3;
  buf[4 * block + 99] = 4;
  assert.deepEqual(zeroRuns(buf, block), [
    { start: 0, end: 2 * block, zero: false },
    { start: 2 * block, end: 3 * block, zero: true },
    { start: 3 * block, end: buf.length, zero: false },
  ]);
  // The tail all zero: its own zero run.
  buf[4 * block + 99] = 0;
  assert.deepEqual(zeroRuns(buf, block).at(-1), { start: 4 * block, end: buf.length, zero: true });
});

test('zeroRuns refuses a block size that is not a positive integer', () => {
  assert.throws(() => zeroRuns(Buffer.alloc(8), 0), /zero-detection block size must be a positive integer, not 0/);
  assert.throws(() => zeroRuns(Buffer.alloc(8), 1.5), /not 1\.5/);
});
