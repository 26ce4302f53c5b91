// The pure parts of tsvirt img: qemu-style argument parsing, sizes, -o strings, JSON key order,
// check percentages and measure arithmetic.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getopt, Options } from '../../../src/img/getopt.js';
import { parseSize, humanSize, parseImageSize } from '../../../src/img/size.js';
import { parseOptionString, parseCreateOptions } from '../../../src/img/create-options.js';
import { qdictOrder, qemuJson } from '../../../src/img/qemu-json.js';
import { percent } from '../../../src/img/commands/check.js';
import { qcow2FullSize } from '../../../src/img/commands/measure.js';
import { ImgError, UsageError } from '../../../src/img/errors.js';
import { runImg } from '../../../src/img/main.js';
import { BufferIO } from '../../../src/img/io.js';

const SPEC = { short: 'hf:o:q', long: { output: { arg: true }, 'backing-chain': { arg: false }, help: { arg: false, alias: 'h' } } };

test('getopt: clustered flags, attached and separate arguments, options after operands, --', () => {
  const r = getopt(['-qfqcow2', 'a.img', '--output=json', '-o', 'x=1', '--back', '--', '-b'], SPEC);
  assert.deepEqual(r.operands, ['a.img', '-b']);
  const o = new Options(r.options);
  assert.equal(o.get('f'), 'qcow2');
  assert.equal(o.get('output'), 'json');
  assert.ok(o.has('q') && o.has('backing-chain'));
  assert.deepEqual(o.all('o'), ['x=1']);
});

test('getopt: unknown and incomplete options are usage errors naming the option', () => {
  assert.throws(() => getopt(['-z'], SPEC), (e: unknown) => e instanceof UsageError && /'-z'/.test(e.message));
  assert.throws(() => getopt(['--nope'], SPEC), /'--nope'/);
  assert.throws(() => getopt(['-f'], SPEC), /missing argument for option '-f'/);
  assert.throws(() => getopt(['--output'], SPEC), /missing argument for option '--output'/);
  assert.throws(() => getopt(['--backing-chain=1'], SPEC), /doesn't allow an argument/);
});

test('sizes: suffixes, fractions, bytes; malformed is undefined', () => {
  assert.equal(parseSize('512'), 512n);
  assert.equal(parseSize('64k'), 65536n);
  assert.equal(parseSize('64K'), 65536n);
  assert.equal(parseSize('1.5G'), 1610612736n);
  assert.equal(parseSize('2T'), 2n << 40n);
  assert.equal(parseSize('1x'), undefined);
  assert.equal(parseSize('1.5'), undefined);
  assert.equal(parseSize('-1M'), undefined);
  assert.equal(parseSize('9E'), undefined);
  assert.throws(() => parseImageSize('12q'), ImgError);
});

test('humanSize prints like qemu (three significant digits, unit switch before 1000)', () => {
  assert.equal(humanSize(0n), '0 B');
  assert.equal(humanSize(512n), '512 B');
  assert.equal(humanSize(1000n), '0.977 KiB');
  assert.equal(humanSize(200704n), '196 KiB');
  assert.equal(humanSize(1323008n), '1.26 MiB');
  assert.equal(humanSize(67108864n), '64 MiB');
  assert.equal(humanSize(1610612736n), '1.5 GiB');
});

test('-o strings: ",," escapes a comma, bare keys mean on, "no" prefix off', () => {
  assert.deepEqual(parseOptionString('a=b,,c,lazy_refcounts,noextended_l2'), [['a', 'b,c'], ['lazy_refcounts', 'on'], ['extended_l2', 'off']]);
});

test('creation options are validated with the file name in the message', () => {
  assert.deepEqual(parseCreateOptions('d.qcow2', 'qcow2', 'cluster_size=16k,compat=v3,refcount_bits=8,extended_l2=on'),
    { clusterSize: 16384, compat: '1.1', refcountBits: 8, extendedL2: true });
  for (const bad of ['cluster_size=1000', 'cluster_size=4M', 'refcount_bits=3', 'compat=2', 'foo=1', 'lazy_refcounts=maybe', 'compat=0.10,refcount_bits=8']) {
    assert.throws(() => parseCreateOptions('d.qcow2', 'qcow2', bad), (e: unknown) => e instanceof ImgError && e.message.startsWith('d.qcow2: '), bad);
  }
  assert.throws(() => parseCreateOptions('d.raw', 'raw', 'cluster_size=64k'), /d\.raw: Invalid parameter 'cluster_size'/);
});

test('JSON key order is qemu\'s hash-table order', () => {
  assert.deepEqual(qdictOrder(['filename', 'format', 'check-errors', 'image-end-offset', 'total-clusters']),
    ['image-end-offset', 'total-clusters', 'check-errors', 'filename', 'format']);
  assert.equal(qemuJson({ required: 1n, 'fully-allocated': 2, bitmaps: 0 }), '{\n    "bitmaps": 0,\n    "required": 1,\n    "fully-allocated": 2\n}');
  assert.equal(qemuJson({ a: 'é"\n' }), '{\n    "a": "\\u00e9\\"\\n"\n}');
});

test('check percentages round half to even like printf', () => {
  assert.equal(percent(2, 64), '3.12');
  assert.equal(percent(1, 3), '33.33');
  assert.equal(percent(2, 3), '66.67');
  assert.equal(percent(144, 144), '100.00');
});

test('qcow2 fully allocated size follows qemu\'s layout arithmetic', () => {
  // 1 GiB, 64 KiB clusters: header + 2 L2 clusters + 1 L1 cluster + 2 refcount clusters
  assert.equal(qcow2FullSize(1n << 30n, 65536n, 16n, false), (1n << 30n) + 6n * 65536n);
});

test('runImg: unknown command and missing operands exit 1 with one line', async () => {
  const io = new BufferIO();
  assert.equal(await runImg(['frob'], io), 1);
  assert.equal(io.stderr, 'tsvirt img: Command not found: frob\n');
  const io2 = new BufferIO();
  assert.equal(await runImg(['info'], io2), 1);
  assert.equal(io2.stderr, 'tsvirt img: Expecting one image file name\n');
  const io3 = new BufferIO();
  assert.equal(await runImg(['measure', '--output', 'json', '-O', 'qcow2', '--size', '1G'], io3), 0);
  assert.deepEqual(JSON.parse(io3.stdout), { required: 393216, 'fully-allocated': 1074135040 });
});
