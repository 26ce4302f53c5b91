// check and repair: corruptions injected by editing bytes of qemu-made images are found, and
// what `-r leaks` / `-r all` repair leaves an image qemu-img check calls clean.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, readSync, writeSync, closeSync, statSync, truncateSync, copyFileSync } from 'node:fs';
import { Scratch, haveQemuImg } from './harness.js';

const skip = haveQemuImg() ? false : 'qemu-img is not installed';

/** Reads the first refcount block's offset from the header and refcount table. */
function firstRefblock(path: string): number {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(8);
    readSync(fd, buf, 0, 8, 48);
    const table = Number(buf.readBigUInt64BE(0));
    readSync(fd, buf, 0, 8, table);
    return Number(buf.readBigUInt64BE(0));
  } finally {
    closeSync(fd);
  }
}

/** Sets the 16-bit refcount of host cluster `cluster`. */
function setRefcount(path: string, cluster: number, value: number): void {
  const block = firstRefblock(path);
  const fd = openSync(path, 'r+');
  try {
    const buf = Buffer.alloc(2);
    buf.writeUInt16BE(value);
    writeSync(fd, buf, 0, 2, block + cluster * 2);
  } finally {
    closeSync(fd);
  }
}

/** Host cluster of the first data cluster (from qemu-img map). */
function firstDataCluster(s: Scratch, name: string): number {
  const map = JSON.parse(s.qemu('map', '--output', 'json', name)) as Array<{ data: boolean; offset?: number }>;
  const data = map.find((e) => e.data && e.offset !== undefined);
  assert.ok(data, 'fixture has data');
  return data.offset! / 65536;
}

