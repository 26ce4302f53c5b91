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
