import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

// bundles.ts finds the bundles beside itself, so it is run from a copy in a scratch dist/
// tree with a bundle whose inputs can be made newer or removed.
test('a bundle is used only while it is newer than every input, and never with TSVIRT_UNBUNDLED', async () => {
  const root = mkdtempSync(join(tmpdir(), 'tsvirt-bundles-'));
  try {
    const vmm = join(root, 'dist', 'src', 'vmm');
    mkdirSync(vmm, { recursive: true });
    writeFileSync(join(root, 'package.json'), '{"type":"module"}');
    copyFileSync(new URL('../../../src/vmm/bundles.js', import.meta.url), join(vmm, 'bundles.js'));
    const { freshBundle } = await import(pathToFileURL(join(vmm, 'bundles.js')).href) as typeof import('../../../src/vmm/bundles.js');

    const input = join(vmm, 'machine.js');
    writeFileSync(input, '');
    writeFileSync(join(vmm, 'vmm.bundle.js'), '');
    writeFileSync(join(vmm, 'vmm.bundle.inputs.json'), JSON.stringify({ inputs: ['src/vmm/machine.js'] }));
    const at = (path: string, seconds: number): void => utimesSync(path, seconds, seconds);
    at(input, 1000);
    at(join(vmm, 'vmm.bundle.js'), 2000);

    assert.equal(freshBundle('vmm')?.href, pathToFileURL(join(vmm, 'vmm.bundle.js')).href);
    assert.equal(freshBundle('vcpu-worker'), null, 'no such bundle');

    process.env.TSVIRT_UNBUNDLED = '1';
    try {
      assert.equal(freshBundle('vmm'), null, 'TSVIRT_UNBUNDLED');
    } finally {
      delete process.env.TSVIRT_UNBUNDLED;
    }

    at(input, 3000);
    assert.equal(freshBundle('vmm'), null, 'an input recompiled after the bundle');
    at(input, 1000);
    assert.ok(freshBundle('vmm'));
    rmSync(input);
    assert.equal(freshBundle('vmm'), null, 'an input gone');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
