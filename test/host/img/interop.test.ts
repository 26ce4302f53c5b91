// tsvirt img against the real qemu-img: images each one makes must satisfy the other.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Scratch, comparableInfo, haveQemuImg } from './harness.js';

const skip = haveQemuImg() ? false : 'qemu-img is not installed';

describe('tsvirt img creates images qemu-img accepts', { skip }, () => {
  let s: Scratch;
  before(() => {
    s = new Scratch();
  });
  after(() => s.remove());

  const variants = ['', 'cluster_size=512', 'cluster_size=2M', 'compat=0.10', 'refcount_bits=1', 'refcount_bits=64',
    'extended_l2=on', 'lazy_refcounts=on', 'preallocation=metadata', 'preallocation=full', 'cluster_size=4k,refcount_bits=8'];
  for (const options of variants) {
    test(`create -f qcow2 ${options || '(defaults)'}: clean, and info/map equal to qemu-img's own`, () => {
      const extra = options ? ['-o', options] : [];
      assert.equal(s.tsvirt('create', '-q', '-f', 'qcow2', ...extra, 'ours.qcow2', '48M').status, 0);
      s.qemu('create', '-q', '-f', 'qcow2', ...extra, 'theirs.qcow2', '48M');
      const check = s.qemuImg('check', 'ours.qcow2');
      assert.equal(check.status, 0, check.stdout + check.stderr);
      assert.deepEqual(comparableInfo(s.qemu('info', '--output', 'json', 'ours.qcow2')),
        comparableInfo(s.qemu('info', '--output', 'json', 'theirs.qcow2')));
      assert.equal(s.qemu('map', '--output', 'json', 'ours.qcow2'), s.qemu('map', '--output', 'json', 'theirs.qcow2'));
    });
  }

  test('create with a backing file takes its size and records name and format', () => {
    s.qemu('create', '-q', '-f', 'qcow2', 'base.qcow2', '3M');
    const r = s.tsvirt('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^Formatting 'top.qcow2', fmt=qcow2 .*backing_file=base.qcow2 backing_fmt=qcow2 .*size=3145728/);
    const info = JSON.parse(s.qemu('info', '--output', 'json', 'top.qcow2')) as Record<string, unknown>;
    assert.equal(info['backing-filename'], 'base.qcow2');
    assert.equal(info['backing-filename-format'], 'qcow2');
    assert.equal(info['virtual-size'], 3145728);
    assert.equal(s.qemuImg('check', 'top.qcow2').status, 0);
  });

  test('raw create makes a sparse file of the exact size', () => {
    assert.equal(s.tsvirt('create', '-q', '-f', 'raw', 'disk.raw', '1.5M').status, 0);
    assert.equal(readFileSync(s.path('disk.raw')).length, 1572864);
  });
});

describe('convert output passes qemu-img check and reads back identical', { skip }, () => {
  let s: Scratch;
  before(() => {
    s = new Scratch();
    s.qemu('create', '-q', '-f', 'raw', 'src.raw', '24M');
    // data, an explicit zero run inside data, holes, and data in the last cluster
    s.io('src.raw', 'write -P 3 0 3M', 'write -P 0 1M 256k', 'write -P 5 10M 1M', 'write -P 7 24572k 4k');
  });
  after(() => s.remove());

  test('raw -> qcow2 is clean, identical, and sparse', () => {
    assert.equal(s.tsvirt('convert', '-O', 'qcow2', 'src.raw', 'out.qcow2').status, 0);
    assert.equal(s.qemuImg('check', 'out.qcow2').status, 0);
    assert.equal(s.qemuImg('compare', 'src.raw', 'out.qcow2').status, 0);
    const info = JSON.parse(s.qemu('info', '--output', 'json', 'out.qcow2')) as { 'actual-size': number };
    assert.ok(info['actual-size'] < 8 << 20, `output holds ${info['actual-size']} bytes for 4 MiB of data`);
  });

  test('qcow2 -> raw is byte-identical to the source', () => {
    s.qemu('convert', '-O', 'qcow2', 'src.raw', 'q.qcow2');
    assert.equal(s.tsvirt('convert', '-f', 'qcow2', '-O', 'raw', 'q.qcow2', 'back.raw').status, 0);
    assert.deepEqual(readFileSync(s.path('back.raw')), readFileSync(s.path('src.raw')));
  });

  test('compressed (-c) output is clean, identical and has compressed clusters', () => {
    assert.equal(s.tsvirt('convert', '-c', '-O', 'qcow2', 'src.raw', 'c.qcow2').status, 0);
    const check = s.qemuImg('check', 'c.qcow2');
    assert.equal(check.status, 0, check.stdout);
    assert.match(check.stdout, /[1-9][\d.]*% compressed clusters/);
    assert.equal(s.qemuImg('compare', 'src.raw', 'c.qcow2').status, 0);
  });

  test('-n writes into an existing qemu-made image, which stays clean', () => {
    s.qemu('create', '-q', '-f', 'qcow2', 'existing.qcow2', '24M');
    s.io('existing.qcow2', 'write -P 9 4M 4M');
    assert.equal(s.tsvirt('convert', '-n', '-O', 'qcow2', 'src.raw', 'existing.qcow2').status, 0);
    assert.equal(s.qemuImg('check', 'existing.qcow2').status, 0);
    assert.equal(s.qemuImg('compare', 'src.raw', 'existing.qcow2').status, 0);
  });

  test('-S 0 writes zeroes too (fully allocated raw output)', () => {
    assert.equal(s.tsvirt('convert', '-S', '0', '-O', 'raw', 'src.raw', 'full.raw').status, 0);
    const info = JSON.parse(s.qemu('info', '--output', 'json', 'full.raw')) as { 'actual-size': number };
    assert.ok(info['actual-size'] >= 6 << 20, `only ${info['actual-size']} bytes allocated`);
    assert.equal(s.qemuImg('compare', 'src.raw', 'full.raw').status, 0);
  });

  test('a metadata-preallocated source (clusters that are data and zero): same contents and allocation as qemu-img makes', () => {
    s.qemu('create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', 'pre.qcow2', '16M');
    s.io('pre.qcow2', 'write -P 4 1M 192k', 'write -P 6 9M 64k');
    assert.equal(s.tsvirt('convert', '-O', 'qcow2', 'pre.qcow2', 'pre-ours.qcow2').status, 0);
    s.qemu('convert', '-O', 'qcow2', 'pre.qcow2', 'pre-theirs.qcow2');
    assert.equal(s.qemuImg('compare', 'pre.qcow2', 'pre-ours.qcow2').status, 0);
    // The same extents allocated (where in the file each cluster landed may differ: both copy in parallel).
    const extents = (map: string): string => map.replace(/, "offset": \d+/g, '');
    assert.equal(extents(s.tsvirt('map', '--output', 'json', 'pre-ours.qcow2').stdout), extents(s.qemu('map', '--output', 'json', 'pre-theirs.qcow2')));
    assert.equal(s.tsvirt('convert', '-O', 'raw', 'pre.qcow2', 'pre-ours.raw').status, 0);
    assert.equal(s.qemuImg('compare', 'pre.qcow2', 'pre-ours.raw').status, 0);
    const sparse = JSON.parse(s.qemu('info', '--output', 'json', 'pre-ours.raw')) as { 'actual-size': number };
    assert.ok(sparse['actual-size'] < 2 << 20, `raw output holds ${sparse['actual-size']} bytes for 256 KiB of data`);
    // -S 0 still writes the zero clusters out as data.
    assert.equal(s.tsvirt('convert', '-S', '0', '-O', 'raw', 'pre.qcow2', 'pre-full.raw').status, 0);
    const info = JSON.parse(s.qemu('info', '--output', 'json', 'pre-full.raw')) as { 'actual-size': number };
    assert.ok(info['actual-size'] >= 15 << 20, `only ${info['actual-size']} bytes allocated`);
  });

  test('a long preallocated run of zeroes, skipped in growing steps, still yields the data after it', () => {
    // The zero runs between these writes span several look-ahead windows (64 MiB, doubling
    // to 1 GiB): data just past a window's end, deep inside one, and in the last cluster.
    s.qemu('create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', 'long.qcow2', '3G');
    s.io('long.qcow2', 'write -P 1 1M 64k', 'write -P 2 192M 64k', 'write -P 3 1500M 128k', 'write -P 4 3071M 64k');
    for (const format of ['qcow2', 'raw']) {
      const out = `long-ours.${format}`;
      const r = s.tsvirt('convert', '-O', format, 'long.qcow2', out);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(s.qemuImg('compare', 'long.qcow2', out).status, 0, format);
    }
    const data = (map: string): Array<{ start: number; length: number }> => (JSON.parse(map) as Array<{ start: number; length: number; data: boolean }>)
      .filter((e) => e.data).map(({ start, length }) => ({ start, length }));
    assert.deepEqual(data(s.tsvirt('map', '--output', 'json', 'long-ours.qcow2').stdout),
      [[1, 1], [192, 1], [1500, 2], [3071, 1]].map(([mib, n]) => ({ start: mib! * 2 ** 20, length: n! * 65536 })));
  });

  test('-p draws a progress bar on stderr that ends at 100%; stdout stays clean', () => {
    const r = s.tsvirt('convert', '-p', '-O', 'qcow2', 'src.raw', 'progress.qcow2');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /\(100\.00\/100%\)/);
    assert.equal(s.qemuImg('compare', 'src.raw', 'progress.qcow2').status, 0);
  });

  test('-B makes an image on a backing file; with -o cluster_size the layout option is honoured', () => {
    s.qemu('create', '-q', '-f', 'qcow2', 'backing.qcow2', '24M');
    const r = s.tsvirt('convert', '-O', 'qcow2', '-B', 'backing.qcow2', '-F', 'qcow2', '-o', 'cluster_size=4k', 'src.raw', 'onbacking.qcow2');
    assert.equal(r.status, 0, r.stderr);
    const info = JSON.parse(s.qemu('info', '--output', 'json', 'onbacking.qcow2')) as Record<string, unknown>;
    assert.equal(info['backing-filename'], 'backing.qcow2');
    assert.equal(info['cluster-size'], 4096);
    assert.equal(s.qemuImg('check', 'onbacking.qcow2').status, 0);
    assert.equal(s.qemuImg('compare', 'src.raw', 'onbacking.qcow2').status, 0);
  });

  test('a target that does not read as zero gets the zeroes of the source: a backing file from -B or -o, with -c too, and an existing image under -n -c', () => {
    s.qemu('create', '-q', '-f', 'qcow2', 'bz-base.qcow2', '8M');
    s.io('bz-base.qcow2', 'write -P 0x66 0 8M');
    s.qemu('create', '-q', '-f', 'qcow2', 'bz-src.qcow2', '8M');
    s.io('bz-src.qcow2', 'write -P 1 0 64k', 'write -P 2 5M 4k');
    const runs: Array<[string, string[]]> = [
      ['bz-o.qcow2', ['-O', 'qcow2', '-o', 'backing_file=bz-base.qcow2,backing_fmt=qcow2']],
      ['bz-b.qcow2', ['-O', 'qcow2', '-B', 'bz-base.qcow2', '-F', 'qcow2']],
      ['bz-bc.qcow2', ['-c', '-O', 'qcow2', '-B', 'bz-base.qcow2', '-F', 'qcow2']],
    ];
    for (const [out, args] of runs) {
      const r = s.tsvirt('convert', ...args, 'bz-src.qcow2', out);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(s.qemuImg('compare', 'bz-src.qcow2', out).status, 0, `${args.join(' ')}: the backing file's bytes do not show through`);
      assert.equal(s.qemuImg('check', out).status, 0);
    }
    s.qemu('create', '-q', '-f', 'qcow2', 'bz-existing.qcow2', '8M');
    s.io('bz-existing.qcow2', 'write -P 0x77 0 8M');
    assert.equal(s.tsvirt('convert', '-n', '-c', '-O', 'qcow2', 'bz-src.qcow2', 'bz-existing.qcow2').status, 0);
    assert.equal(s.qemuImg('compare', 'bz-src.qcow2', 'bz-existing.qcow2').status, 0, 'old data overwritten');
    assert.equal(s.qemuImg('check', 'bz-existing.qcow2').status, 0);
  });

  test('a large, mostly empty source: runs of zeroes are skipped, and data after them is copied', () => {
    s.qemu('create', '-q', '-f', 'qcow2', 'big.qcow2', '6G');
    // Data unaligned near the start, past a long empty run, and in the last cluster.
    s.io('big.qcow2', 'write -P 1 1027k 3k', 'write -P 2 3145735k 70k', 'write -P 3 6291392k 64k');
    for (const [format, args] of [['raw', []], ['qcow2', []], ['qcow2', ['-c']]] as const) {
      const out = `big-out${args.length ? '-c' : ''}.${format}`;
      const r = s.tsvirt('convert', '-p', ...args, '-O', format, 'big.qcow2', out);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /\(100\.00\/100%\)/, 'progress counts the skipped runs');
      assert.equal(s.qemuImg('compare', 'big.qcow2', out).status, 0, `${out} reads as the source`);
      const info = JSON.parse(s.qemu('info', '--output', 'json', out)) as { 'actual-size': number };
      assert.ok(info['actual-size'] < 8 << 20, `${out} holds ${info['actual-size']} bytes for 137 KiB of data`);
    }
    // A run of zeroes that crosses from one source into the next, which starts with data.
    s.qemu('create', '-q', '-f', 'raw', 'empty.raw', '3G');
    assert.equal(s.tsvirt('convert', '-O', 'qcow2', 'empty.raw', 'src.raw', 'joined.qcow2').status, 0);
    s.qemu('convert', '-O', 'qcow2', 'empty.raw', 'src.raw', 'joined-theirs.qcow2');
    assert.equal(s.qemuImg('compare', 'joined-theirs.qcow2', 'joined.qcow2').status, 0);
  });

  test('concatenating two sources', () => {
    assert.equal(s.tsvirt('convert', '-O', 'raw', 'src.raw', 'src.raw', 'twice.raw').status, 0);
    const src = readFileSync(s.path('src.raw'));
    assert.deepEqual(readFileSync(s.path('twice.raw')), Buffer.concat([src, src]));
  });
});

