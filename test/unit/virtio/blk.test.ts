// virtio-blk driven by the simulated driver through the virtio-pci transport.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { RawDriver } from '../../../src/block/raw.js';
import { type BlockBackend, VirtioBlk, type VirtioBlkOptions } from '../../../src/virtio/blk.js';
import { F_INDIRECT, F_VERSION_1, makeMachine, plugVirtio, type DriverQueue, type VirtioDriver as Driver, VirtioDriver } from './support/driver.js';
import { MemoryDisk, SpotMemoryDisk } from './support/memory-disk.js';

const MiB = 1 << 20;

async function blkMachine(disk: BlockBackend, options: VirtioBlkOptions = {}, driverOpts = {}) {
  const m = makeMachine();
  const blk = new VirtioBlk(disk, { log: (l) => m.logs.push(l), ...options });
  const { slot, transport } = plugVirtio(m, blk);
  m.bridge.assignBars();
  const d = await VirtioDriver.start(m, slot, driverOpts);
  return { m, blk, d, transport, q: d.queues[0]! };
}

/** Submit one request: header (+ out data) readable, (in data +) status writable. */
function request(d: Driver, q: DriverQueue, type: number, sector: bigint, opts: { out?: Uint8Array; inLen?: number; indirect?: boolean; splitHeader?: boolean } = {}) {
  const hdr = d.alloc(16, 8);
  d.m.memory.writeU32(hdr, type);
  d.m.memory.writeU64(hdr + 8n, sector);
  const bufs = opts.splitHeader
    ? [{ address: hdr, length: 5, writable: false }, { address: hdr + 5n, length: 11, writable: false }]
    : [{ address: hdr, length: 16, writable: false }];
  if (opts.out) {
    const a = d.alloc(opts.out.length, 512);
    d.m.memory.write(a, opts.out);
    bufs.push({ address: a, length: opts.out.length, writable: false });
  }
  let data = 0n;
  if (opts.inLen) {
    data = d.alloc(opts.inLen, 512);
    bufs.push({ address: data, length: opts.inLen, writable: true });
  }
  const status = d.alloc(1, 1);
  d.m.memory.writeU8(status, 0xee);
  bufs.push({ address: status, length: 1, writable: true });
  const head = q.add(bufs, { indirect: opts.indirect ?? false });
  return { head, status, data, statusByte: () => d.m.memory.readU8(status) };
}

const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

test('config space: capacity, seg_max, topology and queue count', async () => {
  const disk = new MemoryDisk(8 * MiB);
  disk.topo = { ...disk.topo, alignmentOffset: 1024, minimumIoSize: 8192, optimalIoSize: 1 << 20 };
  const { d } = await blkMachine(disk, { numQueues: 3, logicalBlockSize: 1024, queueSize: 128 });
  assert.equal(d.cfg(0, 8), BigInt(8 * MiB / 512));
  assert.equal(d.cfg(12, 4), 126n);
  assert.equal(d.cfg(20, 4), 1024n, 'blk_size');
  assert.equal(d.cfg(24, 1), 2n, 'physical_block_exp: 4096 = 1024 << 2');
  assert.equal(d.cfg(25, 1), 1n, 'alignment_offset in logical blocks');
  assert.equal(d.cfg(26, 2), 8n, 'min_io_size in logical blocks');
  assert.equal(d.cfg(28, 4), 1024n, 'opt_io_size in logical blocks');
  assert.equal(d.cfg(34, 2), 3n, 'num_queues');
  assert.equal(d.c16(0x12), 3);
  const f = d.deviceFeatures();
  for (const b of [2n, 6n, 9n, 10n, 12n, 13n, 14n]) assert.equal((f >> b) & 1n, 1n, `feature ${b}`);
  assert.equal((f >> 5n) & 1n, 0n, 'not read-only');
});

