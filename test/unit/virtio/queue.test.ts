// The split virtqueue against well-formed and hostile rings, driven directly.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type GuestMemory, GuestMemoryError } from '../../../src/memory/guest-memory.js';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { gather, scatter, sliceBuffers, Virtqueue, VirtqueueError } from '../../../src/virtio/queue.js';

const DESC = 0x1000n;
const AVAIL = 0x2000n;
const USED = 0x3000n;

interface D { addr: bigint; len: number; flags?: number; next?: number }

function setup(size = 8, memory: GuestMemory = RegionGuestMemory.ofSize(1 << 20)): { q: Virtqueue; mem: GuestMemory } {
  const q = new Virtqueue(memory, 'test queue 0', 256);
  q.size = size;
  q.descTable = DESC;
  q.availRing = AVAIL;
  q.usedRing = USED;
  q.validate();
  q.ready = true;
  q.indirect = true;
  return { q, mem: memory };
}

function desc(mem: GuestMemory, table: bigint, i: number, d: D): void {
  const at = table + 16n * BigInt(i);
  mem.writeU64(at, d.addr);
  mem.writeU32(at + 8n, d.len);
  mem.writeU16(at + 12n, d.flags ?? 0);
  mem.writeU16(at + 14n, d.next ?? 0);
}

function offer(mem: GuestMemory, size: number, slot: number, head: number, idx: number): void {
  mem.writeU16(AVAIL + 4n + 2n * BigInt(slot % size), head);
  mem.writeU16(AVAIL + 2n, idx);
}

test('walks a direct chain: readable then writable buffers with byte totals', () => {
  const { q, mem } = setup();
  desc(mem, DESC, 0, { addr: 0x8000n, len: 16, flags: 1, next: 5 });
  desc(mem, DESC, 5, { addr: 0x9000n, len: 512, flags: 1 | 2, next: 2 });
  desc(mem, DESC, 2, { addr: 0xa000n, len: 1, flags: 2 });
  offer(mem, 8, 0, 0, 1);
  const chain = q.pop()!;
  assert.equal(chain.head, 0);
  assert.deepEqual(chain.readable.map(({ address, length, writable }) => ({ address, length, writable })), [{ address: 0x8000, length: 16, writable: false }]);
  // Each buffer comes with its bytes, a view aliasing guest memory.
  mem.writeU8(0x8000n, 0xab);
  assert.equal(chain.readable[0]!.bytes![0], 0xab);
  assert.equal(chain.writable[0]!.bytes!.length, 512);
  assert.equal(chain.writable.length, 2);
  assert.equal(chain.readableBytes, 16);
  assert.equal(chain.writableBytes, 513);
  assert.equal(q.pop(), null);
  q.pushUsed(chain.head, 513);
  assert.equal(mem.readU16(USED + 2n), 1);
  assert.equal(mem.readU32(USED + 4n), 0);
  assert.equal(mem.readU32(USED + 8n), 513);
});

test('walks an indirect table', () => {
  const { q, mem } = setup();
  const table = 0x5000n;
  desc(mem, table, 0, { addr: 0x8000n, len: 16, flags: 1, next: 1 });
  desc(mem, table, 1, { addr: 0x9000n, len: 100, flags: 2 });
  desc(mem, DESC, 3, { addr: table, len: 32, flags: 4 });
  offer(mem, 8, 0, 3, 1);
  const chain = q.pop()!;
  assert.equal(chain.head, 3);
  assert.equal(chain.readableBytes, 16);
  assert.equal(chain.writableBytes, 100);
});

test('available index wraps around 65535 -> 0', () => {
  const { q, mem } = setup(4);
  q.loadState({ ...q.saveState(), nextAvail: 0xfffe, nextUsed: 0xfffe });
  desc(mem, DESC, 1, { addr: 0x8000n, len: 4 });
  for (let i = 0; i < 3; i++) offer(mem, 4, 0xfffe + i, 1, (0xfffe + i + 1) & 0xffff);
  let n = 0;
  while (n < 10 && q.pop()) {
    q.pushUsed(1, 0);
    n++;
  }
  assert.equal(n, 3);
  assert.equal(mem.readU16(USED + 2n), 1);
});

function expectError(fn: () => unknown, pattern: RegExp, address?: bigint): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof VirtqueueError, `expected VirtqueueError, got ${String(e)}`);
    assert.match(e.message, pattern);
    assert.match(e.message, /^test queue 0: /);
    if (address !== undefined) assert.equal(e.guestAddress, address);
    return true;
  });
}

test('hostile: a buffer outside guest memory', () => {
  const { q, mem } = setup();
  desc(mem, DESC, 0, { addr: 0xfff00n, len: 0x1000 });
  offer(mem, 8, 0, 0, 1);
  expectError(() => q.pop(), /buffer of 4096 bytes is outside guest memory at guest address 0xfff00/, 0xfff00n);
});

