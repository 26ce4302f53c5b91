// Every refusal in the block layer is a one-line BlockError naming the file: one case each.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import {
  openImage, createQcow2, createRaw, BlockError, Qcow2Image, createSnapshot, deleteSnapshot, applySnapshot,
  createQcow2Snapshot, setQcow2Backing, checkQcow2,
} from '../../../src/block/index.js';
import { tempDir } from './helpers.js';

async function refuses(p: Promise<unknown>, file: string, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (err: Error) => {
    assert.ok(err instanceof BlockError, `${err.name}: ${err.message}`);
    assert.ok(!err.message.includes('\n'), 'one line');
    assert.ok(err.message.includes(file), `names ${file}: ${err.message}`);
    assert.match(err.message, pattern);
    return true;
  });
}

function patch(path: string, edit: (b: Buffer) => void): void {
  const b = readFileSync(path);
  edit(b);
  writeFileSync(path, b);
}

test('create refuses contradictory options', async () => {
  const t = tempDir();
  try {
    const f = t.path('c.qcow2');
    await refuses(createQcow2(f, { size: 1n << 20n, refcountBits: 3 }), f, /refcount bits 3 must be a power of two/);
    await refuses(createQcow2(f, { size: 1n << 20n, compat: '0.9' as '1.1' }), f, /unknown compat level '0.9'/);
    await refuses(createQcow2(f, { size: 1n << 20n, compat: '0.10', extendedL2: true }), f, /extended L2 entries need compat=1.1/);
    await refuses(createQcow2(f, { size: 1n << 20n, backingFormat: 'raw' }), f, /a backing format needs a backing file/);
    await refuses(createQcow2(f, { size: 1n << 20n, preallocation: 'sometimes' as 'off' }), f, /unknown preallocation mode 'sometimes'/);
    await refuses(createQcow2(f, { size: -1n }), f, /invalid size -1/);
    await createRaw(t.path('b.raw'), { size: 1n << 20n });
    await refuses(createQcow2(f, { backingFile: 'b.raw', preallocation: 'full' }), f, /preallocation cannot be combined with a backing file/);
    await refuses(createRaw(t.path('b.raw'), { size: -5n }), 'b.raw', /invalid size -5/);
    await refuses(createQcow2(t.path('nodir/x.qcow2'), { size: 1n << 20n }), 'x.qcow2', /cannot create: ENOENT/);
  } finally {
    t.cleanup();
  }
});

test('snapshot operations refuse what cannot work', async () => {
  const t = tempDir();
  try {
    const f = t.path('s.qcow2');
    await createQcow2(f, { size: 1n << 20n });
    const ro = (await openImage(f, { readOnly: true })) as Qcow2Image;
    await refuses(createSnapshot(ro, 'x'), f, /snapshot create refused: image is open read-only/);
    await refuses(deleteSnapshot(ro, 'x'), f, /snapshot delete refused: image is open read-only/);
    await refuses(applySnapshot(ro, 'x'), f, /snapshot apply refused: image is open read-only/);
    await ro.close();
    const img = (await openImage(f)) as Qcow2Image;
    await refuses(createSnapshot(img, ''), f, /snapshot name must be 1\.\.65535 bytes/);
    await refuses(applySnapshot(img, 'ghost'), f, /no snapshot with id or name 'ghost'/);
    await createSnapshot(img, 'one');
    await refuses(img.resize(512n * 1024n), f, /cannot shrink an image that has internal snapshots/);
    await img.close();
    const one = t.path('one-bit.qcow2');
    await createQcow2(one, { size: 1n << 20n, refcountBits: 1 });
    await refuses(createQcow2Snapshot(one, 'x'), one, /snapshots need refcounts of at least 2 bits/);
  } finally {
    t.cleanup();
  }
});