test('bad topology and serial options are one-line errors naming the device', () => {
  const disk = new MemoryDisk(MiB);
  assert.throws(() => new VirtioBlk(disk, { name: 'virtio-blk3', logicalBlockSize: 1000 }), /^Error: virtio-blk3: logical_block_size 1000 is not a power of two/);
  assert.throws(() => new VirtioBlk(disk, { physicalBlockSize: 256 }), /physical_block_size 256 is not a power of two >= logical_block_size 512/);
  assert.throws(() => new VirtioBlk(disk, { serial: 'x'.repeat(21) }), /serial 'x{21}' is longer than 20 bytes/);
  assert.throws(() => new VirtioBlk(disk, { numQueues: 0 }), /num_queues 0 is not in 1..64/);
});

test('write then read back, with split headers and indirect chains', async () => {
  const disk = new MemoryDisk(MiB);
  const { d, q } = await blkMachine(disk);
  const data = pattern(4096, 3);
  const w = request(d, q, 1, 8n, { out: data, splitHeader: true });
  q.kick();
  assert.deepEqual(await q.waitUsed(1), [{ id: w.head, len: 1 }]);
  assert.equal(w.statusByte(), 0);
  assert.deepEqual(disk.bytes.subarray(4096, 8192), data);
  const r = request(d, q, 0, 8n, { inLen: 4096, indirect: true });
  q.kick();
  assert.deepEqual(await q.waitUsed(1), [{ id: r.head, len: 4097 }]);
  assert.equal(r.statusByte(), 0);
  assert.deepEqual(d.m.memory.slice(r.data, 4096), data);
});

test('many requests in flight complete out of order, each with its own status', async () => {
  const disk = new MemoryDisk(MiB);
  const { d, q, blk } = await blkMachine(disk);
  disk.hold = true;
  const reqs = [0, 1, 2, 3].map((i) => request(d, q, 1, BigInt(i * 8), { out: pattern(512, i) }));
  q.kick();
  await new Promise((r) => setImmediate(r));
  assert.equal(disk.heldCount, 4);
  assert.equal(blk.inFlight, 4);
  disk.release([2, 0, 3, 1]);
  const used = await q.waitUsed(4);
  assert.deepEqual(used.map((u) => u.id), [reqs[2]!.head, reqs[0]!.head, reqs[3]!.head, reqs[1]!.head]);
  for (const [i, r] of reqs.entries()) {
    assert.equal(r.statusByte(), 0);
    assert.deepEqual(disk.bytes.subarray(i * 4096, i * 4096 + 512), pattern(512, i));
  }
});

test('flush, get-id (serial), discard and write-zeroes', async () => {
  const disk = new MemoryDisk(MiB);
  disk.bytes.fill(0xaa);
  const { d, q } = await blkMachine(disk, { serial: 'disk-serial-1' });
  const f = request(d, q, 4, 0n);
  const id = request(d, q, 8, 0n, { inLen: 20 });
  const seg = (sector: bigint, count: number, flags: number): Uint8Array => {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, sector, true);
    v.setUint32(8, count, true);
    v.setUint32(12, flags, true);
    return b;
  };
  const disc = request(d, q, 11, 0n, { out: seg(0n, 8, 0) });
  const wz = request(d, q, 13, 0n, { out: seg(16n, 8, 1) });
  q.kick();
  const used = await q.waitUsed(4);
  assert.deepEqual(used.find((u) => u.id === id.head), { id: id.head, len: 21 });
  for (const r of [f, id, disc, wz]) assert.equal(r.statusByte(), 0);
  assert.equal(new TextDecoder().decode(d.m.memory.slice(id.data, 13)), 'disk-serial-1');
  assert.equal(d.m.memory.readU8(id.data + 13n), 0);
  assert.ok(disk.calls.includes('flush'));
  assert.ok(disk.calls.includes('discard 0+4096'));
  assert.ok(disk.calls.includes('zeroes 8192+4096 unmap'));
  assert.equal(disk.bytes[8192], 0);
  assert.equal(disk.bytes[4096], 0xaa);
});

