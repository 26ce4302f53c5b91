// KVM_CREATE_VM issued ahead on the thread pool (src/vmm/vm-preload.ts): the VM it makes is a
// real KVM VM, the machine adopts it and boots, a VM nobody takes is closed, and a KVM device
// that cannot be opened leaves the machine to create (and report) on its own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, readdirSync, readlinkSync } from 'node:fs';
import { Machine } from '../../../src/vmm/machine.js';
import { discardPreloadedVm, KVM_CREATE_VM_REQUEST, preloadVm, takePreloadedVm } from '../../../src/vmm/vm-preload.js';
import { IOCTLS } from '../../../src/kvm/abi.js';
import { GUEST_ADDRESS, powerOffGuest } from './micro-guests.js';

const fdTarget = (fd: number): string | undefined => {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return undefined;
  }
};

test('the request number is the ABI table\'s KVM_CREATE_VM', () => {
  assert.equal(KVM_CREATE_VM_REQUEST, IOCTLS.KVM_CREATE_VM);
});

/** Descriptors of this process that are KVM VMs. */
const vmFds = (): number => readdirSync('/proc/self/fd').filter((fd) => fdTarget(Number(fd)) === 'anon_inode:kvm-vm').length;

test('a preloaded VM is a KVM VM descriptor, handed out once; discarding one closes it', async () => {
  preloadVm();
  const fd = await takePreloadedVm();
  assert.ok(fd !== undefined && fd >= 0);
  assert.equal(fdTarget(fd), 'anon_inode:kvm-vm');
  assert.equal(takePreloadedVm(), undefined, 'handed out once');
  closeSync(fd);
  const before = vmFds();
  preloadVm();
  await discardPreloadedVm();
  assert.equal(vmFds(), before, 'the discarded VM is closed');
  assert.equal(takePreloadedVm(), undefined);
});

test('the machine adopts a preloaded VM and its guest runs', { timeout: 60_000 }, async () => {
  preloadVm();
  const m = await Machine.create({ memory: '32M' }, { rawBoot: { code: powerOffGuest('V'), address: GUEST_ADDRESS } });
  assert.equal(takePreloadedVm(), undefined, 'the machine took it');
  let out = '';
  m.console.on('data', (d: Buffer) => { out += d.toString('latin1'); });
  await m.start();
  assert.equal((await m.waitForExit()).reason, 'guest-shutdown');
  assert.equal(out, 'V');
});

test('a KVM device that cannot be opened gives no VM, and nothing is left behind', async () => {
  preloadVm('/nonexistent/kvm');
  assert.equal(await takePreloadedVm(), undefined);
});

test('a machine that fails to start closes the VM created ahead for it', { timeout: 60_000 }, async () => {
  const before = vmFds();
  preloadVm();
  await assert.rejects(Machine.create({ memory: '32M', kernel: '/nonexistent/bzImage' }), /nonexistent/);
  assert.equal(takePreloadedVm(), undefined, 'the machine took it');
  assert.equal(vmFds(), before);
});
