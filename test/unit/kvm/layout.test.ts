// The struct layout engine: C alignment rules, anonymous members, and encode/decode.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  allFields, array, decodeBytes, encodeToBytes, offsetOf, resolve, struct, u16, u32, u64, u8, union,
} from '../../../src/kvm/layout.js';
import { IOCTLS, kvm_regs, kvm_run, kvm_segment } from '../../../src/kvm/abi.js';

test('fields are aligned to their size and the struct is padded to its largest alignment', () => {
  const s = struct('struct t', [['a', u8], ['b', u32], ['c', u16], ['d', u64], ['e', u8]]);
  assert.deepEqual(s.fields.map((f) => f.offset), [0, 4, 8, 16, 24]);
  assert.equal(s.size, 32);
  assert.equal(s.align, 8);
  const bytesOnly = struct('struct b', [['x', u8], ['y', array(u8, 3)]]);
  assert.equal(bytesOnly.size, 4);
  assert.equal(bytesOnly.align, 1);
});

test('unions overlay their members; anonymous members vanish from C paths', () => {
  const u = union(undefined, [['small', u16], ['big', array(u32, 3)]]);
  assert.equal(u.size, 12);
  const s = struct('struct t', [['tag', u32], ['body', union(undefined, [['x', u64], ['y', u8]]), '']]);
  assert.equal(s.size, 16);
  assert.equal(offsetOf(s, 'body.x'), 8);
  assert.equal(resolve(s, 'body.y').cPath, 'y');
  assert.deepEqual([...allFields(s)].map((f) => f.cPath), ['tag', 'x', 'y']);
  assert.throws(() => offsetOf(s, 'body.z'), /struct t has no field 'body.z'/);
  assert.throws(() => offsetOf(s, 'tag.x'), /struct t: 'tag.x' descends into a non-struct member/);
});

test('encode and decode round-trip, leaving absent fields zero', () => {
  const bytes = encodeToBytes(kvm_segment, { base: 0x1000n, limit: 0xffff, selector: 8, type: 11, present: 1, l: 1 });
  assert.equal(bytes.length, 24);
  const seg = decodeBytes(kvm_segment, bytes) as Record<string, unknown>;
  assert.equal(seg.base, 0x1000n);
  assert.equal(seg.selector, 8);
  assert.equal(seg.l, 1);
  assert.equal(seg.g, 0);
  const regs = encodeToBytes(kvm_regs, { rip: -1n, rax: 5 });
  const view = new DataView(regs.buffer);
  assert.equal(view.getBigUint64(offsetOf(kvm_regs, 'rip'), true), 0xffffffffffffffffn, 'negative wraps to u64');
  assert.equal(view.getBigUint64(0, true), 5n, 'numbers are accepted for u64 fields');
  assert.throws(() => encodeToBytes(kvm_regs, { rbx: 'x' }), /field 'rbx' needs a bigint, got string/);
});

test('kvm_run exit union sits at offset 32 and spans 256 bytes', () => {
  assert.equal(offsetOf(kvm_run, 'exit.io.port'), 34);
  assert.equal(offsetOf(kvm_run, 'exit.mmio.data'), 40);
  assert.equal(offsetOf(kvm_run, 'kvm_valid_regs'), 32 + 256);
});

test('ioctl numbers follow the _IOC encoding', () => {
  assert.equal(IOCTLS.KVM_RUN, 0xae80);
  assert.equal(IOCTLS.KVM_GET_REGS, 0x8090ae81); // _IOR, 144-byte struct kvm_regs
  assert.equal(IOCTLS.KVM_SET_USER_MEMORY_REGION, 0x4020ae46);
  assert.equal(IOCTLS.KVM_GET_SUPPORTED_CPUID, 0xc008ae05);
});