test('unknown request types answer UNSUPP', async () => {
  const { d, q } = await blkMachine(new MemoryDisk(MiB));
  const r = request(d, q, 99, 0n);
  q.kick();
  await q.waitUsed(1);
  assert.equal(r.statusByte(), 2);
});

test('read-only disks: VIRTIO_BLK_F_RO offered, writes fail with IOERR and the disk is untouched', async () => {
  const disk = new MemoryDisk(MiB);
  const { d, q, m } = await blkMachine(disk, { readOnly: true });
  assert.equal((d.deviceFeatures() >> 5n) & 1n, 1n);
  const w = request(d, q, 1, 0n, { out: pattern(512, 1) });
  const z = request(d, q, 13, 0n, { out: new Uint8Array(16) });
  const r = request(d, q, 0, 0n, { inLen: 512 });
  q.kick();
  await q.waitUsed(3);
  assert.equal(w.statusByte(), 1);
  assert.equal(z.statusByte(), 1);
  assert.equal(r.statusByte(), 0);
  assert.ok(disk.bytes.every((b) => b === 0));
  assert.ok(m.logs.some((l) => l.includes('virtio-blk0: queue 0: request at guest address') && l.includes('write to a read-only disk')));
});

test('malformed requests fail alone with IOERR and a log line; the device keeps working', async () => {
  const disk = new MemoryDisk(MiB);
  const { d, q, m } = await blkMachine(disk);
  const beyond = request(d, q, 0, BigInt(MiB / 512) - 1n, { inLen: 1024 });
  const odd = request(d, q, 1, 0n, { out: new Uint8Array(100) });
  // Header too short: only 8 readable bytes.
  const shortHdr = d.alloc(8, 8);
  const st = d.alloc(1, 1);
  q.add([{ address: shortHdr, length: 8, writable: false }, { address: st, length: 1, writable: true }]);
  // No status byte at all.
  const noStatus = d.alloc(16, 8);
  const noStatusHead = q.add([{ address: noStatus, length: 16, writable: false }]);
  const good = request(d, q, 0, 0n, { inLen: 512 });
  q.kick();
  const used = await q.waitUsed(5);
  assert.equal(beyond.statusByte(), 1);
  assert.equal(odd.statusByte(), 1);
  assert.equal(d.m.memory.readU8(st), 1);
  assert.equal(good.statusByte(), 0);
  assert.deepEqual(used.find((u) => u.id === noStatusHead), { id: noStatusHead, len: 0 });
  assert.equal(d.status & 0x40, 0, 'no device reset needed');
  for (const text of ['beyond the disk', 'not a multiple of 512', 'header is 8 bytes', 'no writable status byte']) {
    assert.ok(m.logs.some((l) => l.startsWith('virtio-blk0: queue 0: request at guest address 0x') && l.includes(text)), text);
  }
});

test('the header read in place: a sector past 2^32 is taken whole; the status is the last byte, after empty buffers', async () => {
  const disk = new MemoryDisk(MiB);
  const { d, q, m } = await blkMachine(disk);
  const far = request(d, q, 0, 0x1_0000_0005n, { inLen: 512 });
  // A read whose writable buffers end in an empty one: the status goes to the byte before it.
  disk.bytes.set(pattern(512, 3), 512);
  const hdr = d.alloc(16, 8);
  d.m.memory.writeU32(hdr, 0);
  d.m.memory.writeU64(hdr + 8n, 1n);
  const data = d.alloc(513, 512);
  d.m.memory.writeU8(data + 512n, 0xee);
  const empty = d.alloc(8, 8);
  q.add([{ address: hdr, length: 16, writable: false }, { address: data, length: 513, writable: true }, { address: empty, length: 0, writable: true }]);
  q.kick();
  await q.waitUsed(2);
  assert.equal(far.statusByte(), 1);
  assert.ok(m.logs.some((l) => l.includes(`sectors ${0x1_0000_0005}+1 are beyond`)), m.logs.join('\n'));
  assert.deepEqual(d.m.memory.slice(data, 512), pattern(512, 3));
  assert.equal(d.m.memory.readU8(data + 512n), 0, 'status OK in the last byte of the last non-empty buffer');
});

