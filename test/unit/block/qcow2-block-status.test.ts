// qcow2 block status across L2 tables that do not exist: such a table's whole span is
// answered in one step, and merges with unallocated entries of tables that do exist (read
// from the table's bytes when it is cached), but never with zero clusters or data, and a
// backing file still answers for it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { createQcow2, createRaw, openImage, Qcow2Image } from '../../../src/block/index.js';
import { tempDir } from './helpers.js';

const CLUSTER = 4096;
/** With 4 KiB clusters an L2 table maps 512 clusters: 2 MiB of the disk. */
const TABLE_SPAN = 512 * CLUSTER;

test('block status spans absent L2 tables, stopping where a zero cluster or data starts', async () => {
  const t = tempDir();
  try {
    const file = t.path('sparse.qcow2');
    await createQcow2(file, { size: 64n * BigInt(TABLE_SPAN), clusterSize: CLUSTER });
    const writer = await openImage(file);
    // Table 10 exists (data in its cluster 5, the rest unallocated); table 20 holds a zero cluster first.
    await writer.writev(BigInt(10 * TABLE_SPAN + 5 * CLUSTER), [new Uint8Array(CLUSTER).fill(7)]);
    await writer.writeZeroes(BigInt(20 * TABLE_SPAN), BigInt(CLUSTER));
    await writer.close();
    // Twice: first loading table 10 on the way, then with it cached.
    const img = await openImage(file);
    for (let round = 0; round < 2; round++) await expectRuns(img);
    await img.close();
  } finally {
    t.cleanup();
  }
});

async function expectRuns(img: Awaited<ReturnType<typeof openImage>>): Promise<void> {
  const status = async (from: number, to: number) => {
    const s = await img.blockStatus(BigInt(from), BigInt(to - from));
    return { length: Number(s.length), data: s.data, zero: s.zero };
  };
  // Tables 0-9 are absent, and table 10 starts with five unallocated entries: one answer.
  assert.deepEqual(await status(100, 64 * TABLE_SPAN), { length: 10 * TABLE_SPAN + 5 * CLUSTER - 100, data: false, zero: true });
  assert.deepEqual(await status(10 * TABLE_SPAN + 5 * CLUSTER, 64 * TABLE_SPAN), { length: CLUSTER, data: true, zero: false });
  // After the data: the rest of table 10, then absent tables 11-19, up to the zero cluster.
  const afterData = 10 * TABLE_SPAN + 6 * CLUSTER;
  assert.deepEqual(await status(afterData, 64 * TABLE_SPAN), { length: 20 * TABLE_SPAN - afterData, data: false, zero: true });
  // A request that ends inside an absent table ends there.
  assert.deepEqual(await status(30 * TABLE_SPAN + 1, 31 * TABLE_SPAN + 512), { length: TABLE_SPAN + 511, data: false, zero: true });
  // And one that ends inside an existing table's run of unallocated entries.
  assert.deepEqual(await status(10 * TABLE_SPAN + 100 * CLUSTER + 5, 10 * TABLE_SPAN + 200 * CLUSTER - 7), { length: 100 * CLUSTER - 12, data: false, zero: true });
}

test('an absent L2 table over a backing file reads through to it', async () => {
  const t = tempDir();
  try {
    const base = t.path('base.raw');
    await createRaw(base, { size: BigInt(8 * TABLE_SPAN) });
    const raw = await openImage(base);
    await raw.writev(BigInt(3 * TABLE_SPAN), [new Uint8Array(CLUSTER).fill(1)]);
    await raw.close();
    const top = t.path('top.qcow2');
    await createQcow2(top, { backingFile: base, backingFormat: 'raw', clusterSize: CLUSTER });
    const img = await openImage(top);
    const s = await img.blockStatus(BigInt(3 * TABLE_SPAN), BigInt(4 * TABLE_SPAN));
    assert.equal(s.depth, 1, 'answered by the backing file');
    assert.equal(s.data, true);
    const hole = await img.blockStatus(0n, BigInt(3 * TABLE_SPAN));
    assert.equal(hole.depth, 1);
    assert.equal(hole.zero, true);
    await img.close();
  } finally {
    t.cleanup();
  }
});

test('a data run ends where host clusters stop following each other, whatever the COPIED flag says, and a bad pointer in a run is still reported', async () => {
  const t = tempDir();
  try {
    const file = t.path('runs.qcow2');
    await createQcow2(file, { size: BigInt(TABLE_SPAN), clusterSize: CLUSTER });
    let img = await openImage(file);
    // Clusters 0-7 in one write: host clusters in a row. Cluster 8 goes after cluster 20's.
    await img.writev(0n, [new Uint8Array(8 * CLUSTER).fill(1)]);
    await img.writev(BigInt(20 * CLUSTER), [new Uint8Array(CLUSTER).fill(2)]);
    await img.writev(BigInt(8 * CLUSTER), [new Uint8Array(CLUSTER).fill(3)]);
    const dataRun = async (cluster: number, clusters: number) => {
      const s = await img.blockStatus(BigInt(cluster * CLUSTER), BigInt(clusters * CLUSTER));
      assert.equal(s.data, true);
      return Number(s.length) / CLUSTER;
    };
    assert.equal(await dataRun(0, 40), 8, 'cluster 8 is data too, but elsewhere in the file');
    assert.equal(await dataRun(2, 3), 3, 'a run ends with the request');
    assert.equal(await dataRun(8, 40), 1);
    const table = (img as Qcow2Image).l1Entry(0).offset;
    await img.close();
    // Cluster 5's entry without COPIED (shared, as after a snapshot) still continues the run;
    // cluster 6's with a reserved bit set is read entry by entry, and continues it too.
    const bytes = readFileSync(file);
    bytes[table + 5 * 8] &= 0x7f;
    bytes[table + 6 * 8] |= 0x02;
    writeFileSync(file, bytes);
    img = await openImage(file, { readOnly: true });
    for (let round = 0; round < 2; round++) assert.equal(await dataRun(0, 40), 8, `round ${round}: table ${round ? 'cached' : 'loaded on the way'}`);
    await img.close();
    // Cut the file after cluster 3's data: entries 4-7 now point past its end.
    const l2Host = (at: number): number => Number(bytes.readBigUInt64BE(table + at * 8) & 0x00fffffffffffe00n);
    bytes[table + 6 * 8] &= ~0x02;
    writeFileSync(file, bytes);
    truncateSync(file, l2Host(4) - CLUSTER);
    img = await openImage(file, { readOnly: true });
    await assert.rejects(img.blockStatus(0n, BigInt(8 * CLUSTER)), /guest cluster [4-6] points past the end of the file/);
    await img.close();
  } finally {
    t.cleanup();
  }
});
