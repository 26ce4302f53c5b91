// Host RAM for guests: memfd backing shared by fd with a worker thread, madvise flags as
// the kernel records them (/proc/self/smaps VmFlags), guest memory split around a hole,
// up-front failures for sizes the host cannot give, and a real guest writing into it.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { GuestMemoryError } from '../../../src/memory/guest-memory.js';
import { freeHugePages, hostMemoryLimit, HostRam } from '../../../src/memory/host-ram.js';
import { Kvm } from '../../../src/kvm/system.js';
import { GuestCode, MICRO_CODE, setupLongMode } from '../../../src/kvm/microguest.js';

const MiB = 1024 * 1024;

/** The VmFlags of the mapping starting at `address`, from /proc/self/smaps. */
function vmFlags(address: bigint): string[] {
  const smaps = readFileSync('/proc/self/smaps', 'utf8');
  const start = smaps.indexOf(`${address.toString(16)}-`);
  assert.ok(start >= 0, `mapping at 0x${address.toString(16)} is in smaps`);
  const flags = /^VmFlags:(.*)$/m.exec(smaps.slice(start));
  return flags![1]!.trim().split(/\s+/);
}

test('memfd RAM: named fd, shared mapping, THP advised, bytes readable and writable', () => {
  const ram = HostRam.allocate({ size: 4 * MiB, name: 'test-ram' });
  try {
    assert.ok(ram.fd >= 0);
    assert.match(readlinkSync(`/proc/self/fd/${ram.fd}`), /^\/memfd:test-ram/);
    const flags = vmFlags(ram.address);
    assert.ok(flags.includes('sh'), `shared mapping (VmFlags ${flags.join(' ')})`);
    assert.ok(!flags.includes('lo'), 'never mlocked');
    if (ram.refusedAdvice.every((a) => !a.startsWith('MADV_HUGEPAGE'))) assert.ok(flags.includes('hg'), 'MADV_HUGEPAGE applied');
    const bytes = ram.bytes;
    assert.equal(bytes.length, 4 * MiB);
    assert.equal(bytes[123], 0, 'fresh RAM reads as zero');
    bytes[4 * MiB - 1] = 0xab;
    assert.equal(ram.view(4 * MiB - 16, 16)[15], 0xab);
  } finally {
    ram.close();
  }
});

test('advice off switches leave the mapping unadvised; anonymous backing is KSM-mergeable', () => {
  const plain = HostRam.allocate({ size: 2 * MiB, transparentHugePages: false, mergeable: false });
  try {
    const flags = vmFlags(plain.address);
    assert.ok(!flags.includes('hg') && !flags.includes('mg'), `no advice (VmFlags ${flags.join(' ')})`);
  } finally {
    plain.close();
  }
  const anon = HostRam.allocate({ size: 2 * MiB, backing: 'anonymous' });
  try {
    assert.equal(anon.fd, -1);
    const flags = vmFlags(anon.address);
    assert.ok(!flags.includes('sh'), 'private mapping');
    if (existsSync('/sys/kernel/mm/ksm')) assert.ok(flags.includes('mg'), `MADV_MERGEABLE applied (VmFlags ${flags.join(' ')})`);
  } finally {
    anon.close();
  }
});

test('RAM of either backing starts on a 2 MiB boundary and maps exactly its size', () => {
  // KVM maps a guest huge page with one entry only when host and guest addresses agree
  // modulo 2 MiB; guest RAM starts at guest address 0.
  const smapsRange = (address: bigint): [bigint, bigint] => {
    const m = new RegExp(`^${address.toString(16)}-([0-9a-f]+) `, 'm').exec(readFileSync('/proc/self/smaps', 'utf8'));
    assert.ok(m, `mapping at 0x${address.toString(16)} is in smaps`);
    return [address, BigInt(`0x${m[1]}`)];
  };
  for (const backing of ['memfd', 'anonymous'] as const) {
    // Several in a row, and an odd number of pages: the kernel alone would place some of
    // them off the boundary.
    const rams = [3, 5, 7].map((pages) => HostRam.allocate({ size: 2 * MiB + pages * 4096, backing }));
    try {
      for (const ram of rams) {
        assert.equal(ram.address % BigInt(2 * MiB), 0n, `${backing} RAM at 0x${ram.address.toString(16)} is 2 MiB aligned`);
        assert.deepEqual(smapsRange(ram.address), [ram.address, ram.address + BigInt(ram.size)], `${backing}: no reserved space left mapped`);
        ram.bytes[ram.size - 1] = 1;
      }
    } finally {
      for (const ram of rams) ram.close();
    }
  }
});