test('host I/O errors: policy report gives IOERR; policy stop pauses and retries on resume', async () => {
  const disk = new MemoryDisk(MiB);
  {
    const { d, q } = await blkMachine(disk);
    disk.failNext = new Error('EIO: input/output error');
    const r = request(d, q, 1, 0n, { out: pattern(512, 9) });
    q.kick();
    await q.waitUsed(1);
    assert.equal(r.statusByte(), 1);
  }
  const paused: string[] = [];
  const { d, q, blk } = await blkMachine(disk, { errorPolicy: 'stop', onIoError: (dev, e) => paused.push(`${dev}: ${e.message}`) });
  disk.failNext = new Error('ENOSPC: no space left on device');
  const r = request(d, q, 1, 0n, { out: pattern(512, 5) });
  q.kick();
  const deadline = Date.now() + 1000;
  while (paused.length === 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 1));
  assert.deepEqual(paused, ['virtio-blk0: ENOSPC: no space left on device']);
  assert.equal(q.takeUsed().length, 0, 'request not completed while paused');
  assert.equal(r.statusByte(), 0xee);
  assert.equal(blk.parkedRequests, 1);
  blk.resume();
  await q.waitUsed(1);
  assert.equal(r.statusByte(), 0);
  assert.deepEqual(disk.bytes.subarray(0, 512), pattern(512, 5));
});

test('multiqueue: every queue serves requests', async () => {
  const disk = new MemoryDisk(MiB);
  const { d } = await blkMachine(disk, { numQueues: 2 }, { msix: true });
  const reqs = d.queues.map((q, i) => request(d, q, 1, BigInt(i * 8), { out: pattern(512, 40 + i) }));
  d.queues.forEach((q) => q.kick());
  for (const q of d.queues) await q.waitUsed(1);
  reqs.forEach((r) => assert.equal(r.statusByte(), 0));
  assert.deepEqual(d.m.sink.msis.map((x) => x.data).sort(), [0x41, 0x42]);
});

test('reset while requests are in flight: late completions never touch the rings', async () => {
  const disk = new MemoryDisk(MiB);
  const { d, q } = await blkMachine(disk);
  disk.hold = true;
  const r = request(d, q, 0, 0n, { inLen: 512 });
  q.kick();
  await new Promise((res) => setImmediate(res));
  d.status = 0;
  disk.release();
  await new Promise((res) => setTimeout(res, 5));
  assert.equal(q.usedIdx, 0);
  assert.equal(r.statusByte(), 0xee);
});

test('save state refuses while requests run; parked requests survive save and load', async () => {
  const disk = new MemoryDisk(MiB);
  const { d, q, blk, transport, m } = await blkMachine(disk, { errorPolicy: 'stop', onIoError: () => {} });
  disk.hold = true;
  request(d, q, 0, 0n, { inLen: 512 });
  q.kick();
  await new Promise((res) => setImmediate(res));
  assert.throws(() => transport.saveState(), /virtio-blk0: 1 requests in flight; drain before saving/);
  disk.hold = false;
  disk.release();
  await q.waitUsed(1);
  disk.failNext = new Error('EIO');
  const r = request(d, q, 1, 8n, { out: pattern(512, 77) });
  q.kick();
  const parkDeadline = Date.now() + 2000;
  while (blk.parkedRequests === 0 && Date.now() < parkDeadline) await new Promise((res) => setTimeout(res, 1));
  assert.equal(blk.parkedRequests, 1);
  const state = JSON.parse(JSON.stringify(transport.saveState()));
  const m2 = makeMachine();
  m2.memory.write(0n, m.memory.slice(0n, Number(m.memory.size)));
  const blk2 = new VirtioBlk(disk);
  const t2 = plugVirtio(m2, blk2, 1);
  m2.bridge.assignBars();
  t2.transport.loadState(state);
  assert.equal(blk2.parkedRequests, 1);
  blk2.resume();
  const deadline = Date.now() + 1000;
  while (m2.memory.readU8(r.status) !== 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 1));
  assert.equal(m2.memory.readU8(r.status), 0);
  assert.deepEqual(disk.bytes.subarray(4096, 4608), pattern(512, 77));
});