/** The creation options each fixture was made with, so copies keep its layout. */
function optionsOf(name: string): string[] {
  if (name === 'ext.qcow2') return ['-o', 'extended_l2=on,cluster_size=128k'];
  if (name === 'old.qcow2') return ['-o', 'compat=0.10,cluster_size=4k'];
  if (name === 'prealloc.qcow2') return ['-o', 'preallocation=metadata'];
  return [];
}

describe('images qemu-img makes read the same through tsvirt img', { skip }, () => {
  let s: Scratch;
  before(() => {
    s = new Scratch();
    s.qemu('create', '-q', '-f', 'qcow2', 'base.qcow2', '8M');
    s.io('base.qcow2', 'write -P 1 0 1M', 'write -z 2M 64k', 'write -P 2 5M 100k');
    s.qemu('snapshot', '-c', 'first', 'base.qcow2');
    s.io('base.qcow2', 'write -P 4 512k 64k');
    s.qemu('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2');
    s.io('top.qcow2', 'write -P 6 600k 128k', 'write -z 5M 64k');
    s.qemu('convert', '-c', '-O', 'qcow2', 'base.qcow2', 'compressed.qcow2');
    s.qemu('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=128k', 'ext.qcow2', '8M');
    s.io('ext.qcow2', 'write -P 8 4k 8k', 'write -z 1M 32k');
    s.qemu('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4k', 'old.qcow2', '8M');
    s.io('old.qcow2', 'write -P 9 100k 300k');
    s.qemu('create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', 'prealloc.qcow2', '8M');
    s.qemu('create', '-q', '-f', 'raw', 'plain.raw', '8M');
    s.io('plain.raw', 'write -P 3 1M 1M');
  });
  after(() => s.remove());

  for (const name of ['base.qcow2', 'top.qcow2', 'compressed.qcow2', 'ext.qcow2', 'old.qcow2', 'prealloc.qcow2', 'plain.raw']) {
    test(`${name}: info (human and JSON, with backing chain) is qemu-img's text`, () => {
      for (const args of [['info', name], ['info', '--output', 'json', name], ['info', '--backing-chain', '--output=json', name]]) {
        const ours = s.tsvirt(...args);
        assert.equal(ours.status, 0, ours.stderr);
        assert.equal(ours.stdout, s.qemu(...args), args.join(' '));
      }
    });
    test(`${name}: map --output json equals qemu-img's`, () => {
      const ours = s.tsvirt('map', '--output', 'json', name);
      assert.equal(ours.status, 0, ours.stderr);
      assert.equal(ours.stdout, s.qemu('map', '--output', 'json', name));
    });
    test(`${name}: compare with qemu's raw conversion says identical; measure agrees`, () => {
      s.qemu('convert', '-O', 'raw', name, `${name}.raw`);
      const r = s.tsvirt('compare', name, `${name}.raw`);
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.equal(r.stdout, 'Images are identical.\n');
      for (const fmt of ['qcow2', 'raw']) {
        assert.equal(s.tsvirt('measure', '--output', 'json', '-O', fmt, name).stdout, s.qemu('measure', '--output', 'json', '-O', fmt, name), `measure -O ${fmt}`);
      }
    });
  }

  // Writing over every kind of qemu-made image: the image must stay consistent for qemu-img.
  for (const name of ['compressed.qcow2', 'ext.qcow2', 'old.qcow2', 'prealloc.qcow2', 'top.qcow2']) {
    test(`${name}: convert -n over it, then a snapshot and a resize: qemu-img check stays clean`, () => {
      const copy = `w-${name}`;
      s.qemu('convert', '-O', 'qcow2', '-o', name === 'old.qcow2' ? 'compat=0.10' : 'compat=1.1', 'plain.raw', 'pattern.qcow2');
      if (name === 'top.qcow2') {
        s.qemu('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', copy);
        s.io(copy, 'write -P 6 600k 128k');
      } else {
        s.qemu('convert', '-O', 'qcow2', ...(name === 'compressed.qcow2' ? ['-c'] : []), ...optionsOf(name), name, copy);
      }
      const w = s.tsvirt('convert', '-n', '-f', 'qcow2', '-O', 'qcow2', 'pattern.qcow2', copy);
      assert.equal(w.status, 0, w.stderr);
      assert.equal(s.qemuImg('check', copy).status, 0, `after convert -n: ${s.qemuImg('check', copy).stdout}`);
      assert.equal(s.qemuImg('compare', 'plain.raw', copy).status, 0);
      assert.equal(s.tsvirt('snapshot', '-c', 'after', copy).status, 0);
      assert.equal(s.tsvirt('resize', copy, '+1M').status, 0);
      const check = s.qemuImg('check', copy);
      assert.equal(check.status, 0, check.stdout + check.stderr);
      assert.match(s.qemu('snapshot', '-l', copy), /after/);
    });
  }

  test('map human output names the file at each depth', () => {
    assert.equal(s.tsvirt('map', 'top.qcow2').stdout, s.qemu('map', 'top.qcow2'));
  });

  test('compare reports the first differing sector and exits 1, like qemu-img', () => {
    s.qemu('convert', '-O', 'raw', 'top.qcow2', 'diff.raw');
    s.io('diff.raw', 'write -P 0x55 3000001 1');
    const theirs = s.qemuImg('compare', 'top.qcow2', 'diff.raw');
    const ours = s.tsvirt('compare', 'top.qcow2', 'diff.raw');
    assert.equal(ours.status, 1);
    assert.equal(ours.status, theirs.status);
    assert.equal(ours.stdout, theirs.stdout);
  });

  test('resize grows a qemu image, which stays clean', () => {
    s.qemu('convert', '-O', 'qcow2', 'base.qcow2', 'grow.qcow2');
    const r = s.tsvirt('resize', 'grow.qcow2', '+8M');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'Image resized.\n');
    assert.equal(s.qemuImg('check', 'grow.qcow2').status, 0);
    assert.equal((JSON.parse(s.qemu('info', '--output', 'json', 'grow.qcow2')) as Record<string, number>)['virtual-size'], 16 << 20);
  });

  test('measure --size equals qemu-img for several option sets', () => {
    for (const o of ['cluster_size=64k', 'cluster_size=512', 'refcount_bits=1', 'extended_l2=on', 'preallocation=full']) {
      const args = ['measure', '--output', 'json', '-O', 'qcow2', '-o', o, '--size', '7G'];
      assert.equal(s.tsvirt(...args).stdout, s.qemu(...args), o);
    }
  });
});

