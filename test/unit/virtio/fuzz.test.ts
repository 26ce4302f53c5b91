// Seeded fuzzing of the rings: random descriptor tables, indirect tables and avail rings
// thrown at virtio-rng and virtio-blk. The device must never throw out of a notify, must do
// bounded work per notify, and must write only into the used ring and into buffers the
// driver marked device-writable -- never into other guest memory or past the guest region.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { VirtioBlk } from '../../../src/virtio/blk.js';
import type { VirtioDevice } from '../../../src/virtio/device.js';
import { VirtioRng } from '../../../src/virtio/rng.js';
import { type Machine, makeMachine, plugVirtio, settle, VirtioDriver } from './support/driver.js';
import { MemoryDisk } from './support/memory-disk.js';
import { rng as mulberry32 } from '../../support/prng.js';

const RAM = 1 << 20;
const GUARD = 4096;
// Device-readable buffers live in [0x60000, 0x80000), device-writable ones in [0x80000, RAM)
// (plus hostile addresses outside RAM): a device writing into a readable buffer is caught.
const READABLE = 0x60000;
const WRITABLE = 0x80000;

/** Guest RAM that counts accesses, carved out of a larger buffer with guard bytes around it. */
class CountingMemory extends RegionGuestMemory {
  accesses = 0;
  override readU16(a: bigint): number { this.accesses++; return super.readU16(a); }
  override readU32(a: bigint): number { this.accesses++; return super.readU32(a); }
  override readU64(a: bigint): bigint { this.accesses++; return super.readU64(a); }
  override contains(a: bigint, l: number): boolean { this.accesses++; return super.contains(a, l); }
}

function machineWithGuards(): { m: Machine; backing: Uint8Array; memory: CountingMemory } {
  const backing = new Uint8Array(RAM + 2 * GUARD).fill(0x5a);
  const ram = backing.subarray(GUARD, GUARD + RAM);
  ram.fill(0);
  const memory = new CountingMemory([{ guestAddress: 0n, bytes: ram }]);
  const m = makeMachine();
  Object.assign(m, { memory });
  return { m, backing, memory };
}

