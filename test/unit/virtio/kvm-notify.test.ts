// ioeventfd doorbells: real eventfds and the real fd poller; only the KVM ioctl is replaced
// by a recorder, since unit tests run without /dev/kvm. Writing the eventfd stands in for
// KVM signalling it when the guest writes the doorbell.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readNonBlocking, write } from '../../../src/kvm/libc.js';
import { createEventfdWatcher } from '../../../src/kvm/eventfd-watcher.js';
import type { GsiRoute, IoEventFd, MsiMessage } from '../../../src/kvm/types.js';
import { irqchipRoutes, KvmInterruptSink, MAX_MSI_ROUTES } from '../../../src/pci/kvm-interrupts.js';
import { KvmNotifyRegistrar } from '../../../src/virtio/kvm-notify.js';
import { VirtioRng } from '../../../src/virtio/rng.js';
import { makeMachine, plugVirtio, VirtioDriver } from './support/driver.js';

for (const thread of [false, true]) test(`doorbells become ioeventfds with datamatch; a signalled eventfd runs the queue (${thread ? 'poller thread' : 'event loop'})`, async (t) => {
  const registered: IoEventFd[] = [];
  const vm = {
    registerIoeventfd: (io: IoEventFd) => { registered.push(io); },
    unregisterIoeventfd: (io: IoEventFd) => { registered.splice(registered.findIndex((r) => r.fd === io.fd), 1); },
  };
  const watcher = createEventfdWatcher({ thread });
  assert.equal(watcher.kind, thread ? 'thread' : 'loop');
  t.after(() => watcher.close());
  const registrar = new KvmNotifyRegistrar(() => vm, watcher);
  const m = makeMachine();
  const { slot } = plugVirtio(m, new VirtioRng(), undefined, registrar);
  m.bridge.assignBars();
  const d = await VirtioDriver.start(m, slot);
  assert.equal(registered.length, 1);
  assert.equal(registered[0]!.address, d.bar4 + 0x3000n);
  assert.equal(registered[0]!.length, 2);
  assert.equal(registered[0]!.datamatch, 0n);
  const q = d.queues[0]!;
  q.add([{ address: d.alloc(32, 8), length: 32, writable: true }]);
  const one = new Uint8Array(8);
  one[0] = 1;
  write(registered[0]!.fd, one);
  assert.deepEqual(await q.waitUsed(1, 3000), [{ id: 0, len: 32 }]);
  // Disabling memory decoding drops the ioeventfd.
  const { cfgWrite } = await import('./support/driver.js');
  cfgWrite(m, slot, 0x04, 2, 0);
  assert.equal(registered.length, 0);
  assert.equal(registrar.registeredCount, 0);
});

/**
 * A VM that keeps what the sink asks of KVM: the routing table, the irqfds bound to GSIs, and
 * the MSIs and line changes sent directly. `refuse` makes it turn down routing tables.
 */
class RecordingVm {
  table: readonly GsiRoute[] = [];
  readonly irqfds = new Map<number, number>();
  readonly direct: string[] = [];
  readonly unbound: number[] = [];
  refuse = false;
  signalMsi(msi: MsiMessage): number { this.direct.push(`msi ${msi.addressHi.toString(16)}:${msi.addressLo.toString(16)} ${msi.data}`); return 1; }
  irqLine(irq: number, level: boolean): void { this.direct.push(`irq ${irq} ${level}`); }
  setGsiRouting(routes: readonly GsiRoute[]): void {
    if (this.refuse) throw new Error('KVM_SET_GSI_ROUTING failed: EINVAL (Invalid argument)');
    this.table = routes;
  }
  registerIrqfd(fd: number, gsi: number): void { this.irqfds.set(fd, gsi); }
  unregisterIrqfd(fd: number, gsi: number): void {
    assert.equal(this.irqfds.get(fd), gsi);
    this.irqfds.delete(fd);
    this.unbound.push(fd);
  }
  /** The MSI route KVM would follow for a write to `fd`, and how many writes it holds. */
  fired(fd: number): { route: GsiRoute | undefined; count: number } {
    const gsi = this.irqfds.get(fd);
    const counter = new Uint8Array(8);
    const n = readNonBlocking(fd, counter);
    return { route: this.table.find((r) => r.gsi === gsi && r.type === 'msi'), count: n < 0 ? 0 : Number(new DataView(counter.buffer).getBigUint64(0, true)) };
  }
}

