// Micro-guest instruction encodings, byte for byte (checked against the Intel SDM forms
// quoted in src/kvm/microguest.ts), in both CPU modes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GuestCode } from '../../../src/kvm/microguest.js';

const hex = (code: GuestCode): string => Buffer.from(code.bytes()).toString('hex');

test('real mode uses 16-bit defaults and prefixes 32-bit operands', () => {
  assert.equal(hex(new GuestCode('real').movDxImm16(0x3f8)), 'baf803');
  assert.equal(hex(new GuestCode('real').movEaxImm32(0x12345678)), '66b878563412');
  assert.equal(hex(new GuestCode('real').outDxAx()), 'ef');
  assert.equal(hex(new GuestCode('real').outDxEax()), '66ef');
  assert.equal(hex(new GuestCode('real').inEaxDx()), '66ed');
  assert.equal(hex(new GuestCode('real').decCounter()), '6649');
});

test('long mode uses 32-bit defaults and prefixes 16-bit operands', () => {
  assert.equal(hex(new GuestCode('long').movDxImm16(0x3f8)), '66baf803');
  assert.equal(hex(new GuestCode('long').movEaxImm32(1)), 'b801000000');
  assert.equal(hex(new GuestCode('long').outDxAx()), '66ef');
  assert.equal(hex(new GuestCode('long').outDxEax()), 'ef');
  assert.equal(hex(new GuestCode('long').storeEax(0x10000000)), '890425' + '00000010');
  assert.equal(hex(new GuestCode('long').storeRax(0x1000)), '48890425' + '00100000');
  assert.equal(hex(new GuestCode('long').loadAl(0x20)), '8a0425' + '20000000');
  assert.equal(hex(new GuestCode('long').movRaxImm64(0x0102030405060708n)), '48b80807060504030201');
  assert.equal(hex(new GuestCode('long').decCounter()), '48ffc9');
});

test('short instructions are the same in both modes', () => {
  for (const mode of ['real', 'long'] as const) {
    assert.equal(hex(new GuestCode(mode).movAlImm8(0x41).outDxAl().inAlDx().addAlImm8(1).outImm8Al(0x80).hlt()), 'b041eeec0401e680f4');
  }
});

test('jnzBack encodes a backward rel8 and rejects targets out of range', () => {
  const code = new GuestCode('long');
  const top = code.offset;
  code.decCounter().jnzBack(top);
  assert.equal(hex(code), '48ffc975fb');
  const far = new GuestCode('long');
  for (let i = 0; i < 130; i++) far.hlt();
  assert.throws(() => far.jnzBack(0), /jnz target 0 is out of rel8 range/);
  assert.throws(() => new GuestCode('real').movRcxImm64(1n), /mov rcx, imm64 is only encoded for long mode/);
});