describe('tsvirt img bench against qemu-img bench', { skip }, () => {
  let s: Scratch;
  before(() => {
    s = new Scratch();
  });
  after(() => s.remove());

  test('writes its pattern where qemu-img bench would, with the same report line, through io_uring and the pool, by default and by -i', () => {
    // default: tsvirt's own io_uring; -i io_uring: the same, asked for; pool: -i threads with
    // 4 pool threads preset by the caller; i-threads: the pool from a process started with
    // the default pool, so bench must start itself again with a bigger one.
    const cases = [
      ['default', {}, []],
      ['i-io_uring', {}, ['-i', 'io_uring']],
      ['pool', { UV_THREADPOOL_SIZE: '4' }, ['-i', 'threads']],
      ['i-threads', {}, ['-i', 'threads']],
    ] as const;
    for (const [name, env, engine] of cases) {
      const ours = `bench-${name}-ours.qcow2`;
      const theirs = `bench-${name}-theirs.qcow2`;
      s.qemu('create', '-q', '-f', 'qcow2', ours, '8M');
      s.qemu('create', '-q', '-f', 'qcow2', theirs, '8M');
      // 40 requests of 4 KiB stepping 68 KiB wrap around the 8 MiB image once.
      const args = (file: string): string[] => ['bench', '-w', '--pattern=165', '-c', '140', '-d', '8', '-s', '4k', '-S', '68k', '-t', 'none', ...engine, '-f', 'qcow2', file];
      const r = s.tsvirtEnv(env, ...args(ours));
      const q = s.qemuImg(...args(theirs));
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.split('\n')[0], q.stdout.split('\n')[0].replace(theirs, ours));
      assert.match(r.stdout, /^Run completed in [\d.]+ seconds\.$/m);
      assert.equal(s.qemuImg('check', ours).status, 0);
      assert.equal(s.qemuImg('compare', ours, theirs).status, 0, 'the same bytes as qemu-img bench wrote');
    }
  });

  test('-i names an engine it offers, or the command fails with a one-line error and touches nothing', () => {
    s.qemu('create', '-q', '-f', 'qcow2', 'engine.qcow2', '1M');
    const before = s.qemuImg('info', '--output', 'json', 'engine.qcow2').stdout;
    const r = s.tsvirt('bench', '-w', '-c', '4', '-i', 'native', '-t', 'none', 'engine.qcow2');
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^tsvirt img: Invalid aio option 'native': this build offers io_uring and threads\n$/);
    assert.equal(s.qemuImg('info', '--output', 'json', 'engine.qcow2').stdout, before);
  });
});
