// Every bad argument and bad image: one line on stderr, and qemu-img's exit status.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { Scratch, haveQemuImg } from './harness.js';

const skip = haveQemuImg() ? false : 'qemu-img is not installed';

describe('bad arguments and bad images', { skip }, () => {
  let s: Scratch;
  before(() => {
    s = new Scratch();
    s.qemu('create', '-q', '-f', 'qcow2', 'good.qcow2', '4M');
    s.qemu('create', '-q', '-f', 'raw', 'good.raw', '4M');
    s.qemu('create', '-q', '-f', 'raw', 'other.raw', '4M');
    s.io('other.raw', 'write -P 1 8k 1');
    const bad = Buffer.alloc(4096);
    bad.write('QFI\xfb', 0, 'latin1');
    bad.writeUInt32BE(7, 4); // unsupported version
    writeFileSync(s.path('badversion.qcow2'), bad);
    const truncated = Buffer.from('QFI\xfb\0\0\0\x03', 'latin1');
    writeFileSync(s.path('truncated.qcow2'), truncated);
  });
  after(() => s.remove());

  // [arguments, text the one-line error must contain]
  const cases: Array<[string[], string]> = [
    [['info'], 'Expecting one image file name'],
    [['info', 'a', 'b'], 'Expecting one image file name'],
    [['info', '-z', 'good.qcow2'], "'-z'"],
    [['info', '--frobnicate', 'good.qcow2'], '--frobnicate'],
    [['info', '-f'], "'-f'"],
    [['info', 'missing.qcow2'], 'missing.qcow2'],
    [['info', '-f', 'vmdk2', 'good.qcow2'], 'vmdk2'],
    [['info', '--output', 'xml', 'good.qcow2'], '--output'],
    [['info', 'badversion.qcow2'], 'badversion.qcow2'],
    [['info', 'truncated.qcow2'], 'truncated.qcow2'],
    [['map', 'badversion.qcow2'], 'badversion.qcow2'],
    [['map', '--output', 'xml', 'good.qcow2'], '--output'],
    [['create', '-f', 'qcow2', 'new.qcow2'], 'new.qcow2'],
    [['create', '-f', 'qcow2', 'new.qcow2', '1x'], 'size'],
    [['create', '-f', 'qcow2', 'new.qcow2', '1M', '2M'], '2M'],
    [['create', '-f', 'vmdk2', 'new.img', '1M'], 'new.img'],
    [['create', '-f', 'qcow2', '-o', 'cluster_size=1000', 'new.qcow2', '1M'], 'new.qcow2'],
    [['create', '-f', 'qcow2', '-o', 'foo=1', 'new.qcow2', '1M'], 'foo'],
    [['create', '-f', 'qcow2', '-o', 'compat=0.10,lazy_refcounts=on', 'new.qcow2', '1M'], 'new.qcow2'],
    [['create', '-f', 'qcow2', '-b', 'good.qcow2', 'new.qcow2'], 'new.qcow2'],
    [['create', '-f', 'qcow2', '-b', 'nothere.qcow2', '-F', 'qcow2', 'new.qcow2', '1M'], 'nothere.qcow2'],
    [['convert', 'good.qcow2'], 'file name'],
    [['convert', '-O', 'vmdk2', 'good.qcow2', 'out.img'], 'vmdk2'],
    [['convert', '-O', 'raw', 'missing.qcow2', 'out.raw'], 'missing.qcow2'],
    [['convert', '-S', '100', 'good.qcow2', 'out.raw'], 'sparse'],
    [['convert', '-c', '-O', 'raw', 'good.qcow2', 'out.raw'], 'ompression'],
    [['convert', '-t', 'bogus', '-O', 'raw', 'good.qcow2', 'out.raw'], 'bogus'],
    [['check', '-r', 'some', 'good.qcow2'], 'some'],
    [['check', 'missing.qcow2'], 'missing.qcow2'],
    [['snapshot', '-c', 'x', 'missing.qcow2'], 'missing.qcow2'],
    [['snapshot', '-a', 'nope', 'good.qcow2'], 'nope'],
    [['rebase', 'good.qcow2'], '-b'],
    [['commit', 'good.qcow2'], 'backing file'],
    [['commit', 'missing.qcow2'], 'missing.qcow2'],
    [['resize', 'good.qcow2', '-8M'], 'positive'],
    [['resize', 'good.qcow2', '2M'], '--shrink'],
    [['resize', 'good.qcow2'], 'size'],
    [['resize', 'missing.qcow2', '8M'], 'missing.qcow2'],
    [['compare', 'good.raw'], 'file names'],
    [['compare', 'good.raw', 'missing.raw'], 'missing.raw'],
    [['measure'], '--size'],
    [['measure', '--size', '1M', 'good.raw'], '--size'],
    [['bench', 'missing.qcow2'], 'missing.qcow2'],
    [['frobnicate'], 'frobnicate'],
  ];
  for (const [args, mention] of cases) {
    test(`img ${args.join(' ')}`, () => {
      const theirs = s.qemuImg(...args);
      const ours = s.tsvirt(...args);
      assert.equal(ours.status, theirs.status, `exit status: ours ${ours.status} (${ours.stderr.trim()}), qemu-img ${theirs.status}`);
      assert.notEqual(ours.status, 0);
      const lines = ours.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 1, `one line expected, got: ${ours.stderr}`);
      assert.ok(lines[0]!.includes(mention), `"${lines[0]}" should mention ${mention}`);
    });
  }

  test('compare: identical 0, different 1, unopenable 2 (the same as qemu-img)', () => {
    for (const pair of [['good.raw', 'good.qcow2'], ['good.raw', 'other.raw'], ['good.raw', 'missing.raw']]) {
      assert.equal(s.tsvirt('compare', ...pair).status, s.qemuImg('compare', ...pair).status, pair.join(' vs '));
    }
    s.qemu('create', '-q', '-f', 'raw', 'short.raw', '2M');
    const theirs = s.qemuImg('compare', '-s', 'good.raw', 'short.raw');
    const ours = s.tsvirt('compare', '-s', 'good.raw', 'short.raw');
    assert.equal(ours.status, theirs.status);
    assert.equal(ours.stdout, theirs.stdout);
  });
});
