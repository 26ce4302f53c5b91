import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  add, and, arg, call, createDWordField, field, ifElse, lEqual, lNotEqual, local, notify, operationRegion, or, ref, store, uuid,
  buffer, device, eisaId, integer, io, irqNoFlags, memory32Fixed, method, name, nameString, pkg, pkgLength,
  qwordMemory, resourceTemplate, returnValue, string, wordBusNumber,
} from '../../../src/arch/x86/acpi/aml.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

test('PkgLength switches encodings exactly at the spec boundaries', () => {
  assert.equal(hex(pkgLength(0)), '01');
  assert.equal(hex(pkgLength(62)), '3f'); // 62 + 1 = 63 fits in 6 bits
  // 63 + 2 = 65 = 0x41: lead byte 0x40 | low nibble 1, then 0x41 >> 4.
  assert.equal(hex(pkgLength(63)), '4104');
  assert.equal(hex(pkgLength(0xffd)), '4fff'); // 0xffd + 2 = 0xfff, the last 2-byte value
  assert.equal(hex(pkgLength(0xffe)), '810001'); // 0xffe + 3 = 0x1001: lead 0x80 | 1, then 0x00, 0x01
  assert.throws(() => pkgLength(1 << 28), /exceeds the 256 MiB PkgLength limit/);
});

test('integers use the shortest encoding', () => {
  assert.equal(hex(integer(0)), '00');
  assert.equal(hex(integer(1)), '01');
  assert.equal(hex(integer(0x12)), '0a12');
  assert.equal(hex(integer(0x1234)), '0b3412');
  assert.equal(hex(integer(0x12345678)), '0c78563412');
  assert.equal(hex(integer(0x1_0000_0000n)), '0e0000000001000000');
  assert.equal(hex(integer(0xffff_ffff_ffff_ffffn)), 'ff');
  assert.throws(() => integer(-1), /out of the 64-bit unsigned range/);
});

test('name strings handle root, parent, dual and multi segment paths', () => {
  assert.equal(hex(nameString('_HID')), Buffer.from('_HID').toString('hex'));
  assert.equal(hex(nameString('RTC')), Buffer.from('RTC_').toString('hex'));
  assert.equal(hex(nameString('\\_SB')), '5c' + Buffer.from('_SB_').toString('hex'));
  assert.equal(hex(nameString('\\_SB.PCI0')), '5c2e' + Buffer.from('_SB_PCI0').toString('hex'));
  assert.equal(hex(nameString('^^FOO')), '5e5e' + Buffer.from('FOO_').toString('hex'));
  assert.equal(hex(nameString('\\_SB.PCI0.S08')), '5c2f03' + Buffer.from('_SB_PCI0S08_').toString('hex'));
  assert.equal(hex(nameString('\\')), '5c00');
  assert.throws(() => nameString('toolong'), /invalid AML name segment "toolong"/);
});

test('EISA IDs compress like ASL EISAID()', () => {
  // ASL compilers encode EISAID("PNP0A03") as 0x030AD041 and EISAID("PNP0501") as 0x0105D041.
  assert.equal(hex(eisaId('PNP0A03')), '0c' + '41d00a03');
  assert.equal(hex(eisaId('PNP0501')), '0c' + '41d00501');
  assert.throws(() => eisaId('pnp0501'), /invalid EISA ID/);
});

test('strings, packages, buffers, methods and devices wrap their contents with lengths', () => {
  assert.equal(hex(string('AB')), '0d414200');
  assert.throws(() => string('é'), /7-bit ASCII/);
  assert.equal(hex(pkg([integer(5), integer(0)])), '1205020a0500');
  assert.equal(hex(buffer(Uint8Array.from([1, 2, 3]))), '11060a03010203');
  assert.equal(hex(name('_S5', pkg([]))), '08' + Buffer.from('_S5_').toString('hex') + '120200');
  // Method(_STA, 0, NotSerialized) { Return (0x0F) }
  assert.equal(hex(method('_STA', 0, false, [returnValue(integer(0xf))])),
    '14' + '09' + Buffer.from('_STA').toString('hex') + '00' + 'a40a0f');
  assert.equal(hex(device('DEV0', [])), '5b8205' + Buffer.from('DEV0').toString('hex'));
  const big = device('BIG0', [buffer(new Uint8Array(100))]);
  assert.equal(big[2]! >> 6, 1, 'two-byte PkgLength for a long device body');
  assert.throws(() => method('_X', 8, false, []), /argument count 8/);
});