test('MSIs go through irqfds: each message gets a GSI route and an eventfd, written for every interrupt', (t) => {
  let vm = new RecordingVm();
  const sink = new KvmInterruptSink(() => vm);
  t.after(() => sink.release());
  sink.signalMsi(0x1_fee0_1000n, 0x4041);
  sink.signalMsi(0x1_fee0_1000n, 0x4041);
  sink.signalMsi(0xfee0_0000n, 0x31);
  assert.equal(sink.routedCount, 2);
  assert.deepEqual(vm.direct, [], 'no KVM_SIGNAL_MSI while irqfds work');
  // The table keeps KVM's own irqchip routes, so IOAPIC and PIC lines work as before.
  assert.deepEqual(vm.table.slice(0, irqchipRoutes().length), irqchipRoutes());
  assert.equal(irqchipRoutes().length, 40);
  assert.deepEqual(irqchipRoutes().filter((r) => r.gsi === 9), [
    { gsi: 9, type: 'irqchip', irqchip: 2, pin: 9 }, { gsi: 9, type: 'irqchip', irqchip: 1, pin: 1 }]);
  const [first, second] = [...vm.irqfds.keys()];
  assert.deepEqual(vm.fired(first!), { route: { gsi: 24, type: 'msi', addressLo: 0xfee01000, addressHi: 1, data: 0x4041 }, count: 2 });
  assert.deepEqual(vm.fired(second!), { route: { gsi: 25, type: 'msi', addressLo: 0xfee00000, addressHi: 0, data: 0x31 }, count: 1 });

  sink.setIntx(17, true);
  assert.deepEqual(vm.direct, ['irq 17 true']);

  // The machine builds a new VM on reset: the old one's irqfds are unbound and closed, and
  // the new VM gets its routes when its first MSI comes.
  sink.release();
  assert.deepEqual(vm.unbound.sort(), [first, second].sort());
  assert.equal(vm.irqfds.size, 0);
  vm = new RecordingVm();
  sink.signalMsi(0xfee0_0000n, 0x31);
  const [again] = [...vm.irqfds.keys()];
  assert.deepEqual(vm.fired(again!), { route: { gsi: 24, type: 'msi', addressLo: 0xfee00000, addressHi: 0, data: 0x31 }, count: 1 });
  // A VM swapped without release() is noticed too.
  const old = vm;
  vm = new RecordingVm();
  sink.signalMsi(0xfee0_0000n, 0x32);
  assert.deepEqual(old.unbound, [again]);
  assert.equal(vm.irqfds.size, 1);
});

test('each MSI reaches the irqfd of its own message: alternating messages, and one data value at two addresses', (t) => {
  const vm = new RecordingVm();
  const sink = new KvmInterruptSink(vm);
  t.after(() => sink.release());
  const sends: Array<[bigint, number]> = [[0xfee0_0000n, 0x41], [0xfee0_1000n, 0x41], [0xfee0_0000n, 0x41], [0xfee0_0000n, 0x42], [0xfee0_1000n, 0x41], [0xfee0_0000n, 0x41]];
  for (const [address, data] of sends) sink.signalMsi(address, data);
  const fired = [...vm.irqfds.keys()].map((fd) => vm.fired(fd));
  assert.deepEqual(fired.map((f) => [f.route?.type === 'msi' ? f.route.addressLo : -1, f.route?.type === 'msi' ? f.route.data : -1, f.count]), [[0xfee00000, 0x41, 3], [0xfee01000, 0x41, 2], [0xfee00000, 0x42, 1]]);
});

test('a guest that keeps reprogramming its vectors reuses the oldest routes instead of growing the table', (t) => {
  const vm = new RecordingVm();
  const sink = new KvmInterruptSink(vm);
  t.after(() => sink.release());
  for (let i = 0; i < MAX_MSI_ROUTES; i++) sink.signalMsi(0xfee0_0000n, 0x100 + i);
  const oldest = [...vm.irqfds.keys()][0]!;
  sink.signalMsi(0xfee0_0000n, 0x5000);
  assert.equal(sink.routedCount, MAX_MSI_ROUTES);
  assert.equal(vm.irqfds.size, MAX_MSI_ROUTES);
  assert.deepEqual(vm.unbound, [oldest]);
  assert.equal(vm.table.length, irqchipRoutes().length + MAX_MSI_ROUTES);
  const newest = [...vm.irqfds.keys()].pop()!;
  assert.deepEqual(vm.fired(newest), { route: { gsi: 24, type: 'msi', addressLo: 0xfee00000, addressHi: 0, data: 0x5000 }, count: 1 });
});

test('a KVM that refuses MSI routing gets every MSI through KVM_SIGNAL_MSI, and says so once', () => {
  const vm = new RecordingVm();
  vm.refuse = true;
  const lines: string[] = [];
  const sink = new KvmInterruptSink(vm, (line) => lines.push(line));
  sink.signalMsi(0x1_fee0_1000n, 0x4041);
  sink.signalMsi(0xfee0_0000n, 0x31);
  assert.deepEqual(vm.direct, ['msi 1:fee01000 16449', 'msi 0:fee00000 49']);
  assert.equal(sink.routedCount, 0);
  assert.equal(vm.irqfds.size, 0);
  assert.deepEqual(lines, ['MSI through irqfd unavailable, using KVM_SIGNAL_MSI: KVM_SET_GSI_ROUTING failed: EINVAL (Invalid argument)']);
});