describe('check finds injected damage and repairs it like qemu-img', { skip }, () => {
  let s: Scratch;
  before(() => {
    s = new Scratch();
  });
  after(() => s.remove());

  function fixture(name: string): string {
    s.qemu('create', '-q', '-f', 'qcow2', name, '16M');
    s.io(name, 'write -P 1 0 256k', 'write -P 2 4M 64k');
    return name;
  }

  test('a clean image: exit 0 and the report qemu-img prints', () => {
    const name = fixture('clean.qcow2');
    for (const args of [['check', name], ['check', '--output', 'json', name]]) {
      const ours = s.tsvirt(...args);
      const theirs = s.qemuImg(...args);
      assert.equal(ours.status, 0);
      assert.equal(ours.stdout, theirs.stdout);
    }
  });

  test('a leaked cluster (refcount 1, unused): exit 3, -r leaks repairs it', () => {
    const name = fixture('leak.qcow2');
    // Grow the file by one cluster and give that cluster a refcount nothing accounts for.
    const end = statSync(s.path(name)).size;
    const cluster = Math.ceil(end / 65536);
    truncateSync(s.path(name), (cluster + 1) * 65536);
    setRefcount(s.path(name), cluster, 1);
    const theirs = s.qemuImg('check', '--output', 'json', name);
    const ours = s.tsvirt('check', '--output', 'json', name);
    assert.equal(theirs.status, 3, 'fixture is leaky for qemu-img too');
    assert.equal(ours.status, 3);
    assert.equal(JSON.parse(ours.stdout).leaks, JSON.parse(theirs.stdout).leaks);
    const fixed = s.tsvirt('check', '-r', 'leaks', name);
    assert.equal(fixed.status, 0, fixed.stdout + fixed.stderr);
    assert.match(fixed.stdout, /1 leaked clusters\n/);
    assert.equal(s.qemuImg('check', name).status, 0);
  });

  /** The counts of `check --output json` (what qemu-img and we must agree on). */
  function counts(stdout: string): Record<string, number | undefined> {
    const j = JSON.parse(stdout) as Record<string, number | undefined>;
    const keys = ['corruptions', 'leaks', 'check-errors', 'corruptions-fixed', 'leaks-fixed', 'allocated-clusters', 'total-clusters'];
    return Object.fromEntries(keys.map((k) => [k, j[k]]));
  }

  test('a wrong (too low) refcount of a data cluster: exit 2; -r all repairs, data intact', () => {
    const name = fixture('low.qcow2');
    s.qemu('convert', '-O', 'raw', name, 'low.raw');
    setRefcount(s.path(name), firstDataCluster(s, name), 0); // L2 entry now points at a free cluster
    assert.equal(s.qemuImg('check', name).status, 2);
    const found = s.tsvirt('check', name);
    assert.equal(found.status, 2);
    assert.match(found.stdout, /errors were found on the image/);
    // qemu-img counts two errors here: the refcount, and the COPIED flag of an entry whose
    // stored refcount is not 1. The same counts and the same error lines, line for line.
    const theirs = s.qemuImg('check', '--output', 'json', name);
    const ours = s.tsvirt('check', '--output', 'json', name);
    assert.equal(counts(theirs.stdout).corruptions, 2, 'fixture: qemu-img sees two corruptions');
    assert.deepEqual(counts(ours.stdout), counts(theirs.stdout));
    assert.deepEqual(ours.stderr.split('\n').filter((l) => l.startsWith('ERROR')), theirs.stderr.split('\n').filter((l) => l.startsWith('ERROR')));
    copyFileSync(s.path(name), s.path('low-theirs.qcow2'));
    // qemu-img refuses a leaks-only repair here (the refcounts need a rebuild); so do we.
    assert.equal(s.tsvirt('check', '-r', 'leaks', name).status, s.qemuImg('check', '-r', 'leaks', 'low-theirs.qcow2').status);
    const theirsFixed = s.qemuImg('check', '-r', 'all', '--output', 'json', 'low-theirs.qcow2');
    const oursFixed = s.tsvirt('check', '-r', 'all', '--output', 'json', name);
    assert.equal(theirsFixed.status, 0, 'fixture: qemu-img repairs it');
    assert.equal(oursFixed.status, theirsFixed.status, oursFixed.stderr);
    assert.deepEqual(counts(oursFixed.stdout), counts(theirsFixed.stdout));
    assert.equal(s.qemuImg('check', name).status, 0);
    assert.equal(s.qemuImg('compare', name, 'low.raw').status, 0);
  });

  test('a refcount of 2 on a cluster used once: a leak and a wrong COPIED flag, repaired like qemu-img', () => {
    const name = fixture('high.qcow2');
    setRefcount(s.path(name), firstDataCluster(s, name), 2);
    const theirs = s.qemuImg('check', '--output', 'json', name);
    const ours = s.tsvirt('check', '--output', 'json', name);
    assert.equal(theirs.status, 2, 'fixture: qemu-img reports the flag as a corruption');
    assert.equal(ours.status, theirs.status);
    assert.deepEqual(counts(ours.stdout), counts(theirs.stdout));
    for (const mode of ['leaks', 'all']) {
      copyFileSync(s.path(name), s.path(`high-${mode}-theirs.qcow2`));
      copyFileSync(s.path(name), s.path(`high-${mode}-ours.qcow2`));
      const theirsFixed = s.qemuImg('check', '-r', mode, '--output', 'json', `high-${mode}-theirs.qcow2`);
      const oursFixed = s.tsvirt('check', '-r', mode, '--output', 'json', `high-${mode}-ours.qcow2`);
      assert.equal(oursFixed.status, theirsFixed.status, mode);
      assert.deepEqual(counts(oursFixed.stdout), counts(theirsFixed.stdout), mode);
      assert.equal(s.qemuImg('check', `high-${mode}-ours.qcow2`).status, 0, mode);
    }
  });

  test('check of a raw image: exit 63 like qemu-img', () => {
    s.qemu('create', '-q', '-f', 'raw', 'plain.raw', '1M');
    const ours = s.tsvirt('check', 'plain.raw');
    assert.equal(ours.status, 63);
    assert.equal(ours.status, s.qemuImg('check', 'plain.raw').status);
    assert.match(ours.stderr, /plain\.raw.*does not support checks/);
  });

  test('-r with a bad mode is a usage error (exit 1)', () => {
    const ours = s.tsvirt('check', '-r', 'some', 'clean.qcow2');
    assert.equal(ours.status, 1);
    assert.equal(ours.stderr.trimEnd().split('\n').length, 1);
  });
});