test('on a real raw image file through the block layer', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-blk-'));
  try {
    const file = join(dir, 'disk.raw');
    writeFileSync(file, new Uint8Array(MiB));
    const driver = await RawDriver.open(file);
    const { d, q } = await blkMachine(driver);
    const w = request(d, q, 1, 2n, { out: pattern(1024, 11) });
    const f = request(d, q, 4, 0n);
    q.kick();
    await q.waitUsed(2);
    assert.equal(w.statusByte(), 0);
    assert.equal(f.statusByte(), 0);
    await driver.close();
    assert.deepEqual(new Uint8Array(readFileSync(file)).subarray(1024, 2048), pattern(1024, 11));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('on a qcow2 image: many concurrent writes, close, reopen in a second "boot", data reads back', async () => {
  const { createQcow2 } = await import('../../../src/block/qcow2/create.js');
  const { openImage } = await import('../../../src/block/driver.js');
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-blk-'));
  try {
    const file = join(dir, 'disk.qcow2');
    await createQcow2(file, { size: 8n * BigInt(MiB) });
    {
      const image = await openImage(file);
      const { d, q } = await blkMachine(image);
      // 16 writes in flight at scattered offsets, some crossing cluster boundaries.
      const reqs = Array.from({ length: 16 }, (_, i) => request(d, q, 1, BigInt(i * 997 % 16000), { out: pattern(4096, i) }));
      const f = request(d, q, 4, 0n);
      q.kick();
      await q.waitUsed(17, 5000);
      for (const r of [...reqs, f]) assert.equal(r.statusByte(), 0);
      await image.close();
    }
    const image = await openImage(file);
    const { d, q } = await blkMachine(image);
    const reads = Array.from({ length: 16 }, (_, i) => request(d, q, 0, BigInt(i * 997 % 16000), { inLen: 4096 }));
    q.kick();
    await q.waitUsed(16, 5000);
    // The 16 ranges are 997 sectors apart and 8 long: no overlaps, so the order of completion does not matter.
    const model = new Uint8Array(8 * MiB);
    for (let i = 0; i < 16; i++) model.set(pattern(4096, i), (i * 997 % 16000) * 512);
    reads.forEach((r, i) => {
      assert.equal(r.statusByte(), 0);
      const at = (i * 997 % 16000) * 512;
      assert.deepEqual(d.m.memory.slice(r.data, 4096), model.subarray(at, at + 4096), `read ${i}`);
    });
    await image.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** vring_need_event: would a driver that moved avail.idx from `old` to `now` notify? */
const driverWouldKick = (event: number, now: number, old: number): boolean => ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);

test('requests in flight: the driver is asked not to notify; a buffer added meanwhile is still served, notifications come back when idle', async () => {
  const disk = new MemoryDisk(MiB);
  disk.hold = true;
  const { d, q } = await blkMachine(disk, {}, { msix: true });
  const first = request(d, q, 0, 0n, { inLen: 512 });
  q.kick();
  await disk.untilHeld(1);
  assert.equal(disk.heldCount, 1);
  // One request taken and in flight: avail_event sits behind, so adding the second is no kick.
  assert.equal(driverWouldKick(q.availEvent, 2, 1), false, `avail_event ${q.availEvent} still asks for a kick`);
  const second = request(d, q, 0, 8n, { inLen: 512 });
  // No kick: the device finds it on its own (the in-flight poll) while the first is held.
  const deadline = Date.now() + 2000;
  while (disk.heldCount < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
  assert.equal(disk.heldCount, 2, 'the un-notified request was taken');
  const before = d.m.sink.msis.length;
  disk.release();
  await q.waitUsed(2);
  assert.equal(first.statusByte(), 0);
  assert.equal(second.statusByte(), 0);
  assert.equal(d.m.sink.msis.length - before, 1, 'two completions in one turn: one interrupt');
  // Idle again: the next buffer must be notified.
  await new Promise((r) => setImmediate(r));
  assert.equal(driverWouldKick(q.availEvent, 3, 2), true, `avail_event ${q.availEvent} does not ask for a kick when idle`);
});

test('large requests the backend does on the spot complete in the pass that took them; notifications stay off until the end of the turn', async () => {
  const disk = new SpotMemoryDisk(MiB);
  disk.refuse = (offset) => offset >= 512n * 1024n;
  const { d, q, m } = await blkMachine(disk, {}, { msix: true });
  const K64 = 65536;
  const w = request(d, q, 1, 8n, { out: pattern(K64, 4) });
  const r = request(d, q, 0, 8n, { inLen: K64 });
  const before = m.sink.msis.length;
  q.kick(); // the test driver's doorbell reaches the device synchronously
  assert.equal(w.statusByte(), 0, 'the write completed within the doorbell');
  assert.equal(r.statusByte(), 0, 'the read completed within the doorbell');
  assert.deepEqual(d.m.memory.slice(r.data, K64), pattern(K64, 4));
  assert.deepEqual(disk.spotCalls, ['write 4096', 'read 4096']);
  assert.deepEqual(disk.calls, [], 'nothing went through readv/writev');
  // Each 64 KiB run decides its interrupt at once; with EVENT_IDX the driver, not yet past
  // the first, asks for no second.
  assert.equal(m.sink.msis.length - before, 1, 'one interrupt within the doorbell');
  // Still asked not to notify: a request added now is found at the end of the turn.
  assert.equal(driverWouldKick(q.availEvent, 3, 2), false, `avail_event ${q.availEvent} asks for a kick during the turn`);
  const later = request(d, q, 0, 8n, { inLen: K64 });
  // One the backend turns down, and a small one: both take the asynchronous path.
  const refused = request(d, q, 0, 1024n, { inLen: K64 });
  const small = request(d, q, 0, 8n, { inLen: 4096 });
  disk.bytes.set(pattern(K64, 9), 1024 * 512);
  const used = await q.waitUsed(5);
  assert.equal(used.length, 5);
  assert.equal(later.statusByte(), 0);
  assert.deepEqual(d.m.memory.slice(later.data, K64), pattern(K64, 4));
  assert.equal(refused.statusByte(), 0);
  assert.deepEqual(d.m.memory.slice(refused.data, K64), pattern(K64, 9));
  assert.equal(small.statusByte(), 0);
  assert.deepEqual(d.m.memory.slice(small.data, 4096), pattern(K64, 4).subarray(0, 4096));
  assert.deepEqual(disk.calls, ['read 524288', 'read 4096']);
  // Idle again: notifications are back on.
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(driverWouldKick(q.availEvent, 6, 5), true, `avail_event ${q.availEvent} does not ask for a kick when idle`);
});

test('small requests taken in one pass share one interrupt, even where the backend could do them on the spot', async () => {
  const disk = new SpotMemoryDisk(MiB);
  // Without EVENT_IDX, every interrupt decided is sent: the count shows the decisions.
  const { d, q, m } = await blkMachine(disk, {}, { msix: true, features: F_VERSION_1 | F_INDIRECT | 0xffffffn });
  // Four reads of scattered sectors: four runs, none merged.
  const reads = [0n, 16n, 32n, 48n].map((sector) => request(d, q, 0, sector, { inLen: 4096 }));
  const before = m.sink.msis.length;
  q.kick();
  await q.waitUsed(4);
  for (const r of reads) assert.equal(r.statusByte(), 0);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(m.sink.msis.length - before, 1, 'one interrupt for the four');
  assert.deepEqual(disk.spotCalls, [], 'small requests are not done on the spot');
});

test('the fallback poll runs only while requests are in flight: idle again, it no longer wakes the event loop', async (t) => {
  // Timers under the test's control: the poll cannot fire (and disarm itself) meanwhile.
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const disk = new MemoryDisk(MiB);
  disk.hold = true;
  const { blk, d, q } = await blkMachine(disk, {}, { msix: true });
  assert.equal(blk.fallbackPollArmed, false);
  const r = request(d, q, 0, 0n, { inLen: 512 });
  q.kick();
  await disk.untilHeld(1);
  assert.equal(blk.fallbackPollArmed, true, 'armed while the driver is asked not to notify');
  const usedBefore = q.usedIdx;
  disk.release();
  for (let i = 0; i < 100 && q.usedIdx === usedBefore; i++) await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(q.usedIdx, (usedBefore + 1) & 0xffff, 'the request completed');
  assert.equal(r.statusByte(), 0);
  assert.equal(blk.fallbackPollArmed, false, 'still armed with nothing in flight');
});

test('requests completing in one event-loop turn share an interrupt; later ones get their own', async () => {
  const disk = new MemoryDisk(MiB);
  disk.hold = true;
  const { d, q } = await blkMachine(disk, {}, { msix: true });
  const reqs = [0, 1, 2].map((i) => request(d, q, 0, BigInt(i * 8), { inLen: 512 }));
  q.kick();
  await disk.untilHeld(3);
  assert.equal(disk.heldCount, 3);
  const start = d.m.sink.msis.length;
  disk.release();
  await q.waitUsed(3);
  assert.equal(d.m.sink.msis.length - start, 1);
  // The driver consumed them and asks for an interrupt at the next used entry.
  q.setUsedEvent(q.usedIdx);
  reqs.push(request(d, q, 0, 64n, { inLen: 512 }));
  q.kick();
  await disk.untilHeld(1);
  disk.release();
  await q.waitUsed(1);
  assert.equal(d.m.sink.msis.length - start, 2);
  reqs.forEach((r) => assert.equal(r.statusByte(), 0));
});

test('a large request gets its interrupt as it completes, even while others are in flight', async () => {
  const disk = new MemoryDisk(MiB);
  disk.hold = true;
  const { d, q } = await blkMachine(disk, {}, { msix: true });
  const large = request(d, q, 0, 0n, { inLen: 64 * 1024 });
  const small = request(d, q, 0, 1000n, { inLen: 512 });
  q.kick();
  await disk.untilHeld(2);
  assert.deepEqual(disk.calls, ['read 0', `read ${1000 * 512}`]);
  const start = d.m.sink.msis.length;
  const usedBefore = q.usedIdx;
  disk.release([0]);
  // Only promise jobs run here: an interrupt left for the end of the turn cannot have gone out.
  for (let i = 0; i < 200 && q.usedIdx === usedBefore; i++) await Promise.resolve();
  assert.equal(q.usedIdx, (usedBefore + 1) & 0xffff, 'the large read completed within promise jobs');
  assert.equal(disk.heldCount, 1, 'the small read is still in flight');
  assert.equal(d.m.sink.msis.length - start, 1, 'interrupt sent together with the used element');
  q.setUsedEvent(q.usedIdx);
  disk.release();
  await q.waitUsed(1);
  assert.equal(large.statusByte(), 0);
  assert.equal(small.statusByte(), 0);
});

test('reads of consecutive sectors queued together reach the backend as one request; each gets its own data and status', async () => {
  const disk = new MemoryDisk(MiB);
  disk.bytes.set(pattern(4096, 9), 0);
  const { d, q } = await blkMachine(disk);
  const reqs = [0, 1, 2].map((i) => request(d, q, 0, BigInt(i * 2), { inLen: 1024 }));
  const apart = request(d, q, 0, 100n, { inLen: 512 });
  q.kick();
  await q.waitUsed(4);
  assert.deepEqual(disk.calls, ['read 0', `read ${100 * 512}`]);
  reqs.forEach((r, i) => {
    assert.equal(r.statusByte(), 0);
    assert.deepEqual(d.m.memory.slice(r.data, 1024), pattern(4096, 9).subarray(i * 1024, (i + 1) * 1024));
  });
  assert.equal(apart.statusByte(), 0);
});

test('a read or write of no sectors completes alone with OK: it splits a run of mergeable neighbours', async () => {
  const disk = new MemoryDisk(MiB);
  disk.bytes.set(pattern(2048, 4), 0);
  const { d, q } = await blkMachine(disk);
  const before = request(d, q, 0, 0n, { inLen: 1024 });
  const emptyRead = request(d, q, 0, 2n, {});
  const after = request(d, q, 0, 2n, { inLen: 1024 });
  const emptyWrite = request(d, q, 1, 4n, {});
  q.kick();
  const used = await q.waitUsed(4);
  assert.deepEqual(disk.calls, ['read 0', 'read 1024', 'read 1024', 'write 2048']);
  for (const r of [before, emptyRead, after, emptyWrite]) assert.equal(r.statusByte(), 0);
  assert.deepEqual(used.map((u) => [u.id, u.len]).sort((a, b) => a[0]! - b[0]!),
    [[before.head, 1025], [emptyRead.head, 1], [after.head, 1025], [emptyWrite.head, 1]].sort((a, b) => a[0]! - b[0]!));
  assert.deepEqual(d.m.memory.slice(after.data, 1024), pattern(2048, 4).subarray(1024));
  assert.ok(disk.bytes.subarray(2048).every((b) => b === 0), 'the empty write wrote nothing');
});

test('merged writes: an error runs each request again on its own, so each gets its own status', async () => {
  const disk = new MemoryDisk(MiB);
  const { d, q } = await blkMachine(disk);
  const data = [pattern(512, 1), pattern(512, 2)];
  const reqs = data.map((out, i) => request(d, q, 1, BigInt(i), { out }));
  disk.failNext = new Error('EIO: i/o error');
  q.kick();
  await q.waitUsed(2);
  assert.deepEqual(disk.calls, ['write 0', 'write 0', 'write 512']);
  reqs.forEach((r) => assert.equal(r.statusByte(), 0));
  assert.deepEqual(disk.bytes.subarray(0, 1024), Uint8Array.from([...data[0]!, ...data[1]!]));
});

test('the last request in flight gets its interrupt with its used element, not at the end of the turn', async () => {
  const disk = new MemoryDisk(MiB);
  disk.hold = true;
  const { d, q } = await blkMachine(disk, {}, { msix: true });
  const req = request(d, q, 0, 0n, { inLen: 512 });
  q.kick();
  await disk.untilHeld(1);
  assert.equal(disk.heldCount, 1);
  const start = d.m.sink.msis.length;
  const usedBefore = q.usedIdx;
  disk.release();
  // Only promise jobs run here: no setImmediate callback can have fired yet.
  for (let i = 0; i < 200 && q.usedIdx === usedBefore; i++) await Promise.resolve();
  assert.equal(q.usedIdx, (usedBefore + 1) & 0xffff, 'the request completed within promise jobs');
  assert.equal(d.m.sink.msis.length - start, 1, 'interrupt sent together with the used element');
  assert.equal(req.statusByte(), 0);
});
