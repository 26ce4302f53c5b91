// A refcount block that cannot be read (the file ends inside it): the check reports it once
// and judges no COPIED flag it points into; a full repair, which would have to set those
// flags, stops with the block layer's one-line error instead of guessing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { openImage, createQcow2, checkQcow2 } from '../../../src/block/index.js';
import { tempDir } from './helpers.js';

const CLUSTER = 4096;

/** An image with data whose only refcount block is moved to the end of the file, then cut short. */
async function imageWithTruncatedRefcountBlock(path: string): Promise<void> {
  await createQcow2(path, { size: 1n << 20n, clusterSize: CLUSTER });
  const img = await openImage(path);
  await img.writev(0n, [new Uint8Array(3 * CLUSTER).fill(5)]);
  await img.close();
  const b = readFileSync(path);
  const reftable = Number(b.readBigUInt64BE(48));
  const block = Number(b.readBigUInt64BE(reftable));
  const moved = Math.ceil(b.length / CLUSTER) * CLUSTER;
  const out = Buffer.alloc(moved + CLUSTER);
  b.copy(out);
  b.copy(out, moved, block, block + CLUSTER);
  out.writeBigUInt64BE(BigInt(moved), reftable);
  writeFileSync(path, out);
  truncateSync(path, moved + CLUSTER - 512);
}

test('an unreadable refcount block: check skips the COPIED flags it covers, repair -r all stops', async () => {
  const t = tempDir();
  try {
    const f = t.path('cut.qcow2');
    await imageWithTruncatedRefcountBlock(f);
    const r = await checkQcow2(f);
    assert.equal(r.checkErrors, 1, 'the unreadable block counts as a check error');
    assert.equal(r.corruptions, 0, 'no flag judged against a refcount that could not be read');
    assert.deepEqual(r.messages.filter((m) => m.includes('OFLAG_COPIED')), []);
    assert.ok(r.messages.some((m) => m.startsWith('ERROR cannot read refcount of cluster 0: ') && m.includes('lies past the end of the file')), r.messages.join('; '));
    await assert.rejects(checkQcow2(f, { repair: 'all' }), (err: Error) => {
      assert.match(err.message, /cut\.qcow2: refcount block at 0x[0-9a-f]+ lies past the end of the file$/);
      assert.equal(err.message.split('\n').length, 1);
      return true;
    });
  } finally {
    t.cleanup();
  }
});
