import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { cpioArchive, CpioWriter, writeCpioFile } from '../../../src/lab/cpio.js';
import { guestInitrdWith } from '../../../src/lab/guest-image.js';

function listWithCpio(archive: Buffer): string[] {
  const r = spawnSync('cpio', ['-t', '--quiet'], { input: archive, encoding: 'utf8' });
  assert.equal(r.status, 0, `cpio -t failed: ${r.stderr}`);
  return r.stdout.split('\n').filter((l) => l !== '');
}

test('Debian cpio lists every entry the writer produced, parents first', () => {
  const archive = cpioArchive((c) => {
    c.file('init', '#!/bin/sh\necho hi\n', 0o755);
    c.file('lib/modules/virtio.ko', new Uint8Array([1, 2, 3]));
    c.symlink('bin/sh', 'busybox');
    c.charDevice('dev/console', 5, 1);
  });
  assert.equal(archive.length % 4, 0);
  assert.deepEqual(listWithCpio(archive), ['init', 'lib', 'lib/modules', 'lib/modules/virtio.ko', 'bin', 'bin/sh', 'dev', 'dev/console']);
});

test('extracted files keep their bytes, modes, symlink targets and device numbers', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cpio-test-'));
  try {
    const odd = new Uint8Array(1001).map((_, i) => (i * 7) & 0xff); // a length that needs padding
    const archive = cpioArchive((c) => {
      c.file('a/odd.bin', odd, 0o600);
      c.file('a/run.sh', 'echo run\n', 0o755);
      c.symlink('a/link', 'odd.bin');
      c.charDevice('dev/console', 5, 1);
    });
    const out = join(dir, 'x');
    mkdirSync(out);
    const r = spawnSync('cpio', ['-i', '-d', '--quiet', '--no-absolute-filenames'], { cwd: out, input: archive });
    assert.equal(r.status, 0, String(r.stderr));
    assert.deepEqual(new Uint8Array(readFileSync(join(out, 'a/odd.bin'))), odd);
    assert.equal(statSync(join(out, 'a/odd.bin')).mode & 0o777, 0o600);
    assert.equal(statSync(join(out, 'a/run.sh')).mode & 0o777, 0o755);
    assert.equal(readlinkSync(join(out, 'a/link')), 'odd.bin');
    const verbose = spawnSync('cpio', ['-t', '-v', '--quiet'], { input: archive, encoding: 'utf8' }).stdout;
    assert.match(verbose, /^crw-------.*\s5,\s+1\s.*dev\/console$/m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a streamed archive file equals the in-memory one', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cpio-test-'));
  try {
    const build = (c: CpioWriter): void => { c.file('x/y', 'data'); c.directory('empty', 0o700); };
    const size = writeCpioFile(join(dir, 'a.cpio'), build);
    const file = readFileSync(join(dir, 'a.cpio'));
    assert.equal(size, file.length);
    assert.deepEqual(file, cpioArchive(build));
    assert.deepEqual(listWithCpio(file), ['x', 'x/y', 'empty']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('paths leaving the archive root and entries after the trailer are refused', () => {
  assert.throws(() => cpioArchive((c) => c.file('../etc/passwd', 'x')), /cpio: path \.\.\/etc\/passwd leaves the archive root/);
  const w = new CpioWriter(() => {});
  w.finish();
  assert.throws(() => w.file('late', 'x'), /cpio: cannot add late after the trailer/);
  assert.throws(() => w.finish(), /already finished/);
});

test('guestInitrdWith appends an aligned archive with /test.sh (0755) and the extra files', async () => {
  const cache = mkdtempSync(join(tmpdir(), 'lab-cache-'));
  const saved = process.env.TSVIRT_CACHE;
  process.env.TSVIRT_CACHE = cache;
  try {
    mkdirSync(join(cache, 'lab'));
    const base = gzipSync(cpioArchive((c) => c.file('init', 'base init', 0o755)));
    writeFileSync(join(cache, 'lab', 'guest-initrd.img'), base);
    const path = await guestInitrdWith('echo from test\n', { 'data/input.txt': 'hello', 'bin/tool': new Uint8Array([0x7f, 0x45]) });
    const whole = readFileSync(path);
    assert.deepEqual(whole.subarray(0, base.length), base);
    const start = Math.ceil(base.length / 4) * 4;
    assert.ok(whole.subarray(base.length, start).every((b) => b === 0));
    const overlay = whole.subarray(start);
    assert.deepEqual(listWithCpio(overlay), ['test.sh', 'bin', 'bin/tool', 'data', 'data/input.txt']);
    const verbose = spawnSync('cpio', ['-t', '-v', '--quiet'], { input: overlay, encoding: 'utf8' }).stdout;
    assert.match(verbose, /^-rwxr-xr-x .* test\.sh$/m);
    // the base archive still decompresses and lists on its own
    const listedBase = execFileSync('sh', ['-c', 'gzip -dc | cpio -t --quiet'], { input: whole.subarray(0, base.length), encoding: 'utf8' });
    assert.equal(listedBase.trim(), 'init');
    // same request, same file; a different script, a different file
    assert.equal(await guestInitrdWith('echo from test\n', { 'data/input.txt': 'hello', 'bin/tool': new Uint8Array([0x7f, 0x45]) }), path);
    assert.notEqual(await guestInitrdWith('echo other\n'), path);
  } finally {
    if (saved === undefined) delete process.env.TSVIRT_CACHE; else process.env.TSVIRT_CACHE = saved;
    rmSync(cache, { recursive: true, force: true });
  }
});

test('guest image paths name `tsvirt lab build` when the image is missing', async () => {
  const cache = mkdtempSync(join(tmpdir(), 'lab-cache-'));
  const saved = process.env.TSVIRT_CACHE;
  process.env.TSVIRT_CACHE = cache;
  try {
    const { guestKernelPath, guestInitrdPath } = await import('../../../src/lab/paths.js');
    assert.throws(() => guestKernelPath(), new RegExp(`lab guest kernel not found at ${cache}/lab/vmlinuz: run \`tsvirt lab build\` first`));
    assert.throws(() => guestInitrdPath(), /lab guest initrd not found at .*guest-initrd\.img: run `tsvirt lab build` first/);
    await assert.rejects(guestInitrdWith('true'), /run `tsvirt lab build` first/);
  } finally {
    if (saved === undefined) delete process.env.TSVIRT_CACHE; else process.env.TSVIRT_CACHE = saved;
    rmSync(cache, { recursive: true, force: true });
  }
});
