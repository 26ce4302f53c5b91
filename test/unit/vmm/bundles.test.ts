import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// bundles.cts finds the bundles beside itself, so it is run from a copy in a scratch dist/
// tree with bundles whose inputs can be made newer or removed.
function scratchTree(run: (vmm: string, bundles: typeof import('../../../src/vmm/bundles.cjs')) => void): void {
  const root = mkdtempSync(join(tmpdir(), 'tsvirt-bundles-'));
  try {
    const vmm = join(root, 'dist', 'src', 'vmm');
    mkdirSync(vmm, { recursive: true });
    copyFileSync(new URL('../../../src/vmm/bundles.cjs', import.meta.url), join(vmm, 'bundles.cjs'));
    run(vmm, createRequire(import.meta.url)(join(vmm, 'bundles.cjs')) as typeof import('../../../src/vmm/bundles.cjs'));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

test('a bundle is used only while it is newer than every input, and never with TSVIRT_UNBUNDLED', () => {
  scratchTree((vmm, { freshBundle }) => {
    const input = join(vmm, 'machine.js');
    const bundle = join(vmm, 'run.bundle.cjs');
    writeFileSync(input, '');
    writeFileSync(bundle, '');
    writeFileSync(`${bundle}.inputs.json`, JSON.stringify({ inputs: ['src/vmm/machine.js'] }));
    const at = (path: string, seconds: number): void => utimesSync(path, seconds, seconds);
    at(input, 1000);
    at(bundle, 2000);

    assert.equal(freshBundle('run.bundle.cjs'), bundle);
    assert.equal(freshBundle('vcpu-worker.bundle.cjs'), null, 'no such bundle');

    process.env.TSVIRT_UNBUNDLED = '1';
    try {
      assert.equal(freshBundle('run.bundle.cjs'), null, 'TSVIRT_UNBUNDLED');
    } finally {
      delete process.env.TSVIRT_UNBUNDLED;
    }

    at(input, 3000);
    assert.equal(freshBundle('run.bundle.cjs'), null, 'an input recompiled after the bundle');
    at(input, 1000);
    assert.ok(freshBundle('run.bundle.cjs'));
    rmSync(input);
    assert.equal(freshBundle('run.bundle.cjs'), null, 'an input gone');
  });
});

// Each load is a fresh process, as each `tsvirt run` is: the first writes the code cache when
// the bundle says it has warmed up, the second compiles from it, and a changed bundle does
// not meet the old cache.
test('a bundle runs as CommonJS, writes its code cache once warmed up, and later runs use it', () => {
  scratchTree((vmm, { codeCacheFile }) => {
    const bundle = join(vmm, 'demo.bundle.cjs');
    writeFileSync(join(vmm, 'outside.mjs'), 'export const name = "outside";\n');
    writeFileSync(bundle, [
      'const { codeWarmedUp, importFrom } = require("./bundles.cjs");',
      'exports.answer = function answer() { return [__filename, typeof module.exports, typeof require("node:fs").statSync].join(" "); };',
      // How the build routes a bundle's import() of what stays outside it.
      'exports.later = () => importFrom(__filename, "./outside.mjs").then((m) => m.name);',
      'exports.warm = codeWarmedUp;',
    ].join('\n'));
    const load = (use = ''): { codeCache: string; answer: string; later: string } => {
      const script = `
        const { runCachedBundle } = require(${JSON.stringify(join(vmm, 'bundles.cjs'))});
        const { exports, codeCache } = runCachedBundle(${JSON.stringify(bundle)}, ${JSON.stringify(use)});
        // Loaded again in the same thread, as require would: the same exports, not a second run.
        if (runCachedBundle(${JSON.stringify(bundle)}, ${JSON.stringify(use)}).exports !== exports) throw new Error('the bundle ran twice');
        exports.later().then((later) => { exports.warm(); exports.warm(); process.stdout.write(JSON.stringify({ codeCache, answer: exports.answer(), later })); });`;
      const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout) as { codeCache: string; answer: string; later: string };
    };
    const first = load();
    assert.deepEqual(first, { codeCache: 'written on warm-up', answer: `${bundle} object function`, later: 'outside' });
    assert.ok(existsSync(codeCacheFile(bundle)), 'the cache was written');
    assert.equal(load().codeCache, 'used');
    assert.equal(load().codeCache, 'used');
    assert.equal(load('bench').codeCache, 'written on warm-up', 'another use of the bundle has a cache of its own');
    assert.equal(load('bench').codeCache, 'used');
    assert.notEqual(codeCacheFile(bundle, 'bench'), codeCacheFile(bundle));
    assert.equal(codeCacheFile(bundle, '../x'), codeCacheFile(bundle), 'a use that is not a plain word is no use');

    // A damaged cache is V8's to refuse: the bundle runs compiled from source and writes a good one.
    writeFileSync(codeCacheFile(bundle), Buffer.alloc(4096, 0x5a));
    const damaged = load();
    assert.equal(damaged.codeCache, 'written on warm-up');
    assert.equal(damaged.answer, `${bundle} object function`);
    assert.equal(load().codeCache, 'used', 'the damaged cache was replaced');

    writeFileSync(bundle, `exports.answer = () => "changed"; exports.later = async () => "x"; exports.warm = () => {};\n`);
    utimesSync(bundle, 5000, 5000);
    const changed = load();
    assert.equal(changed.answer, 'changed');
    assert.equal(changed.codeCache, 'written on warm-up', 'a rebuilt bundle does not meet the old cache');
    assert.equal(readdirSync(vmm).filter((name) => name.endsWith('.tmp')).length, 0, 'no temporary file is left');
  });
});
