// The virtio device path without a guest: a driver simulated in TypeScript posts requests
// through the virtio-pci transport and the split ring, so the numbers show the device-side
// cost per request (ring walking, bounds checks, completion and interrupt decision). There
// is no comparable QEMU measurement without a running guest, so the reference is empty.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BenchGroup, BenchRow } from '../main.js';
import { createRaw, RawDriver } from '../../src/block/raw.js';
import { createEventfdWatcher } from '../../src/kvm/eventfd-watcher.js';
import { write } from '../../src/kvm/libc.js';
import { KvmInterruptSink } from '../../src/pci/kvm-interrupts.js';
import { VirtioBlk } from '../../src/virtio/blk.js';
import { KvmNotifyRegistrar } from '../../src/virtio/kvm-notify.js';
import { VIRTQ_DESC_F_INDIRECT } from '../../src/virtio/queue.js';
import { VirtioRng } from '../../src/virtio/rng.js';
import { tmpfsDir } from '../../test/unit/block/helpers.js';
import { makeMachine, plugVirtio, VirtioDriver } from '../../test/unit/virtio/support/driver.js';
import { MemoryDisk } from '../../test/unit/virtio/support/memory-disk.js';

async function blkReads(depth: number, total: number): Promise<number> {
  const m = makeMachine(16 << 20);
  const blk = new VirtioBlk(new MemoryDisk(64 << 20), { queueSize: 256 });
  const { slot } = plugVirtio(m, blk);
  m.bridge.assignBars();
  const d = await VirtioDriver.start(m, slot, { queueSize: 256, msix: true });
  const q = d.queues[0]!;
  const slots = Array.from({ length: depth }, () => {
    const hdr = d.alloc(16, 16);
    m.memory.writeU32(hdr, 0);
    return { hdr, data: d.alloc(4096, 4096), status: d.alloc(1, 1) };
  });
  const submit = (i: number, n: number): void => {
    const s = slots[i]!;
    m.memory.writeU64(s.hdr + 8n, BigInt((n * 8) % (64 << 11)));
    q.add([
      { address: s.hdr, length: 16, writable: false },
      { address: s.data, length: 4096, writable: true },
      { address: s.status, length: 1, writable: true },
    ], { indirect: true });
  };
  const start = process.hrtime.bigint();
  let issued = 0;
  for (let i = 0; i < depth; i++) submit(i, issued++);
  q.kick();
  let done = 0;
  while (done < total) {
    const used = await q.waitUsed(1, 10_000);
    done += used.length;
    for (let i = 0; i < used.length && issued < total; i++) submit(issued % depth, issued++);
    q.kick();
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return total / seconds;
}

/**
 * 1 MiB writes whose data sits in 256 scattered guest pages (an indirect table of 258
 * descriptors), two in flight, to a raw file on tmpfs: the device's own work per buffer
 * (ring walk, views, iovecs). Returns microseconds of user CPU per request; the copies are
 * system time and are left out.
 */
async function blkScatteredWrites(total: number): Promise<number> {
  const dir = mkdtempSync(join(tmpfsDir() ?? tmpdir(), 'tsvirt-bench-blk-'));
  const file = join(dir, 'disk.raw');
  await createRaw(file, { size: 64n << 20n });
  const disk = await RawDriver.open(file, { memoryIoInline: true });
  try {
    const m = makeMachine(48 << 20);
    const { slot } = plugVirtio(m, new VirtioBlk(disk, { queueSize: 256 }));
    m.bridge.assignBars();
    const d = await VirtioDriver.start(m, slot, { queueSize: 256, msix: true });
    const q = d.queues[0]!;
    // Pages in a fixed shuffled order, as a guest's page cache hands them out.
    const area = d.alloc(8 << 20, 4096);
    const pages = Array.from({ length: 2048 }, (_, i) => i);
    for (let i = pages.length - 1, seed = 1; i > 0; i--) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      const j = seed % (i + 1);
      [pages[i], pages[j]] = [pages[j]!, pages[i]!];
    }
    // Each request slot has its indirect table written once; a request is its head
    // descriptor, pointing at the table, and an entry in the available ring.
    const slots = Array.from({ length: 8 }, (_, s) => {
      const hdr = d.alloc(16, 16);
      m.memory.writeU32(hdr, 1);
      const buffers = [{ address: hdr, length: 16, writable: false }];
      for (let p = 0; p < 256; p++) buffers.push({ address: area + BigInt(pages[s * 256 + p]! * 4096), length: 4096, writable: false });
      buffers.push({ address: d.alloc(1, 1), length: 1, writable: true });
      const table = d.alloc(16 * buffers.length, 16);
      buffers.forEach((b, i) => q.writeDesc(table, i, b, i + 1 < buffers.length ? i + 1 : undefined));
      return { hdr, table: { address: table, length: 16 * buffers.length, writable: false } };
    });
    let head = 0;
    const submit = (n: number): void => {
      const s = slots[n % slots.length]!;
      m.memory.writeU64(s.hdr + 8n, BigInt((n % 64) * 2048));
      const at = head++ % q.size;
      q.writeDesc(q.desc, at, s.table, undefined, VIRTQ_DESC_F_INDIRECT);
      m.memory.writeU16(q.avail + 4n + 2n * BigInt(q.availIdx % q.size), at);
      q.availIdx = (q.availIdx + 1) & 0xffff;
      q.publish();
    };
    const run = async (count: number): Promise<void> => {
      let issued = 0;
      for (; issued < 2; issued++) submit(issued);
      q.kick();
      for (let done = 0; done < count;) {
        const used = await q.waitUsed(1, 10_000);
        done += used.length;
        for (let i = 0; i < used.length && issued < count; i++) submit(issued++);
        q.kick();
      }
    };
    await run(200);
    const before = process.cpuUsage();
    await run(total);
    return process.cpuUsage(before).user / total;
  } finally {
    await disk.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The main thread's CPU time so far, in nanoseconds (schedstat: not rounded to clock ticks). */
function mainThreadCpuNs(): number {
  return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ')[0]);
}

/**
 * 4 KiB reads two deep, as a guest's readahead keeps them, through the VMM's own event-loop
 * path: doorbells are eventfds the eventfd watcher serves (as KVM's ioeventfds are),
 * interrupts are irqfd writes, and the driver reacts to each interrupt on the event loop.
 * The disk is a raw file on tmpfs read on the spot. Returns main-thread CPU (device and
 * driver) per request, in microseconds: the figure that the lab's emulation multiplies.
 */
async function blkEventLoopReads(total: number): Promise<number> {
  const dir = mkdtempSync(join(tmpfsDir() ?? tmpdir(), 'tsvirt-bench-blk-'));
  const file = join(dir, 'disk.raw');
  await createRaw(file, { size: 16n << 20n });
  const disk = await RawDriver.open(file, { memoryIoInline: true });
  const watcher = createEventfdWatcher();
  // Keeps the loop alive: the watches alone do not, as in the VMM.
  const alive = setInterval(() => undefined, 60_000);
  const doorbells = new Map<number, number>();
  let onInterrupt = (): void => undefined;
  const irqfds: number[] = [];
  try {
    const m = makeMachine(16 << 20);
    const registrar = new KvmNotifyRegistrar({
      registerIoeventfd: (io) => { doorbells.set(Number(io.address), io.fd); },
      unregisterIoeventfd: () => undefined,
    }, watcher);
    const sink = new KvmInterruptSink({
      signalMsi: () => { throw new Error('every MSI has an irqfd here'); },
      irqLine: () => undefined,
      setGsiRouting: () => undefined,
      registerIrqfd: (fd) => { irqfds.push(fd); watcher.watch(fd, () => onInterrupt()); },
      unregisterIrqfd: (fd) => watcher.unwatch(fd),
    });
    m.sink.signalMsi = (address, data) => sink.signalMsi(address, data);
    const { slot } = plugVirtio(m, new VirtioBlk(disk, { queueSize: 256 }), undefined, registrar);
    m.bridge.assignBars();
    const d = await VirtioDriver.start(m, slot, { queueSize: 256, msix: true });
    const q = d.queues[0]!;
    const doorbell = [...doorbells.values()][0]!;
    const one = new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0]);
    const depth = 2;
    const tables = Array.from({ length: depth }, () => {
      const hdr = d.alloc(16, 16);
      const buffers = [{ address: hdr, length: 16, writable: false }, { address: d.alloc(4096, 4096), length: 4096, writable: true }, { address: d.alloc(1, 1), length: 1, writable: true }];
      const table = d.alloc(16 * buffers.length, 16);
      buffers.forEach((b, i) => q.writeDesc(table, i, b, i + 1 < buffers.length ? i + 1 : undefined));
      return { hdr, table: { address: table, length: 16 * buffers.length, writable: false } };
    });
    let head = 0;
    let sector = 0;
    const slotOfHead = new Map<number, number>();
    const submit = (s: number): void => {
      const t = tables[s]!;
      m.memory.writeU64(t.hdr + 8n, BigInt((sector += 8) % 32768));
      const at = head++ % q.size;
      slotOfHead.set(at, s);
      q.writeDesc(q.desc, at, t.table, undefined, VIRTQ_DESC_F_INDIRECT);
      m.memory.writeU16(q.avail + 4n + 2n * BigInt(q.availIdx % q.size), at);
      q.availIdx = (q.availIdx + 1) & 0xffff;
      q.publish();
    };
    // A guest's virtio driver: kick only when avail_event asks for it (EVENT_IDX).
    const kickIfAsked = (old: number): void => {
      if (((q.availIdx - q.availEvent - 1) & 0xffff) < ((q.availIdx - old) & 0xffff)) write(doorbell, one);
    };
    const run = (count: number): Promise<void> => new Promise((resolve) => {
      let issued = 0;
      let done = 0;
      onInterrupt = () => {
        const old = q.availIdx;
        for (const u of q.takeUsed()) {
          done++;
          if (issued < count) {
            submit(slotOfHead.get(u.id)!);
            issued++;
          }
        }
        q.setUsedEvent(q.lastUsed);
        kickIfAsked(old);
        if (done >= count) resolve();
      };
      const old = q.availIdx;
      for (let s = 0; s < depth; s++, issued++) submit(s);
      q.setUsedEvent(q.lastUsed);
      kickIfAsked(old);
    });
    await run(500);
    const before = mainThreadCpuNs();
    await run(total);
    return (mainThreadCpuNs() - before) / 1000 / total;
  } finally {
    clearInterval(alive);
    await watcher.close();
    await disk.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function rngThroughput(bytes: number): Promise<number> {
  const m = makeMachine(8 << 20);
  const { slot } = plugVirtio(m, new VirtioRng());
  m.bridge.assignBars();
  const d = await VirtioDriver.start(m, slot, { queueSize: 64 });
  const q = d.queues[0]!;
  const buf = d.alloc(65536, 8);
  const start = process.hrtime.bigint();
  for (let got = 0; got < bytes; got += 65536) {
    q.add([{ address: buf, length: 65536, writable: true }]);
    q.kick();
    await q.waitUsed(1);
  }
  return bytes / (1 << 20) / (Number(process.hrtime.bigint() - start) / 1e9);
}

export const group: BenchGroup = {
  title: 'virtio device path (simulated driver; an in-memory disk, or a raw file on tmpfs)',
  run: async (): Promise<BenchRow[]> => [
    { name: 'virtio-blk 4 KiB reads, depth 1', ours: await blkReads(1, 5000), reference: null, unit: 'IOPS', higherIsBetter: true },
    { name: 'virtio-blk 4 KiB reads, depth 32', ours: await blkReads(32, 20000), reference: null, unit: 'IOPS', higherIsBetter: true },
    { name: 'virtio-blk 1 MiB writes of 256 scattered pages, raw on tmpfs: user CPU', ours: await blkScatteredWrites(3000), reference: null, unit: 'us/req', higherIsBetter: false },
    { name: 'virtio-blk 4 KiB reads, depth 2, eventfd doorbells and irqfds, raw on tmpfs: main-thread CPU', ours: await blkEventLoopReads(20000), reference: null, unit: 'us/req', higherIsBetter: false },
    { name: 'virtio-rng 64 KiB buffers', ours: await rngThroughput(32 << 20), reference: null, unit: 'MiB/s', higherIsBetter: true },
  ],
};
