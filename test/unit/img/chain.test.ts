// The layers of a backing chain named from an open image (what `img commit` uses) must be
// the ones chainLayers() finds by reading each header: same paths (qemu's relative-name
// rule), formats and names as the parents record them.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { openImage } from '../../../src/block/driver.js';
import { createQcow2 } from '../../../src/block/qcow2/create.js';
import { chainLayers, openChainLayers } from '../../../src/img/chain.js';

test('openChainLayers names an open chain as chainLayers does, without reading a header again', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-chain-'));
  try {
    mkdirSync(join(dir, 'sub'));
    writeFileSync(join(dir, 'bottom.raw'), new Uint8Array(1 << 20));
    await createQcow2(join(dir, 'sub', 'base.qcow2'), { size: 1n << 20n, backingFile: '../bottom.raw', backingFormat: 'raw' });
    await createQcow2(join(dir, 'sub', 'mid.qcow2'), { size: 1n << 20n, backingFile: 'base.qcow2' });
    const topName = join(dir, 'top.qcow2');
    await createQcow2(topName, { size: 1n << 20n, backingFile: 'sub/mid.qcow2', backingFormat: 'qcow2' });
    const top = await openImage(topName, { readOnly: true });
    try {
      const layers = openChainLayers(top, topName, 'qcow2');
      assert.deepEqual(layers, [
        { filename: topName, format: 'qcow2' },
        { filename: join(dir, 'sub', 'mid.qcow2'), format: 'qcow2', nameInParent: 'sub/mid.qcow2' },
        { filename: join(dir, 'sub', 'base.qcow2'), format: undefined, nameInParent: 'base.qcow2' },
        { filename: join(dir, 'bottom.raw'), format: 'raw', nameInParent: '../bottom.raw' },
      ]);
      assert.deepEqual(layers, await chainLayers(topName, 'qcow2'));
    } finally {
      await top.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