test('resource descriptors have the spec layouts', () => {
  assert.equal(hex(io(0x3f8, 0x3f8, 8, 8)), '4701f803f8030808');
  assert.equal(hex(irqNoFlags([4])), '221000');
  assert.equal(hex(irqNoFlags([1, 12])), '220210');
  assert.throws(() => irqNoFlags([16]), /ISA IRQ 16/);
  assert.equal(hex(memory32Fixed(0xe0000000n, 0x10000000n)), '86090001' + '000000e0' + '00000010');
  const bus = wordBusNumber(0, 255);
  assert.equal(bus.length, 16);
  assert.equal(hex(bus.subarray(0, 6)), '880d00020c00');
  const q = qwordMemory(0x1_0000_0000n, 0x10_ffff_ffffn);
  assert.equal(q.length, 46);
  assert.equal(q[1], 43);
  assert.equal(new DataView(q.buffer).getBigUint64(3 + 3 + 8 + 8 + 8 + 8, true), 0x10_0000_0000n, 'length field');
  assert.throws(() => wordBusNumber(5, 4), /inverted/);
  const tmpl = resourceTemplate([io(0x70, 0x70, 1, 2)]);
  assert.equal(hex(tmpl.subarray(tmpl.length - 2)), '7900', 'end tag');
});

test('expressions and control flow encode operands in order', () => {
  const seg = (t: string) => Buffer.from(t).toString('hex');
  assert.equal(hex(store(integer(5), local(0))), '700a0560');
  assert.equal(hex(add(local(0), integer(1))), '72600100', 'null target when none is given');
  assert.equal(hex(and(arg(0), integer(0x1f), local(2))), '7b680a1f62');
  assert.equal(hex(or(ref('CDW1'), integer(4), ref('CDW1'))), '7d' + seg('CDW1') + '0a04' + seg('CDW1'));
  assert.equal(hex(lEqual(arg(1), integer(1))), '936901');
  assert.equal(hex(lNotEqual(arg(1), integer(1))), '92936901');
  // If (Arg0) { Return (One) } Else { Return (Zero) }
  assert.equal(hex(ifElse(arg(0), [returnValue(integer(1))], [returnValue(integer(0))])), 'a00468a401' + 'a103a400');
  assert.equal(hex(notify(ref('DEV0'), integer(3))), '86' + seg('DEV0') + '0a03');
  assert.equal(hex(createDWordField(arg(3), integer(0), 'CDW1')), '8a6b00' + seg('CDW1'));
  assert.equal(hex(call('\\_SB.PCI0.PCNT', [])), '5c2f03' + seg('_SB_PCI0PCNT'));
  assert.equal(hex(call('PCNT', [integer(2)])), seg('PCNT') + '0a02');
  assert.throws(() => arg(7), /Arg7 does not exist/);
});

test('ToUUID, OperationRegion and Field follow the ASL encodings', () => {
  // The PCI host bridge _OSC UUID as ASL compilers emit it.
  assert.equal(hex(uuid('33DB4D5B-1FF7-401C-9657-7441C03DD766')), '11130a10' + '5b4ddb33f71f1c40965774 41c03dd766'.replace(/ /g, ''));
  assert.throws(() => uuid('not-a-uuid'), /invalid UUID "not-a-uuid"/);
  assert.equal(hex(operationRegion('HPRG', 'SystemIO', 0xae00, 0x14)), '5b80' + Buffer.from('HPRG').toString('hex') + '01' + '0b00ae' + '0a14');
  // Field (HPRG, DWordAcc, NoLock, Preserve) { PCIU, 32, , 64, BIG_, 100 }
  const f = field('HPRG', 'DWordAcc', [{ name: 'PCIU', bits: 32 }, { bits: 64 }, { name: 'BIG', bits: 100 }]);
  const body = Buffer.from('HPRG').toString('hex') + '03' + Buffer.from('PCIU').toString('hex') + '20' + '00' + '4004'
    + Buffer.from('BIG_').toString('hex') + '4406';
  assert.equal(hex(f), '5b81' + (body.length / 2 + 1).toString(16).padStart(2, '0') + body);
});
