// The virtio device path without a guest: a driver simulated in TypeScript posts requests
// through the virtio-pci transport and the split ring, so the numbers show the device-side
// cost per request (ring walking, bounds checks, completion and interrupt decision). There
// is no comparable QEMU measurement without a running guest, so the reference is empty.
import type { BenchGroup, BenchRow } from '../main.js';
import { VirtioBlk } from '../../src/virtio/blk.js';
import { VirtioRng } from '../../src/virtio/rng.js';
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
  title: 'virtio device path (simulated driver, in-memory disk)',
  run: async (): Promise<BenchRow[]> => [
    { name: 'virtio-blk 4 KiB reads, depth 1', ours: await blkReads(1, 5000), reference: null, unit: 'IOPS', higherIsBetter: true },
    { name: 'virtio-blk 4 KiB reads, depth 32', ours: await blkReads(32, 20000), reference: null, unit: 'IOPS', higherIsBetter: true },
    { name: 'virtio-rng 64 KiB buffers', ours: await rngThroughput(32 << 20), reference: null, unit: 'MiB/s', higherIsBetter: true },
  ],
};
