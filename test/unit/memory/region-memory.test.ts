import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { GuestMemoryError } from '../../../src/memory/guest-memory.js';

test('reads and writes little-endian values inside a region', () => {
  const mem = new RegionGuestMemory([
    { guestAddress: 0n, bytes: new Uint8Array(4096) },
    { guestAddress: 0x10000n, bytes: new Uint8Array(4096) },
  ]);
  mem.writeU32(0x10010n, 0xdeadbeef);
  assert.equal(mem.readU8(0x10010n), 0xef);
  assert.equal(mem.readU32(0x10010n), 0xdeadbeef);
  mem.writeU64(8n, 0x0102030405060708n);
  assert.equal(mem.readU16(8n), 0x0708);
  assert.equal(mem.size, 8192n);
});

test('refuses accesses outside or straddling regions', () => {
  const mem = new RegionGuestMemory([
    { guestAddress: 0n, bytes: new Uint8Array(4096) },
    { guestAddress: 4096n, bytes: new Uint8Array(4096) },
  ]);
  assert.throws(() => mem.readU32(4094n), GuestMemoryError);
  assert.throws(() => mem.slice(8192n, 1), /0x2000/);
  assert.throws(() => mem.readU8(-1n), GuestMemoryError);
  assert.equal(mem.contains(4096n, 4096), true);
  assert.equal(mem.contains(4095n, 2), false);
});

test('rejects overlapping regions', () => {
  assert.throws(
    () => new RegionGuestMemory([
      { guestAddress: 0n, bytes: new Uint8Array(4096) },
      { guestAddress: 4095n, bytes: new Uint8Array(16) },
    ]),
    /overlap/,
  );
});

test('sliceInside aliases guest bytes, and answers undefined for every range that is not inside one region', () => {
  const mem = new RegionGuestMemory([
    { guestAddress: 0x1000n, bytes: new Uint8Array(4096) },
    { guestAddress: 0x1_0000_0000n, bytes: new Uint8Array(4096) },
  ]);
  const view = mem.sliceInside(0x1_0000_0010n, 4)!;
  view.set([1, 2, 3, 4]);
  assert.equal(mem.readU32(0x1_0000_0010n), 0x04030201);
  assert.equal(mem.sliceInside(0x1000n, 4096)?.length, 4096);
  for (const [address, length] of [[0xfffn, 2], [0x1fffn, 2], [0x2000n, 1], [-1n, 1], [0x1000n, -1], [0x1000n, Number.NaN],
    [1n << 60n, 1], [0x1_0000_0000n + 4095n, 2]] as const) {
    assert.equal(mem.sliceInside(address, length), undefined, `0x${address.toString(16)} +${length}`);
    assert.equal(mem.contains(address, length), false);
  }
});

test('refuses a region that reaches beyond 2^53 (addresses are compared as numbers)', () => {
  assert.throws(() => new RegionGuestMemory([{ guestAddress: 1n << 53n, bytes: new Uint8Array(16) }]), /beyond 2\^53/);
});
