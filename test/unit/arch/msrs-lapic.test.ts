import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bootMsrs, MSR_IA32_MISC_ENABLE, MSR_MTRR_DEF_TYPE, MSR_LSTAR, MSR_IA32_TSC } from '../../../src/arch/x86/msrs.js';
import { APIC_LVT_LINT0, APIC_LVT_LINT1, configureLapicLints, withDeliveryMode } from '../../../src/arch/x86/lapic.js';

test('boot MSRs enable fast strings and write-back MTRR default, zero the syscall MSRs', () => {
  const msrs = new Map(bootMsrs().map((m) => [m.index, m.data]));
  assert.equal(msrs.size, bootMsrs().length, 'no MSR listed twice');
  assert.equal(msrs.get(MSR_IA32_MISC_ENABLE)! & 1n, 1n);
  const def = msrs.get(MSR_MTRR_DEF_TYPE)!;
  assert.equal(def & 0xffn, 6n);
  assert.equal((def >> 11n) & 1n, 1n);
  assert.equal(msrs.get(MSR_LSTAR), 0n);
  assert.equal(msrs.get(MSR_IA32_TSC), 0n);
  for (const index of [0x174, 0x175, 0x176, 0xc0000081, 0xc0000083, 0xc0000084, 0xc0000102]) assert.ok(msrs.has(index));
});

test('LINT0 becomes ExtINT and LINT1 NMI, keeping the other LVT bits', () => {
  const regs = new Uint8Array(1024);
  const dv = new DataView(regs.buffer);
  dv.setUint32(APIC_LVT_LINT0, 0x00010000, true); // masked, fixed delivery
  dv.setUint32(APIC_LVT_LINT1, 0x00010000, true);
  dv.setUint32(0x20, 0xabcdef01, true); // an unrelated register
  configureLapicLints(regs);
  assert.equal(dv.getUint32(APIC_LVT_LINT0, true), 0x00010700);
  assert.equal(dv.getUint32(APIC_LVT_LINT1, true), 0x00010400);
  assert.equal(dv.getUint32(0x20, true), 0xabcdef01);
  assert.equal(withDeliveryMode(0x7ff, 0b100), 0x4ff);
  assert.throws(() => configureLapicLints(new Uint8Array(16)), /local APIC state is 16 bytes, expected 1024/);
});