function fuzzDevice(label: string, makeDevice: (m: Machine) => VirtioDevice, rounds: number, seed: number): void {
  test(`fuzz ${label}: ${rounds} seeded rounds (seed ${seed})`, async () => {
    const rnd = mulberry32(seed);
    const int = (n: number): number => Math.floor(rnd() * n);
    let needsReset = 0;
    let completed = 0;
    for (let round = 0; round < rounds; round++) {
      const { m, backing, memory } = machineWithGuards();
      const dev = makeDevice(m);
      const { slot, transport } = plugVirtio(m, dev);
      m.bridge.assignBars();
      const features = rnd() < 0.5 ? undefined : (1n << 32n) | (rnd() < 0.5 ? 1n << 28n : 0n);
      const d = await VirtioDriver.start(m, slot, { queueSize: 16, ...(features ? { features } : {}) });
      const q = d.queues[0]!;
      const size = q.size;
      const randomAddress = (writable: boolean): bigint => {
        const r = rnd();
        if (r < 0.85) return writable ? BigInt(WRITABLE + int(RAM - WRITABLE - 0x1000)) : BigInt(READABLE + int(WRITABLE - READABLE - 0x1000));
        if (r < 0.95) return BigInt(RAM - int(64));
        return BigInt(int(2 ** 31)) * BigInt(1 + int(3));
      };
      const randomLength = (): number => {
        const r = rnd();
        if (r < 0.9) return 1 + int(0x1000);
        return [0, 0xffffffff, 0x80000000, 0xfffffff0, 0x10000][int(5)]!;
      };
      const indirectOk = features === undefined || (features & (1n << 28n)) !== 0n;
      // Start from well-formed chains, as a real driver would post them...
      const chains = 1 + int(size);
      for (let c = 0; c < chains; c++) {
        const readable = int(3);
        const writable = int(3);
        const buffers = [
          ...Array.from({ length: readable }, () => ({ address: randomAddress(false), length: 1 + int(0x1000), writable: false })),
          ...Array.from({ length: writable }, () => ({ address: randomAddress(true), length: 1 + int(0x1000), writable: true })),
        ];
        if (buffers.length === 0) buffers.push({ address: randomAddress(true), length: 512, writable: true });
        q.add(buffers, { indirect: indirectOk && rnd() < 0.3, publish: false });
      }
      q.publish();
      // ...then corrupt them: descriptor fields, indirect tables, the avail ring and index.
      const mutations = rnd() < 0.2 ? 0 : 1 + int(6);
      for (let k = 0; k < mutations; k++) {
        const target = int(6);
        if (target <= 2) {
          const at = q.desc + 16n * BigInt(int(size));
          const field = int(4);
          if (field === 0) memory.writeU64(at, randomAddress(rnd() < 0.5));
          else if (field === 1) memory.writeU32(at + 8n, randomLength() >>> 0);
          else if (field === 2) memory.writeU16(at + 12n, rnd() < 0.2 ? 0xffff : int(8));
          else memory.writeU16(at + 14n, rnd() < 0.8 ? int(size) : int(0x10000));
        } else if (target === 3) {
          memory.writeU16(q.avail + 4n + 2n * BigInt(int(size)), rnd() < 0.7 ? int(size) : int(0x10000));
        } else if (target === 4) {
          memory.writeU16(q.avail + 2n, rnd() < 0.5 ? q.availIdx + int(3) : int(0x10000));
        } else {
          // Somewhere in the driver's heap: hits indirect tables when there are any.
          const at = BigInt(Number(q.used) + 6 + 8 * size + int(0x2000)) & ~1n;
          memory.writeU16(at, int(0x10000));
        }
      }
      memory.writeU16(q.avail, int(2));
      memory.writeU16(q.avail + 4n + 2n * BigInt(size), int(0x10000));

      // What the device may write: the used ring and every device-writable buffer, from the
      // descriptor table and from any indirect table reachable through an INDIRECT descriptor.
      const allowed: Array<[number, number]> = [[Number(q.used), Number(q.used) + 6 + 8 * size]];
      const collect = (table: number, count: number, nested: boolean): void => {
        for (let i = 0; i < count; i++) {
          const at = BigInt(table + 16 * i);
          if (!memory.contains(at, 16)) return;
          const addr = memory.readU64(at);
          const len = memory.readU32(at + 8n);
          const flags = memory.readU16(at + 12n);
          if (flags & 4 && !nested && len % 16 === 0) collect(Number(addr), Math.min(len / 16, 1024), true);
          else if (flags & 2) allowed.push([Number(addr), Number(addr) + len]);
        }
      };
      collect(Number(q.desc), size, false);
      const before = Uint8Array.from(backing);
      memory.accesses = 0;
      assert.doesNotThrow(() => d.kick(0), `round ${round}`);
      const syncAccesses = memory.accesses;
      // One notify walks at most `size` chains of at most size + 1024 descriptors each.
      assert.ok(syncAccesses <= 8 * size * (size + 1024) + 64, `round ${round}: ${syncAccesses} memory accesses for one notify`);
      await settle(2);
      await settle(2);
      for (let i = 0; i < backing.length; i++) {
        if (backing[i] === before[i]) continue;
        const guest = i - GUARD;
        assert.ok(guest >= 0 && guest < RAM, `round ${round}: host byte ${i} outside guest RAM changed`);
        assert.ok(allowed.some(([a, b]) => guest >= a && guest < b), `round ${round}: guest byte 0x${guest.toString(16)} written outside the used ring and writable buffers`);
      }
      if (transport.deviceStatus & 0x40) {
        needsReset++;
        assert.ok(m.logs.some((l) => l.startsWith(`${dev.name}: ${dev.name} queue 0: `) && /guest address 0x[0-9a-f]+/.test(l)), m.logs.join('\n'));
      }
      completed += q.takeUsed().length;
      // The device still recovers after a reset.
      d.status = 0;
      assert.equal(transport.deviceStatus, 0);
    }
    // The generator must exercise both outcomes, or the test proves little.
    assert.ok(needsReset > rounds / 10, `only ${needsReset} rounds hit a protocol error`);
    assert.ok(completed > 0, 'no round completed a request');
  });
}

fuzzDevice('virtio-rng', () => new VirtioRng(), 150, 0xc0ffee);
fuzzDevice('virtio-blk', (m) => {
  const disk = new MemoryDisk(1 << 20);
  return new VirtioBlk(disk, { log: (l) => m.logs.push(l) });
}, 150, 0xb10c);