test('hostile: a chain that loops', () => {
  const { q, mem } = setup();
  desc(mem, DESC, 0, { addr: 0x8000n, len: 1, flags: 1, next: 1 });
  desc(mem, DESC, 1, { addr: 0x8000n, len: 1, flags: 1, next: 0 });
  offer(mem, 8, 0, 0, 1);
  expectError(() => q.pop(), /loops or is longer than its table/);
});

test('hostile: a chain longer than the queue (every descriptor chained)', () => {
  const { q, mem } = setup(4);
  for (let i = 0; i < 4; i++) desc(mem, DESC, i, { addr: 0x8000n, len: 1, flags: 1, next: (i + 1) % 4 });
  offer(mem, 4, 0, 0, 1);
  expectError(() => q.pop(), /loops or is longer/);
});

test('hostile: next index beyond the table', () => {
  const { q, mem } = setup();
  desc(mem, DESC, 0, { addr: 0x8000n, len: 1, flags: 1, next: 200 });
  offer(mem, 8, 0, 0, 1);
  expectError(() => q.pop(), /next index 200 is beyond table size 8/, DESC);
});

test('hostile: an indirect descriptor inside an indirect table', () => {
  const { q, mem } = setup();
  desc(mem, 0x5000n, 0, { addr: 0x6000n, len: 16, flags: 4 });
  desc(mem, DESC, 0, { addr: 0x5000n, len: 16, flags: 4 });
  offer(mem, 8, 0, 0, 1);
  expectError(() => q.pop(), /indirect descriptor inside an indirect table/, 0x5000n);
});

test('hostile: indirect tables with bad lengths or outside memory', () => {
  for (const [len, addr, pattern] of [
    [0, 0x5000n, /indirect table length 0/],
    [24, 0x5000n, /indirect table length 24 is not a multiple of 16/],
    [16 * 2048, 0x5000n, /indirect table length 32768/],
    [64, 0xffff0n, /indirect table \(64 bytes\) is outside guest memory/],
  ] as const) {
    const { q, mem } = setup();
    desc(mem, DESC, 0, { addr, len, flags: 4 });
    offer(mem, 8, 0, 0, 1);
    expectError(() => q.pop(), pattern);
  }
});

test('hostile: an indirect loop inside the table', () => {
  const { q, mem } = setup();
  desc(mem, 0x5000n, 0, { addr: 0x8000n, len: 1, flags: 1, next: 1 });
  desc(mem, 0x5000n, 1, { addr: 0x8000n, len: 1, flags: 1, next: 0 });
  desc(mem, DESC, 0, { addr: 0x5000n, len: 32, flags: 4 });
  offer(mem, 8, 0, 0, 1);
  expectError(() => q.pop(), /loops/);
});

test('hostile: indirect descriptors when the feature was not negotiated', () => {
  const { q, mem } = setup();
  q.indirect = false;
  desc(mem, DESC, 0, { addr: 0x5000n, len: 16, flags: 4 });
  offer(mem, 8, 0, 0, 1);
  expectError(() => q.pop(), /without VIRTIO_F_RING_INDIRECT_DESC/);
});

test('hostile: the available index jumps more than the queue size', () => {
  const { q, mem } = setup(8);
  mem.writeU16(AVAIL + 2n, 9);
  expectError(() => q.pop(), /available index moved 9 entries past the 8/, AVAIL + 2n);
});

test('hostile: a head index beyond the queue size', () => {
  const { q, mem } = setup(8);
  offer(mem, 8, 0, 8, 1);
  expectError(() => q.pop(), /head index 8 is beyond queue size 8/, AVAIL + 4n);
});

test('hostile: a readable descriptor after a writable one', () => {
  const { q, mem } = setup();
  desc(mem, DESC, 0, { addr: 0x8000n, len: 1, flags: 1 | 2, next: 1 });
  desc(mem, DESC, 1, { addr: 0x8000n, len: 1 });
  offer(mem, 8, 0, 0, 1);
  expectError(() => q.pop(), /readable descriptor after a writable one/);
});

/** A large guest address space holding a few real pages: lets a test build 4 GiB-long chains. */
class SparseMemory extends RegionGuestMemory {
  override contains(address: bigint, length: number): boolean {
    return address >= 0n && address + BigInt(length) <= 1n << 40n;
  }

  // Above the real megabyte there are no bytes to alias: an empty view stands in.
  override slice(address: bigint, length: number): Uint8Array {
    if (address >= 1n << 20n && this.contains(address, length)) return new Uint8Array(0);
    return super.slice(address, length);
  }

  override sliceInside(address: bigint, length: number): Uint8Array | undefined {
    return this.contains(address, length) ? this.slice(address, length) : undefined;
  }

  override viewInside(address: number, length: number): Uint8Array | undefined {
    return this.sliceInside(BigInt(address), length);
  }
}

