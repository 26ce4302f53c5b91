// convert's chunk scheduler: every byte is either visited once or reported skipped, chunks
// keep their alignment after a skip, a skip never passes over a chunk a lane has taken, and
// a failure stops the lanes and is thrown.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { forEachChunk } from '../../../src/img/extents.js';

const CHUNK = 8n;

test('a worker that knows a run of zeroes ahead skips the whole chunks it covers', async () => {
  const total = 200n;
  // Work only at 0-15, 100-107 and 195-199: after 8 and after 100 the rest up to the next work is idle.
  const work = (o: bigint): boolean => o < 16n || (o >= 100n && o < 108n) || o >= 192n;
  const visited: bigint[] = [];
  let skipped = 0n;
  await forEachChunk(total, CHUNK, 1, async (offset, length) => {
    visited.push(offset);
    assert.ok(length === CHUNK || offset + length === total);
    if (work(offset)) return undefined;
    // Idle from here up to the next chunk with work (or an unaligned point before it).
    let until = offset;
    while (until < total && !work(until)) until++;
    return until + 3n;
  }, (n) => (skipped += n));
  assert.deepEqual(visited, [0n, 8n, 16n, 96n, 104n, 112n, 192n]);
  assert.equal(skipped, total - 7n * CHUNK, 'what was not visited was reported skipped');
});

test('with parallel lanes nothing is visited twice and nothing lost; a skip past the end stops at it', async () => {
  const total = 1000n;
  const seen = new Set<bigint>();
  let skipped = 0n;
  let covered = 0n;
  await forEachChunk(total, CHUNK, 4, async (offset, length) => {
    assert.ok(!seen.has(offset), `chunk ${offset} visited once`);
    assert.equal(offset % CHUNK, 0n, 'chunks stay aligned');
    seen.add(offset);
    covered += length;
    await new Promise((r) => setImmediate(r));
    return offset % 80n === 0n ? offset + 40n : offset >= 900n ? total + 100n : undefined;
  }, (n) => (skipped += n));
  assert.equal(covered + skipped, total);
  assert.ok(skipped > 0n);
});

test('a failing chunk stops the lanes and its error is thrown', async () => {
  const visited: bigint[] = [];
  await assert.rejects(forEachChunk(100n, CHUNK, 2, async (offset) => {
    visited.push(offset);
    if (offset === 24n) throw new Error('read failed at 24');
  }), /read failed at 24/);
  assert.ok(visited.length < 13, `stopped early (${visited.length} chunks)`);
});