test('backing files that are missing, of unknown format or too deep are refused', async () => {
  const t = tempDir();
  try {
    const f = t.path('top.qcow2');
    await createQcow2(t.path('base.qcow2'), { size: 1n << 20n });
    await createQcow2(f, { backingFile: 'base.qcow2' });
    await setQcow2Backing(f, 'gone.qcow2');
    await refuses(openImage(f), f, /backing file 'gone\.qcow2' not found/);
    await setQcow2Backing(f, 'base.qcow2', 'vmdk');
    await refuses(openImage(f), f, /backing file 'base\.qcow2' has unsupported format 'vmdk'/);
    await refuses(setQcow2Backing(f, undefined, 'raw'), f, /a backing format needs a backing file/);
    await setQcow2Backing(f, undefined);
    const alone = await openImage(f);
    assert.equal(alone.size(), 1n << 20n);
    await alone.close();
    // A chain deeper than 256 images is refused (creating on top of it opens the chain too).
    let prev = 'base.qcow2';
    let i = 0;
    for (; i < 300; i++) {
      const name = `l${i}.qcow2`;
      try {
        await createQcow2(t.path(name), { size: 65536n, backingFile: prev, backingFormat: 'qcow2' });
      } catch (err) {
        assert.ok(err instanceof BlockError);
        assert.match(err.message, /backing chain of .* is deeper than 256 images/);
        break;
      }
      prev = name;
    }
    assert.ok(i >= 256 && i < 300, `refused at depth ${i}`);
    await refuses(openImage(t.path(prev)), prev, /backing chain of .* is deeper than 256 images/);
  } finally {
    t.cleanup();
  }
});

test('header fields that contradict each other are refused', async () => {
  const t = tempDir();
  try {
    const good = t.path('good.qcow2');
    await createQcow2(good, { size: 1n << 20n, backingFile: undefined });
    const cases: Array<[string, (b: Buffer) => void, RegExp]> = [
      ['v2 refcounts', (b) => { b.writeUInt32BE(2, 4); b.writeUInt32BE(5, 96); }, /./],
      ['compression type without bit', (b) => b[104] = 1, /compression type 1 set without the compression-type feature bit/],
      ['unknown compression type', (b) => { b[104] = 7; b.writeBigUInt64BE(1n << 3n, 72); }, /unknown compression type 7/],
      ['extended L2 small clusters', (b) => { b.writeUInt32BE(12, 20); b.writeBigUInt64BE(1n << 4n, 72); }, /extended L2 entries need clusters of at least 16 KiB/],
      ['backing name too long', (b) => { b.writeBigUInt64BE(200n, 8); b.writeUInt32BE(5000, 16); }, /backing file name length 5000 out of range/],
      ['backing name outside', (b) => { b.writeBigUInt64BE(65530n, 8); b.writeUInt32BE(100, 16); }, /backing file name lies outside the first cluster/],
      ['extension overrun', (b) => { const at = b.readUInt32BE(100); b.writeUInt32BE(0xabcdef, at); b.writeUInt32BE(1 << 20, at + 4); }, /header extension 0xabcdef runs past the first cluster/],
      ['crypto extension', (b) => { const at = b.readUInt32BE(100); b.writeUInt32BE(0x0537be77, at); b.writeUInt32BE(8, at + 4); }, /encrypted qcow2 images are not supported/],
      ['snapshot table unaligned', (b) => { b.writeUInt32BE(1, 60); b.writeBigUInt64BE(65536n + 8n, 64); }, /snapshot table offset .* is not cluster-aligned/],
      ['snapshot table past EOF', (b) => { b.writeUInt32BE(1, 60); b.writeBigUInt64BE(1n << 40n, 64); }, /snapshot table extends past the end of the file/],
    ];
    for (const [name, edit, pattern] of cases) {
      const f = t.path(`${name.replace(/ /g, '-')}.qcow2`);
      writeFileSync(f, readFileSync(good));
      patch(f, edit);
      if (name === 'v2 refcounts') {
        // A v2 header is only 72 bytes long: offset 96 is not a field there, so this opens.
        const img = await openImage(f, { readOnly: true });
        await img.close();
        continue;
      }
      await refuses(openImage(f, { readOnly: true }), f, pattern);
    }
    // Refcount table corrupt beyond repair: check reports it, no exception escapes.
    const r = await checkQcow2(good);
    assert.equal(r.corruptions, 0);
  } finally {
    t.cleanup();
  }
});
