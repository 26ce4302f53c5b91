// The virtio benchmark's own parsing: the guest's figures, and the A/B set-ups it is asked to
// compare (TSVIRT_BENCH_VARIANTS), with a one-line error for a malformed list.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { benchVariants, ConsoleMarks, parseGuestOutput } from '../../../bench/groups/virtio-guest.js';

test('TSVIRT_BENCH_VARIANTS: set-ups separated by ;, settings by ,; none means the default alone', () => {
  assert.deepEqual(benchVariants(undefined), [{}]);
  assert.deepEqual(benchVariants(''), [{}]);
  assert.deepEqual(benchVariants('A_1=1;B=0, C=x=y;'), [{ A_1: '1' }, { B: '0', C: 'x=y' }, {}]);
  assert.throws(() => benchVariants('A=1;lower=2'), /^Error: TSVIRT_BENCH_VARIANTS: 'lower=2' is not NAME=value$/);
  assert.throws(() => benchVariants('NOVALUE'), /'NOVALUE' is not NAME=value/);
});

test('the guest figures: MiB/s from when the dd marks reached the host, IOPS from fio terse lines', () => {
  const fields = Array.from({ length: 60 }, (_, i) => String(i));
  fields[7] = '1234';
  fields[48] = '567';
  const terse = ['3', ...fields.slice(1)].join(';');
  const marks = new ConsoleMarks();
  // A line counts when its end arrives, split across chunks or not; an unfinished pair gives nothing.
  // Each call returns the marks it completed, in order (the KVM counter windows hang on them).
  assert.deepEqual(marks.feed('boot noise\nbench-mark RAW_write begin\r\nbench-mark RAW_wr', 1000), [{ name: 'RAW_write', phase: 'begin' }]);
  assert.deepEqual(marks.feed('ite end\r\nbench-mark RAW_read begin\n', 3000),
    [{ name: 'RAW_write', phase: 'end' }, { name: 'RAW_read', phase: 'begin' }]);
  assert.deepEqual(marks.feed('bench-mark QCOW2_write begin\nbench-mark RAW_read end\n', 3500),
    [{ name: 'QCOW2_write', phase: 'begin' }, { name: 'RAW_read', phase: 'end' }]);
  assert.deepEqual(marks.feed('bench-mark QCOW2_wr', 3600), []);
  const out = `noise\nfio RAW_randread ${terse}\nfio RAW_randwrite ${terse}\r\n`;
  const rates = parseGuestOutput(out, marks);
  assert.equal(rates.RAW_write, 256 / 2, '256 MiB in 2 s');
  assert.equal(rates.RAW_read, 256 / 0.5);
  assert.equal(rates.QCOW2_write, undefined);
  assert.equal(rates.RAW_randread, 1234);
  assert.equal(rates.RAW_randwrite, 567);
});