test('guest memory split around a hole maps each region to its offset in the memfd', () => {
  const ram = HostRam.allocate({ size: 2 * MiB });
  try {
    const high = 1n << 32n;
    const memory = ram.guestMemory([
      { guestAddress: 0n, offset: 0, size: 1 * MiB },
      { guestAddress: high, offset: 1 * MiB, size: 1 * MiB },
    ]);
    assert.equal(memory.size, BigInt(2 * MiB));
    memory.writeU32(0x10n, 0x11223344);
    memory.writeU64(high + 8n, 0x5566778899aabbccn);
    const view = new DataView(ram.bytes.buffer);
    assert.equal(view.getUint32(0x10, true), 0x11223344);
    assert.equal(view.getBigUint64(1 * MiB + 8, true), 0x5566778899aabbccn);
    assert.throws(() => memory.readU8(BigInt(1 * MiB)), GuestMemoryError, 'the hole is not memory');
    const regions = ram.regions([{ guestAddress: high, offset: 1 * MiB, size: 1 * MiB }]);
    assert.equal(regions[0]!.hostAddress, ram.address + BigInt(MiB));
  } finally {
    ram.close();
  }
});

test('a worker thread maps the same memfd by fd number and sees the same bytes', { timeout: 30_000 }, async () => {
  const ram = HostRam.allocate({ size: 2 * MiB });
  try {
    ram.bytes[100] = 42;
    const moduleUrl = new URL('../../../src/memory/host-ram.js', import.meta.url).href;
    const source = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(${JSON.stringify(moduleUrl)}).then(({ HostRam }) => {
        const shared = HostRam.mapFd(workerData.fd, workerData.size);
        const seen = shared.bytes[100];
        shared.bytes[200] = seen + 1;
        shared.close();
        parentPort.postMessage(seen);
      });`;
    const worker = new Worker(source, { eval: true, workerData: { fd: ram.fd, size: ram.size } });
    const seen = await new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await new Promise((resolve) => worker.once('exit', resolve));
    assert.equal(seen, 42);
    assert.equal(ram.bytes[200], 43);
  } finally {
    ram.close();
  }
});

test('sizes the host cannot give fail up front with a clear message', () => {
  const limit = hostMemoryLimit();
  assert.ok(limit > 0);
  const tooBig = Math.ceil((limit * 2) / 4096) * 4096;
  assert.throws(() => HostRam.allocate({ size: tooBig, name: 'big' }), /^Error: guest RAM 'big': .* exceeds this host's memory plus swap/);
  assert.throws(() => HostRam.allocate({ size: 1000, name: 'odd' }), /guest RAM 'odd': size 1000 is not a positive multiple of 4096 bytes/);
  const free = freeHugePages(2 * MiB);
  assert.throws(
    () => HostRam.allocate({ size: (free + 1) * 2 * MiB, name: 'huge', hugetlb: {} }),
    new RegExp(`guest RAM 'huge': needs ${free + 1} huge pages of 2.0 MiB, the host has ${free} free`),
  );
  assert.throws(() => HostRam.allocate({ size: 3 * MiB, hugetlb: {} }), /size 3145728 is not a positive multiple of 2097152/);
  assert.throws(
    () => HostRam.allocate({ size: 2 * MiB, name: 'anon-huge', backing: 'anonymous', hugetlb: { pageSize: 4096 } }),
    /guest RAM 'anon-huge': hugetlb backing needs a file, not 'anonymous'/,
  );
  assert.throws(() => HostRam.mapFd(99999, 4096), /^SyscallError: mmap failed: EBADF \(Bad file descriptor\): 4096 bytes of fd 99999$/);
  const ram = HostRam.allocate({ size: 2 * MiB, prealloc: true });
  try {
    assert.throws(() => ram.view(2 * MiB - 4, 8), /host RAM view \[2097148, \+8\) is outside the 2097152-byte mapping/);
  } finally {
    ram.close();
  }
  assert.throws(() => ram.view(0, 8), /host RAM is closed/);
});

test('a KVM guest writes into memfd RAM registered as a memory slot', { timeout: 30_000 }, () => {
  const ram = HostRam.allocate({ size: 2 * MiB });
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const vcpu = (() => {
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0n, memorySize: BigInt(ram.size), userspaceAddr: ram.address });
    return vm.createVcpu(0);
  })();
  try {
    const memory = ram.guestMemory([{ guestAddress: 0n, offset: 0, size: ram.size }]);
    const code = new GuestCode('long').movEaxImm32(0x600dcafe).storeEax(0x30000).hlt().bytes();
    memory.write(BigInt(MICRO_CODE), code);
    setupLongMode(vcpu, ram.bytes, BigInt(MICRO_CODE));
    assert.equal(vcpu.runOnce().reason, 'hlt');
    assert.equal(memory.readU32(0x30000n), 0x600dcafe);
  } finally {
    vcpu.close();
    vm.close();
    kvm.close();
    ram.close();
  }
});
