// The virtio benchmark's own parsing: the guest's figures, and the A/B set-ups it is asked to
// compare (TSVIRT_BENCH_VARIANTS), with a one-line error for a malformed list.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { benchVariants, parseGuestOutput } from '../../../bench/groups/virtio-guest.js';

test('TSVIRT_BENCH_VARIANTS: set-ups separated by ;, settings by ,; none means the default alone', () => {
  assert.deepEqual(benchVariants(undefined), [{}]);
  assert.deepEqual(benchVariants(''), [{}]);
  assert.deepEqual(benchVariants('A_1=1;B=0, C=x=y;'), [{ A_1: '1' }, { B: '0', C: 'x=y' }, {}]);
  assert.throws(() => benchVariants('A=1;lower=2'), /^Error: TSVIRT_BENCH_VARIANTS: 'lower=2' is not NAME=value$/);
  assert.throws(() => benchVariants('NOVALUE'), /'NOVALUE' is not NAME=value/);
});

test('the guest figures: MiB/s from dd timestamps, IOPS from fio terse lines', () => {
  const fields = Array.from({ length: 60 }, (_, i) => String(i));
  fields[7] = '1234';
  fields[48] = '567';
  const terse = ['3', ...fields.slice(1)].join(';');
  const rates = parseGuestOutput(`bench RAW_write 1.00 1.50\nnoise\nfio RAW_randread ${terse}\nfio RAW_randwrite ${terse}\r\n`);
  assert.deepEqual(rates, { RAW_write: 128, RAW_randread: 1234, RAW_randwrite: 567 });
});
