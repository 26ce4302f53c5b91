import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, parseChannelOption, parseDiskOption, parseRngOption } from '../../../src/virtio/config.js';

test('--disk: path with every key', () => {
  assert.deepEqual(
    parseDiskOption('/img/a,,b.qcow2,format=qcow2,readonly,cache=none,serial=SN1,logical_block_size=4096,physical_block_size=4096,addr=0x5,num_queues=2,werror=stop'),
    {
      path: '/img/a,b.qcow2', format: 'qcow2', readOnly: true, cache: 'none', serial: 'SN1', logicalBlockSize: 4096,
      physicalBlockSize: 4096, addr: 5, numQueues: 2, errorPolicy: 'stop',
    },
  );
  assert.deepEqual(parseDiskOption('disk.raw'), { path: 'disk.raw', readOnly: false });
  assert.deepEqual(parseDiskOption('file=x.img,readonly=off'), { path: 'x.img', readOnly: false });
});

test('--disk: one-line errors naming the bad key or value', () => {
  const cases: Array<[string, RegExp]> = [
    ['a.img,format=vmdk', /^--disk: format=vmdk is not raw or qcow2$/],
    ['a.img,cache=unsafe', /^--disk: cache=unsafe is not none, writeback or writethrough$/],
    ['a.img,logical_block_size=1000', /^--disk: logical_block_size=1000 is not a power of two$/],
    ['a.img,logical_block_size=256', /^--disk: logical_block_size=256 is not an integer in 512..65536$/],
    ['a.img,physical_block_size=abc', /^--disk: physical_block_size=abc is not an integer/],
    ['a.img,logical_block_size=4096,physical_block_size=512', /physical_block_size=512 is smaller than logical_block_size=4096/],
    ['a.img,addr=32', /^--disk: addr=32 is not a PCI slot in 1..31$/],
    ['a.img,addr=0', /addr=0 is not a PCI slot/],
    ['a.img,readonly=maybe', /^--disk: readonly=maybe is not on\/off$/],
    ['a.img,serial=' + 'x'.repeat(21), /serial=x+ is longer than 20 bytes/],
    ['a.img,bogus=1', /^--disk: unknown key 'bogus' in 'a.img,bogus=1'$/],
    ['a.img,,,', /^--disk: empty option/],
    ['format=raw', /^--disk: no image path in 'format=raw'$/],
    ['a.img,serial=', /^--disk: serial needs a value/],
    ['a.img,werror=ignore', /werror=ignore is not report or stop/],
  ];
  for (const [text, pattern] of cases) {
    assert.throws(() => parseDiskOption(text), (e: unknown) => e instanceof ConfigError && pattern.test(e.message) && !e.message.includes('\n'), text);
  }
});

test('--channel', () => {
  assert.deepEqual(parseChannelOption('name=org.qemu.guest_agent.0,path=/run/qga.sock'), { name: 'org.qemu.guest_agent.0', path: '/run/qga.sock' });
  assert.throws(() => parseChannelOption('path=/x'), /^ConfigError: --channel: name=\.\.\. is missing in 'path=\/x'$/);
  assert.throws(() => parseChannelOption('name=a'), /--channel: path=\.\.\. is missing/);
  assert.throws(() => parseChannelOption('name=a b,path=/x'), /--channel: name=a b must be/);
  assert.throws(() => parseChannelOption('name=a,path=/x,mode=raw'), /--channel: unknown key 'mode'/);
});

test('--rng', () => {
  assert.deepEqual(parseRngOption(''), {});
  assert.deepEqual(parseRngOption('rate=1024/1000'), { rateLimit: { bytes: 1024, periodMs: 1000 } });
  assert.deepEqual(parseRngOption('rate=10/5,addr=7'), { rateLimit: { bytes: 10, periodMs: 5 }, addr: 7 });
  assert.throws(() => parseRngOption('rate=1024'), /^ConfigError: --rng: rate=1024 is not BYTES\/PERIOD_MS with both positive$/);
  assert.throws(() => parseRngOption('rate=0/10'), /rate=0\/10 is not BYTES\/PERIOD_MS/);
  assert.throws(() => parseRngOption('speed=1'), /--rng: unknown key 'speed'/);
});
