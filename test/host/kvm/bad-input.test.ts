// Bad arguments to the vCPU wrappers and micro-guest helpers fail with one clear line each,
// before anything reaches the kernel.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createMicroVm, GuestCode, setupLongMode, setupRealMode } from '../../../src/kvm/microguest.js';

test('wrong-sized state buffers and lists are refused with their expected size', () => {
  const micro = createMicroVm({ mode: 'long', code: new GuestCode('long').hlt().bytes() });
  try {
    const { vcpu } = micro;
    assert.throws(() => vcpu.setXsave(new Uint8Array(100)), /^Error: XSAVE area must be 4096 bytes, got 100$/);
    assert.throws(() => vcpu.setLapic(new Uint8Array(1)), /^Error: LAPIC state must be 1024 bytes, got 1$/);
    const xcrs = Array.from({ length: 17 }, (_, i) => ({ xcr: i, value: 0n }));
    assert.throws(() => vcpu.setXcrs(xcrs), /^Error: at most 16 XCRs, got 17$/);
    assert.throws(() => setupLongMode(vcpu, new Uint8Array(4096), 0x8000n), /micro-guest RAM of 4096 bytes is below the 32 KiB layout/);
    assert.throws(() => setupRealMode(vcpu, 0x12345), /real-mode entry 0x12345 must be below 64 KiB with CS base 0/);
  } finally {
    micro.close();
  }
  assert.throws(
    () => createMicroVm({ mode: 'real', code: new Uint8Array(0x10000), memorySize: 0x10000 }),
    /micro-guest code does not fit in its RAM/,
  );
});
