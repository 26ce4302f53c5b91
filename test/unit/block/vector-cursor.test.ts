// Slicing a scatter-gather list front to back (qcow2's walks over a request's clusters): a
// cursor gives the same views as slicing from the start each time, over random layouts with
// empty buffers, for slices in order, slices of nothing, and slices that go back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sliceVectors, VectorCursor } from '../../../src/block/qcow2/image.js';
import { rng } from './helpers.js';

/** Each view as [its offset in the backing store, its length]: equal views, not just equal bytes. */
const shape = (views: Uint8Array[]): Array<[number, number]> => views.map((v) => [v.byteOffset, v.length]);

test('a cursor slices like sliceVectors, in order and out of order', () => {
  const next = rng(7);
  for (let round = 0; round < 300; round++) {
    const store = new Uint8Array(1 << 16);
    const buffers: Uint8Array[] = [];
    let at = 0;
    const count = 1 + Math.floor(next() * 20);
    for (let i = 0; i < count; i++) {
      const n = next() < 0.15 ? 0 : 1 + Math.floor(next() * 700);
      buffers.push(store.subarray(at, at + n));
      at += n;
    }
    const total = at;
    const cursor = new VectorCursor(buffers);
    // Pieces in order, some empty; now and then one that starts earlier again.
    for (let from = 0; from < total;) {
      const length = next() < 0.1 ? 0 : Math.min(total - from, 1 + Math.floor(next() * 900));
      const start = next() < 0.1 ? Math.floor(next() * (from + 1)) : from;
      const len = Math.min(total - start, length);
      assert.deepEqual(shape(cursor.slice(start, len)), shape(sliceVectors(buffers, start, len)), `round ${round}: slice [${start}, +${len})`);
      from = Math.max(from, start + len) + (len === 0 ? 1 : 0);
    }
  }
});

test('buffers a slice covers whole come back as they are; only the ends are cut', () => {
  const store = new Uint8Array(4 * 4096);
  const pages = [0, 1, 2, 3].map((i) => store.subarray(i * 4096, (i + 1) * 4096));
  for (const slice of [(f: number, n: number) => new VectorCursor(pages).slice(f, n), (f: number, n: number) => sliceVectors(pages, f, n)]) {
    const views = slice(100, 3 * 4096);
    assert.equal(views.length, 4);
    assert.deepEqual(shape(views), [[100, 3996], [4096, 4096], [8192, 4096], [12288, 100]]);
    assert.equal(views[1], pages[1], 'the second page is the caller\'s own view');
    assert.equal(views[2], pages[2]);
    assert.deepEqual(slice(0, 4 * 4096), pages);
    assert.ok(slice(0, 4 * 4096).every((v, i) => v === pages[i]));
  }
});