test('hostile: buffer and indirect table addresses past 2^53 are reported in full', () => {
  for (const [addr, flags, what] of [
    [0xffff_ffff_ffff_f000n, 2, 'buffer of 4096 bytes'],
    [1n << 53n, 2, 'buffer of 4096 bytes'],
    [0x0020_0000_0000_0010n, 4, 'indirect table (4096 bytes)'],
  ] as const) {
    const { q, mem } = setup();
    q.indirect = true;
    desc(mem, DESC, 0, { addr, len: 4096, flags });
    offer(mem, 8, 0, 0, 1);
    expectError(() => q.pop(), new RegExp(`${what.replace(/[()]/g, '\\$&')} is outside guest memory at guest address 0x${addr.toString(16)}`), addr);
  }
});

test('hostile: buffer lengths summing past 32 bits', () => {
  const { q, mem } = setup(8, new SparseMemory([{ guestAddress: 0n, bytes: new Uint8Array(1 << 20) }]));
  desc(mem, DESC, 0, { addr: 1n << 32n, len: 0xffffffff, flags: 1, next: 1 });
  desc(mem, DESC, 1, { addr: 1n << 33n, len: 2, flags: 2 });
  offer(mem, 8, 0, 0, 1);
  expectError(() => q.pop(), /add up to more than 4 GiB/);
});

test('hostile: queue sizes that are not powers of two, misaligned or outside memory rings', () => {
  const mem = RegionGuestMemory.ofSize(1 << 20);
  const q = new Virtqueue(mem, 'test queue 0', 256);
  q.descTable = DESC;
  q.availRing = AVAIL;
  q.usedRing = USED;
  for (const size of [0, 3, 100, 512]) {
    q.size = size;
    expectError(() => q.validate(), new RegExp(`queue size ${size} is not a power of two`));
  }
  q.size = 8;
  q.usedRing = USED + 2n;
  expectError(() => q.validate(), /used ring is not 4-byte aligned/);
  q.usedRing = 0xffff0n;
  expectError(() => q.validate(), /used ring \(70 bytes\) is outside guest memory at guest address 0xffff0/);
});

test('event index: avail_event follows consumption; interrupts only when used_event is crossed', () => {
  const { q, mem } = setup(8);
  q.eventIdx = true;
  desc(mem, DESC, 0, { addr: 0x8000n, len: 1, flags: 2 });
  for (let i = 0; i < 3; i++) offer(mem, 8, i, 0, i + 1);
  for (let i = 0; i < 3; i++) q.pop();
  assert.equal(mem.readU16(USED + 4n + 8n * 8n), 3, 'avail_event');
  mem.writeU16(AVAIL + 4n + 2n * 8n, 1); // used_event: interrupt once used idx passes 1
  q.pushUsed(0, 1);
  assert.equal(q.needsInterrupt(), true, 'first interrupt is always sent');
  q.pushUsed(0, 1);
  assert.equal(q.needsInterrupt(), true, 'used idx went 1 -> 2, crossing used_event 1');
  q.pushUsed(0, 1);
  assert.equal(q.needsInterrupt(), false, 'used_event 1 already passed');
});

test('NO_INTERRUPT flag suppresses interrupts without event index', () => {
  const { q, mem } = setup(8);
  mem.writeU16(AVAIL, 1);
  assert.equal(q.needsInterrupt(), false);
  mem.writeU16(AVAIL, 0);
  assert.equal(q.needsInterrupt(), true);
});

test('gather/scatter/sliceBuffers cross descriptor boundaries', () => {
  const mem = RegionGuestMemory.ofSize(0x10000);
  const bufs = [
    { address: 0x100, length: 3, writable: true },
    { address: 0x200, length: 5, writable: true },
  ];
  assert.equal(scatter(mem, bufs, Uint8Array.from([1, 2, 3, 4, 5, 6]), 1), 6);
  const out = new Uint8Array(8);
  assert.equal(gather(mem, bufs, out), 8);
  assert.deepEqual([...out], [0, 1, 2, 3, 4, 5, 6, 0]);
  assert.deepEqual(sliceBuffers(mem, bufs, 2, 4).map((v) => [...v]), [[2], [3, 4, 5]]);
  assert.throws(() => mem.slice(0x10000n, 1), GuestMemoryError);
});

test('notification suppression: avail_event one behind with EVENT_IDX, the NO_NOTIFY flag without', () => {
  const { q, mem } = setup(8);
  q.eventIdx = true;
  desc(mem, DESC, 0, { addr: 0x8000n, len: 4 });
  offer(mem, 8, 0, 0, 1);
  q.setNotification(false);
  assert.ok(q.pop());
  const availEvent = (): number => mem.readU16(USED + 4n + 8n * 8n);
  assert.equal(availEvent(), 0, 'one behind the 1 taken');
  assert.equal(q.notificationsSuppressed, true);
  q.setNotification(true);
  assert.equal(availEvent(), 1, 'notify on the next buffer');
  q.eventIdx = false;
  q.setNotification(false);
  assert.equal(mem.readU16(USED), 1, 'VIRTQ_USED_F_NO_NOTIFY');
  q.setNotification(true);
  assert.equal(mem.readU16(USED), 0);
});
