// Lazy refcounts (qcow2 v3 compatible feature bit 0): while open read-write the image is
// marked dirty and refcount updates skip their ordering barriers. A writer killed with
// SIGKILL leaves a dirty image whose refcounts only need rebuilding: QEMU's repair or our
// read-write open fixes it, and everything flushed before the kill reads back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openImage, createQcow2, checkQcow2, qcow2Info } from '../../../src/block/index.js';
import { tempDir, randomBytes, rng, firstDifference } from '../../unit/block/helpers.js';
import { crashOps } from './crash-ops.js';
import { runAndKill } from './kill-writer.js';
import { haveQemuImg, qemuCheck, qemuContents, qemuImg } from './qemu.js';

const skip = haveQemuImg ? false : 'qemu-img is not installed';

test('lazy refcounts: kill -9 of a writer leaves a dirty image that QEMU or we repair, with flushed data intact', { skip, timeout: 180_000 }, async () => {
  const t = tempDir();
  try {
    const size = 4 << 20;
    const clusterSize = 4096;
    for (const repairer of ['qemu', 'ours'] as const) {
      const f = t.path(`lazy-${repairer}.qcow2`);
      await createQcow2(f, { size: BigInt(size), clusterSize, lazyRefcounts: true });
      const seed = repairer === 'qemu' ? 71 : 72;
      const { lastFlushed, lastStarted } = await runAndKill(f, seed, 6);
      assert.ok(lastFlushed >= 0);
      assert.equal((await qcow2Info(f)).formatSpecific.dirtyFlag, true, 'the killed writer left the lazy image marked dirty');
      if (repairer === 'qemu') {
        // Whatever is off is repairable: qemu-img check -r all leaves it clean.
        const r = qemuCheck(f);
        assert.equal(r['check-errors'], 0);
        qemuImg('check', '-q', '-r', 'all', f);
      } else {
        await (await openImage(f)).close();
      }
      assert.equal((await qcow2Info(f)).formatSpecific.dirtyFlag, false);
      const q = qemuCheck(f);
      assert.equal((q.corruptions ?? 0) + (q.leaks ?? 0) + q['check-errors'], 0, `${repairer} repair leaves a clean image`);
      const ours = await checkQcow2(f);
      assert.equal(ours.corruptions + ours.leaks, 0, ours.messages.slice(0, 3).join('; '));
      // Everything up to the last flush is there; later operations are not judged.
      const model = new Uint8Array(size);
      const uncertain = new Uint8Array(size);
      let i = 0;
      for (const op of crashOps(seed, size)) {
        if (i > lastStarted + 1) break;
        const span: [number, number] = op.kind === 'write' ? [op.offset, op.offset + op.data.length]
          : op.kind === 'zero' ? [op.offset, op.offset + op.length]
            : op.kind === 'discard' ? [Math.ceil(op.offset / clusterSize) * clusterSize, Math.min(size, Math.floor((op.offset + op.length) / clusterSize) * clusterSize)]
              : [0, 0];
        if (i <= lastFlushed) {
          if (op.kind === 'write') model.set(op.data, op.offset);
          else if (span[1] > span[0]) model.fill(0, span[0], span[1]);
        } else if (span[1] > span[0]) uncertain.fill(1, span[0], span[1]);
        i++;
      }
      const viaQemu = qemuContents(f, t.path('out.raw'));
      const img = await openImage(f, { readOnly: true });
      const viaUs = new Uint8Array(size);
      await img.readv(0n, [viaUs]);
      await img.close();
      assert.equal(firstDifference(viaQemu, viaUs), -1, 'QEMU and we read the repaired image alike');
      for (let b = 0; b < size; b++) {
        if (!uncertain[b] && viaUs[b] !== model[b]) assert.fail(`${repairer}: byte ${b} is ${viaUs[b]}, flushed data says ${model[b]}`);
      }
    }
  } finally {
    t.cleanup();
  }
});

test('lazy refcounts: the dirty mark lasts only while open, and a closed image is clean for QEMU', { skip, timeout: 60_000 }, async () => {
  const t = tempDir();
  try {
    const f = t.path('lazy.qcow2');
    await createQcow2(f, { size: 8n << 20n, clusterSize: 4096, lazyRefcounts: true });
    const next = rng(9);
    const img = await openImage(f);
    assert.equal((await qcow2Info(f)).formatSpecific.dirtyFlag, true, 'marked dirty while open read-write');
    const data = randomBytes(next, 3 << 20);
    await img.writev(12345n, [data]);
    await img.discard(1n << 20n, 1n << 20n);
    await img.close();
    assert.equal((await qcow2Info(f)).formatSpecific.dirtyFlag, false, 'clean after close');
    const q = qemuCheck(f);
    assert.equal((q.corruptions ?? 0) + (q.leaks ?? 0) + q['check-errors'], 0);
    const expect = new Uint8Array(8 << 20);
    expect.set(data, 12345);
    expect.fill(0, 1 << 20, 2 << 20);
    assert.equal(firstDifference(qemuContents(f, t.path('out.raw')), expect), -1, 'QEMU reads what we wrote');
    // Read-only opens leave the header alone.
    const ro = await openImage(f, { readOnly: true });
    assert.equal((await qcow2Info(f)).formatSpecific.dirtyFlag, false);
    await ro.close();
  } finally {
    t.cleanup();
  }
});