describe('tsvirt writes to qemu-made images leave them clean', { skip }, () => {
  let s: Scratch;
  before(() => {
    s = new Scratch();
  });
  after(() => s.remove());

  function chain(prefix: string): { base: string; top: string; raw: string } {
    const base = `${prefix}-base.qcow2`;
    const top = `${prefix}-top.qcow2`;
    s.qemu('create', '-q', '-f', 'qcow2', base, '8M');
    s.io(base, 'write -P 1 0 3M', 'write -P 4 6M 64k');
    s.qemu('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top);
    s.io(top, 'write -P 2 512k 64k', 'write -z 1M 128k', 'write -P 3 5M 100k');
    s.qemu('convert', '-O', 'raw', top, `${prefix}.raw`);
    return { base, top, raw: `${prefix}.raw` };
  }

  test('snapshot -c/-l/-a/-d', () => {
    s.qemu('create', '-q', '-f', 'qcow2', 'snap.qcow2', '4M');
    s.io('snap.qcow2', 'write -P 1 0 1M');
    s.qemu('convert', '-O', 'raw', 'snap.qcow2', 'snap-first.raw');
    assert.equal(s.tsvirt('snapshot', '-c', 'first', 'snap.qcow2').status, 0);
    s.io('snap.qcow2', 'write -P 2 0 512k');
    assert.equal(s.qemuImg('check', 'snap.qcow2').status, 0);
    const listed = s.tsvirt('snapshot', '-l', 'snap.qcow2');
    assert.equal(listed.stdout, s.qemu('snapshot', '-l', 'snap.qcow2'));
    assert.match(listed.stdout, /first/);
    assert.equal(s.tsvirt('snapshot', '-a', 'first', 'snap.qcow2').status, 0);
    assert.equal(s.qemuImg('compare', 'snap.qcow2', 'snap-first.raw').status, 0);
    assert.equal(s.tsvirt('snapshot', '-d', 'first', 'snap.qcow2').status, 0);
    assert.equal(s.qemu('snapshot', '-l', 'snap.qcow2'), '');
    assert.equal(s.qemuImg('check', 'snap.qcow2').status, 0);
  });

  test('snapshot errors: unknown name, raw image, mixed actions', () => {
    for (const args of [['snapshot', '-a', 'nope', 'snap.qcow2'], ['snapshot', '-d', 'nope', 'snap.qcow2'], ['snapshot', '-c', 'x', '-d', 'y', 'snap.qcow2']]) {
      const ours = s.tsvirt(...args);
      assert.equal(ours.status, s.qemuImg(...args).status, args.join(' '));
      assert.equal(ours.stderr.trimEnd().split('\n').length, 1);
    }
  });

  test('rebase (safe) onto another image keeps the content; -b "" flattens; -u only renames', () => {
    const { top, raw } = chain('rb');
    s.qemu('create', '-q', '-f', 'qcow2', 'rb-other.qcow2', '8M');
    s.io('rb-other.qcow2', 'write -P 1 0 1M');
    assert.equal(s.tsvirt('rebase', '-b', 'rb-other.qcow2', '-F', 'qcow2', top).status, 0);
    assert.equal(s.qemuImg('check', top).status, 0);
    assert.equal(s.qemuImg('compare', top, raw).status, 0);
    assert.equal((JSON.parse(s.qemu('info', '--output', 'json', top)) as Record<string, string>)['backing-filename'], 'rb-other.qcow2');
    assert.equal(s.tsvirt('rebase', '-b', '', top).status, 0);
    assert.equal(s.qemuImg('compare', top, raw).status, 0);
    assert.equal((JSON.parse(s.qemu('info', '--output', 'json', top)) as Record<string, string>)['backing-filename'], undefined);
    assert.equal(s.tsvirt('rebase', '-u', '-b', 'rb-base.qcow2', '-F', 'qcow2', top).status, 0);
    assert.equal((JSON.parse(s.qemu('info', '--output', 'json', top)) as Record<string, string>)['backing-filename'], 'rb-base.qcow2');
    assert.equal(s.qemuImg('check', top).status, 0);
  });

  test('commit writes the top into its base and empties the top', () => {
    const { base, top, raw } = chain('cm');
    const r = s.tsvirt('commit', top);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'Image committed.\n');
    assert.equal(s.qemuImg('check', base).status, 0);
    assert.equal(s.qemuImg('check', top).status, 0);
    assert.equal(s.qemuImg('compare', base, raw).status, 0);
    assert.equal(s.qemuImg('compare', top, raw).status, 0);
    const map = JSON.parse(s.qemu('map', '--output', 'json', top)) as Array<{ depth: number }>;
    assert.ok(map.every((e) => e.depth >= 1), 'top holds no data after commit');
  });

  test('commit -d keeps the top; errors match qemu-img', () => {
    const { base, top, raw } = chain('cd');
    assert.equal(s.tsvirt('commit', '-d', top).status, 0);
    assert.equal(s.qemuImg('compare', base, raw).status, 0);
    const map = JSON.parse(s.qemu('map', '--output', 'json', top)) as Array<{ depth: number }>;
    assert.ok(map.some((e) => e.depth === 0), 'top still holds its data');
    for (const args of [['commit', base], ['commit', '-b', 'nothere', top], ['rebase', top], ['rebase', '-b', 'nothere', '-F', 'qcow2', top]]) {
      const ours = s.tsvirt(...args);
      assert.equal(ours.status, s.qemuImg(...args).status, args.join(' '));
      assert.notEqual(ours.status, 0);
      assert.equal(ours.stderr.trimEnd().split('\n').length, 1, ours.stderr);
    }
  });

  /** base <- mid <- top, each layer with data (and mid with a zeroed range) over the one below. */
  function chain3(prefix: string): { base: string; mid: string; top: string; raw: string } {
    const base = `${prefix}-base.qcow2`;
    const mid = `${prefix}-mid.qcow2`;
    const top = `${prefix}-top.qcow2`;
    s.qemu('create', '-q', '-f', 'qcow2', base, '8M');
    s.io(base, 'write -P 1 0 3M', 'write -P 4 6M 64k');
    s.qemu('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', mid);
    s.io(mid, 'write -P 2 1M 1M', 'write -z 2560k 64k');
    s.qemu('create', '-q', '-f', 'qcow2', '-b', mid, '-F', 'qcow2', top);
    s.io(top, 'write -P 3 1536k 128k', 'write -P 5 7M 100k');
    s.qemu('convert', '-O', 'raw', top, `${prefix}.raw`);
    return { base, mid, top, raw: `${prefix}.raw` };
  }

  test('commit -b into a deeper base: top and middle go down, the top is kept (-b implies -d), same as qemu-img', () => {
    const ours = chain3('cb-ours');
    const theirs = chain3('cb-theirs');
    const topMapBefore = s.qemu('map', '--output', 'json', ours.top);
    const r = s.tsvirt('commit', '-b', ours.base, ours.top);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'Image committed.\n');
    assert.equal(s.qemuImg('commit', '-q', '-b', theirs.base, theirs.top).status, 0);
    assert.equal(s.qemuImg('check', ours.base).status, 0);
    assert.equal(s.qemuImg('compare', ours.base, ours.raw).status, 0, 'the base now reads as the top did');
    assert.equal(s.qemuImg('compare', ours.base, theirs.base).status, 0, 'the same base as qemu-img commit makes');
    assert.equal(s.qemu('map', '--output', 'json', ours.top), topMapBefore, 'the top is left as it was');
    // -b may also name the base by the path the middle image records, or by another path to it.
    const again = chain3('cb-path');
    assert.equal(s.tsvirt('commit', '-q', '-b', s.path(again.base), again.top).status, 0);
    assert.equal(s.qemuImg('compare', again.base, again.raw).status, 0);
  });

  test('commit -p prints progress to 100%; -d, -t and -r are accepted; bad -b and -r fail like qemu-img', () => {
    const { mid, top, raw } = chain3('cp');
    const r = s.tsvirt('commit', '-p', '-d', '-t', 'writeback', '-r', '1G', top);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /\(100\.00\/100%\)/);
    assert.equal(s.qemuImg('compare', mid, raw).status, 0, 'committed into the immediate backing file');
    for (const args of [['commit', '-b', 'nothere.qcow2', top], ['commit', '-b', top, top], ['commit', '-r', 'fast', top]]) {
      const ours = s.tsvirt(...args);
      assert.equal(ours.status, s.qemuImg(...args).status, args.join(' '));
      assert.notEqual(ours.status, 0);
      assert.equal(ours.stderr.trimEnd().split('\n').length, 1, ours.stderr);
    }
  });

  test('commit -r limits the rate: 228 KiB at 100 KiB/s take over a second and commit the same data', () => {
    const { mid, top, raw } = chain3('cr');
    const started = performance.now();
    const r = s.tsvirt('commit', '-r', '100k', top);
    const seconds = (performance.now() - started) / 1000;
    assert.equal(r.status, 0, r.stderr);
    assert.ok(seconds >= 1.2, `commit -r 100k of 228 KiB took ${seconds.toFixed(2)} s`);
    assert.equal(s.qemuImg('compare', mid, raw).status, 0, 'committed into the immediate backing file');
  });

  test('resize --shrink and + sizes keep qemu images clean', () => {
    s.qemu('create', '-q', '-f', 'qcow2', 'rs.qcow2', '8M');
    s.io('rs.qcow2', 'write -P 1 0 1M');
    assert.equal(s.tsvirt('resize', 'rs.qcow2', '+2M').status, 0);
    assert.equal(s.tsvirt('resize', '--shrink', 'rs.qcow2', '-4M').status, 0);
    assert.equal(s.qemuImg('check', 'rs.qcow2').status, 0);
    assert.equal((JSON.parse(s.qemu('info', '--output', 'json', 'rs.qcow2')) as Record<string, number>)['virtual-size'], 6 << 20);
  });
});
