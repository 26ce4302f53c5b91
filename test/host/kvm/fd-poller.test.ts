// The fd poller with real eventfds, and with a KVM ioeventfd: a micro-guest's MMIO (or port)
// write to a registered address must not exit to userspace but make the eventfd readable,
// which the poller reports on the main thread.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FdPoller, lastReportAt, stampReports } from '../../../src/kvm/fd-poller.js';
import { close, EFD_NONBLOCK, eventfd } from '../../../src/kvm/libc.js';
import { createMicroVm, GuestCode } from '../../../src/kvm/microguest.js';
import { signal, drain } from '../../support/eventfds.js';
import { waitFor } from '../../support/wait.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

test('eventfd readiness reaches the main thread once per burst; remove() stops it', { timeout: 30_000 }, async () => {
  const poller = new FdPoller();
  const a = eventfd(0, EFD_NONBLOCK);
  const b = eventfd(0, EFD_NONBLOCK);
  try {
    const seen: [number, number][] = [];
    const onReady = (fd: number): void => {
      seen.push([fd, drain(fd)]);
    };
    poller.add(a, onReady);
    poller.add(b, onReady);
    signal(a, 3);
    await waitFor('eventfd a', () => seen.length === 1);
    assert.deepEqual(seen, [[a, 3]]);
    signal(b, 1);
    signal(b, 1);
    await waitFor('eventfd b', () => seen.length === 2);
    assert.deepEqual(seen[1], [b, 2]);
    signal(a, 5); // re-armed after the first report
    await waitFor('eventfd a again', () => seen.length === 3);
    assert.deepEqual(seen[2], [a, 5]);
    poller.remove(a);
    assert.equal(poller.has(a), false);
    signal(a, 1);
    await sleep(200);
    assert.equal(seen.length, 3, 'no report after remove()');
    assert.equal(drain(a), 1, 'the write is still pending in the eventfd');
    assert.throws(() => poller.add(b, onReady), new RegExp(`fd poller: fd ${b} is already watched`));
    assert.throws(() => poller.add(99999, onReady), /fd poller: cannot watch fd 99999: epoll_ctl failed: EBADF/);
  } finally {
    await poller.close();
    close(a);
    close(b);
  }
  assert.throws(() => poller.add(a, () => {}), /fd poller is closed/);
});

test('reports carry the time the thread saw the fd only while stampReports is on', { timeout: 30_000 }, async () => {
  const poller = new FdPoller();
  const fd = eventfd(0, EFD_NONBLOCK);
  const now = (): number => performance.timeOrigin + performance.now();
  try {
    const stamps: Array<number | undefined> = [];
    poller.add(fd, () => {
      drain(fd);
      stamps.push(lastReportAt());
    });
    signal(fd, 1);
    await waitFor('an unstamped report', () => stamps.length === 1);
    assert.equal(stamps[0], undefined, 'no time stamp by default');
    // Switched on after the poller started: its thread follows.
    stampReports(true);
    const before = now();
    signal(fd, 1);
    await waitFor('a stamped report', () => stamps.length === 2);
    const after = now();
    const at = stamps[1];
    assert.ok(typeof at === 'number' && at >= before && at <= after, `report time ${at} within [${before}, ${after}]`);
    assert.equal(lastReportAt(), undefined, 'only while a callback runs');
    stampReports(false);
    signal(fd, 1);
    await waitFor('an unstamped report again', () => stamps.length === 3);
    assert.equal(stamps[2], undefined);
  } finally {
    stampReports(false);
    await poller.close();
    close(fd);
  }
});

test('a KVM ioeventfd write by a micro-guest signals the eventfd instead of exiting', { timeout: 30_000 }, async () => {
  const poller = new FdPoller();
  const mmioFd = eventfd(0, EFD_NONBLOCK);
  const matchFd = eventfd(0, EFD_NONBLOCK);
  const pioFd = eventfd(0, EFD_NONBLOCK);
  const mmio = 0x10000000;
  const code = new GuestCode('long')
    .movEaxImm32(1).storeEax(mmio) // ioeventfd: no exit
    .movEaxImm32(7).storeEax(mmio + 0x100) // datamatch 7: no exit
    .movEaxImm32(8).storeEax(mmio + 0x100) // no match: MMIO exit
    .movDxImm16(0x510).movEaxImm32(0x1234).outDxAx() // PIO ioeventfd: no exit
    .movDxImm16(0x3f8).movAlImm8(0x55).outDxAl()
    .hlt();
  const micro = createMicroVm({ mode: 'long', code: code.bytes() });
  try {
    const counts = new Map<number, number>();
    const onReady = (fd: number): void => {
      counts.set(fd, (counts.get(fd) ?? 0) + drain(fd));
    };
    for (const fd of [mmioFd, matchFd, pioFd]) poller.add(fd, onReady);
    micro.vm.registerIoeventfd({ fd: mmioFd, address: BigInt(mmio), length: 4 });
    micro.vm.registerIoeventfd({ fd: matchFd, address: BigInt(mmio + 0x100), length: 4, datamatch: 7n });
    micro.vm.registerIoeventfd({ fd: pioFd, address: 0x510n, length: 2, pio: true });

    const first = micro.vcpu.runOnce();
    assert.equal(first.reason, 'mmio', 'the first exit is the non-matching write');
    assert.ok(first.reason === 'mmio');
    assert.equal(first.address, BigInt(mmio + 0x100));
    assert.equal(first.isWrite, true);
    assert.deepEqual([...first.data], [8, 0, 0, 0]);

    const second = micro.vcpu.runOnce();
    assert.ok(second.reason === 'io', `expected the port 0x3f8 write, got ${second.reason}`);
    assert.equal(second.port, 0x3f8);
    assert.deepEqual([...second.data], [0x55]);
    assert.equal(micro.vcpu.runOnce().reason, 'hlt');

    await waitFor('all three eventfds', () => counts.size === 3);
    assert.equal(counts.get(mmioFd), 1);
    assert.equal(counts.get(matchFd), 1);
    assert.equal(counts.get(pioFd), 1);

    micro.vm.unregisterIoeventfd({ fd: mmioFd, address: BigInt(mmio), length: 4 });
    assert.throws(
      () => micro.vm.unregisterIoeventfd({ fd: mmioFd, address: BigInt(mmio), length: 4 }),
      /KVM_IOEVENTFD failed: ENOENT/,
    );
  } finally {
    await poller.close();
    micro.close();
    for (const fd of [mmioFd, matchFd, pioFd]) close(fd);
  }
});
