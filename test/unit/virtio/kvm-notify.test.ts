// ioeventfd doorbells: real eventfds and the real fd poller; only the KVM ioctl is replaced
// by a recorder, since unit tests run without /dev/kvm. Writing the eventfd stands in for
// KVM signalling it when the guest writes the doorbell.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { write } from '../../../src/kvm/libc.js';
import { createEventfdWatcher } from '../../../src/kvm/eventfd-watcher.js';
import type { IoEventFd } from '../../../src/kvm/types.js';
import { kvmInterruptSink } from '../../../src/pci/kvm-interrupts.js';
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

test('the KVM interrupt sink splits MSI addresses and drives IRQ lines', () => {
  const calls: string[] = [];
  const sink = kvmInterruptSink({
    signalMsi: (msi) => { calls.push(`msi ${msi.addressHi.toString(16)}:${msi.addressLo.toString(16)} ${msi.data}`); return 1; },
    irqLine: (irq, level) => { calls.push(`irq ${irq} ${level}`); },
  });
  sink.signalMsi(0x1_fee0_1000n, 0x4041);
  sink.setIntx(17, true);
  assert.deepEqual(calls, ['msi 1:fee01000 16449', 'irq 17 true']);
});
