import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openImage, createQcow2, checkQcow2, qcow2Info } from '../../../src/block/index.js';
import { tempDir, rng } from '../../unit/block/helpers.js';
import { crashOps } from './crash-ops.js';
import { runAndKill } from './kill-writer.js';
import { haveQemuImg, qemuCheck } from './qemu.js';

test('kill -9 at random points leaves an image that opens, checks clean (leaks only) and keeps flushed data', { skip: haveQemuImg ? false : 'qemu-img is not installed', timeout: 300_000 }, async (ctx) => {
  const t = { ...tempDir(), diagnostic: (m: string) => ctx.diagnostic(m) };
  try {
    const size = 4 << 20;
    let dirtyRecoveries = 0;
    for (const [name, clusterSize, refcountBits] of [['c4k', 4096, 16], ['c64k-r4', 65536, 4], ['c512-v3', 512, 64]] as const) {
      const f = t.path(`${name}.qcow2`);
      await createQcow2(f, { size: BigInt(size), clusterSize, refcountBits });
      let model = new Uint8Array(size);
      const pick = rng(clusterSize);
      for (let round = 0; round < 8; round++) {
        const seed = clusterSize * 100 + round;
        const { lastFlushed, lastStarted } = await runAndKill(f, seed, 1 + Math.floor(pick() * 12), Math.floor(pick() * 15));
        assert.ok(lastFlushed >= 0);
        // A crash inside a snapshot operation leaves the image marked dirty: the next
        // read-write open (ours, or QEMU's) rebuilds its refcounts and COPIED flags.
        if ((await qcow2Info(f)).formatSpecific.dirtyFlag) {
          dirtyRecoveries++;
          await (await openImage(f)).close();
          assert.equal((await qcow2Info(f)).formatSpecific.dirtyFlag, false);
        }
        // Corruption is never acceptable; leaked clusters are.
        const q = qemuCheck(f);
        assert.equal(q.corruptions ?? 0, 0, `${name} round ${round}: qemu-img check finds corruption`);
        assert.equal(q['check-errors'], 0);
        const ours = await checkQcow2(f);
        assert.equal(ours.corruptions, 0, ours.messages.slice(0, 3).join('; '));
        // Replay: everything up to lastFlushed must be there; operations after it may be
        // partly there, so the bytes they touch are not judged.
        const uncertain = new Uint8Array(size);
        let i = 0;
        for (const op of crashOps(seed, size)) {
          if (i > lastStarted + 1) break;
          // A discard (no backing file) zeroes the whole clusters inside its range.
          const discarded = op.kind === 'discard'
            ? [Math.ceil(op.offset / clusterSize) * clusterSize, Math.min(size, Math.floor((op.offset + op.length) / clusterSize) * clusterSize)]
            : [0, 0];
          if (i <= lastFlushed) {
            if (op.kind === 'write') model.set(op.data, op.offset);
            else if (op.kind === 'zero') model.fill(0, op.offset, op.offset + op.length);
            else if (op.kind === 'discard' && discarded[1] > discarded[0]) model.fill(0, discarded[0], discarded[1]);
          } else if (op.kind === 'write') uncertain.fill(1, op.offset, op.offset + op.data.length);
          else if (op.kind === 'zero') uncertain.fill(1, op.offset, op.offset + op.length);
          else if (op.kind === 'discard' && discarded[1] > discarded[0]) uncertain.fill(1, discarded[0], discarded[1]);
          i++;
        }
        const img = await openImage(f);
        const actual = new Uint8Array(size);
        await img.readv(0n, [actual]);
        await img.close();
        for (let b = 0; b < size; b++) {
          if (!uncertain[b] && actual[b] !== model[b]) assert.fail(`${name} round ${round}: byte ${b} is ${actual[b]}, flushed data says ${model[b]}`);
        }
        model = actual;
      }
      const repaired = await checkQcow2(f, { repair: 'leaks' });
      assert.equal(repaired.leaks, 0);
      assert.equal(repaired.corruptions, 0);
      const q = qemuCheck(f);
      assert.equal((q.leaks ?? 0) + (q.corruptions ?? 0), 0, 'repair leaves the image clean for qemu-img too');
    }
    t.diagnostic(`${dirtyRecoveries} crash(es) hit a snapshot operation and were repaired on reopen`);
  } finally {
    t.cleanup();
  }
});
