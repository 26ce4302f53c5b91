// A small AML (ACPI Machine Language) writer: enough to express the DSDT of a virtual
// machine (names, integers, strings, packages, buffers, methods, devices, scopes, resource
// templates). Every builder returns the encoded bytes, so terms compose by nesting arrays.
// Encodings follow the ACPI specification's "ACPI Machine Language Specification" chapter.

export type Aml = Uint8Array;

// Opcodes.
const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const ONES_OP = 0xff;
const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const QWORD_PREFIX = 0x0e;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const METHOD_OP = 0x14;
const DUAL_NAME_PREFIX = 0x2e;
const MULTI_NAME_PREFIX = 0x2f;
const EXT_OP_PREFIX = 0x5b;
const DEVICE_OP = 0x82; // after EXT_OP_PREFIX
const ROOT_CHAR = 0x5c; // '\'
const PARENT_PREFIX_CHAR = 0x5e; // '^'
const RETURN_OP = 0xa4;
const LOCAL0_OP = 0x60;
const ARG0_OP = 0x68;

export function concat(parts: readonly Aml[]): Aml {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function bytes(...values: number[]): Aml {
  return Uint8Array.from(values);
}

function le(value: bigint, size: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < size; i++) out.push(Number((value >> BigInt(8 * i)) & 0xffn));
  return out;
}

/**
 * PkgLength: the length of what follows *including the PkgLength bytes themselves*, in 1..4
 * bytes. The lead byte's top two bits give the count of extra bytes; with extra bytes only
 * its low nibble carries length bits.
 */
export function pkgLength(contentLength: number): Aml {
  if (contentLength + 1 < 0x40) return bytes(contentLength + 1);
  for (let extra = 1; extra <= 3; extra++) {
    const total = contentLength + 1 + extra;
    if (total < 1 << (4 + 8 * extra)) {
      const out = [(extra << 6) | (total & 0x0f)];
      for (let i = 0; i < extra; i++) out.push((total >> (4 + 8 * i)) & 0xff);
      return Uint8Array.from(out);
    }
  }
  throw new Error(`AML package of ${contentLength} bytes exceeds the 256 MiB PkgLength limit`);
}

function nameSegment(seg: string): number[] {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) throw new Error(`invalid AML name segment "${seg}"`);
  const padded = seg.padEnd(4, '_');
  return [...padded].map((c) => c.charCodeAt(0));
}

/**
 * A NameString: "\_SB_.PCI0", "^FOO", "_HID", "\" (the root). Segments shorter than four
 * characters are padded with '_' as ASL does.
 */
export function nameString(path: string): Aml {
  const out: number[] = [];
  let rest = path;
  if (rest.startsWith('\\')) {
    out.push(ROOT_CHAR);
    rest = rest.slice(1);
  }
  while (rest.startsWith('^')) {
    out.push(PARENT_PREFIX_CHAR);
    rest = rest.slice(1);
  }
  const segs = rest === '' ? [] : rest.split('.');
  if (segs.length === 0) out.push(0x00); // NullName
  else if (segs.length === 1) out.push(...nameSegment(segs[0]!));
  else if (segs.length === 2) out.push(DUAL_NAME_PREFIX, ...nameSegment(segs[0]!), ...nameSegment(segs[1]!));
  else {
    if (segs.length > 255) throw new Error(`AML name path "${path}" has too many segments`);
    out.push(MULTI_NAME_PREFIX, segs.length);
    for (const s of segs) out.push(...nameSegment(s));
  }
  return Uint8Array.from(out);
}

/** An integer constant in the shortest encoding (Zero, One, Ones, Byte/Word/DWord/QWord). */
export function integer(value: number | bigint): Aml {
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new Error(`AML integer ${v} is out of the 64-bit unsigned range`);
  if (v === 0n) return bytes(ZERO_OP);
  if (v === 1n) return bytes(ONE_OP);
  if (v === 0xffff_ffff_ffff_ffffn) return bytes(ONES_OP);
  if (v <= 0xffn) return bytes(BYTE_PREFIX, Number(v));
  if (v <= 0xffffn) return bytes(WORD_PREFIX, ...le(v, 2));
  if (v <= 0xffff_ffffn) return bytes(DWORD_PREFIX, ...le(v, 4));
  return bytes(QWORD_PREFIX, ...le(v, 8));
}

/** An ASCII string constant. */
export function string(value: string): Aml {
  if (!/^[\x01-\x7f]*$/.test(value)) throw new Error(`AML string "${value}" must be 7-bit ASCII without NUL`);
  return concat([bytes(STRING_PREFIX), new TextEncoder().encode(value), bytes(0)]);
}

/**
 * A compressed EISA ID ("PNP0A08") as the DWord integer ASL's EISAID() produces: three
 * 5-bit letters and four hex digits, stored big-endian in a little-endian DWord.
 */
export function eisaId(id: string): Aml {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new Error(`invalid EISA ID "${id}"`);
  const c = (i: number) => id.charCodeAt(i) - 0x40;
  const hex = parseInt(id.slice(3), 16);
  const value = ((c(0) << 26) | (c(1) << 21) | (c(2) << 16) | hex) >>> 0;
  // Byte-swap: the ID is defined as a big-endian 32-bit number.
  const swapped = (((value & 0xff) << 24) | ((value & 0xff00) << 8) | ((value >>> 8) & 0xff00) | (value >>> 24)) >>> 0;
  return bytes(DWORD_PREFIX, ...le(BigInt(swapped), 4));
}

/** Name(path, value). */
export function name(path: string, value: Aml): Aml {
  return concat([bytes(NAME_OP), nameString(path), value]);
}

/** Package(){ elements } (at most 255 elements). */
export function pkg(elements: readonly Aml[]): Aml {
  if (elements.length > 255) throw new Error(`AML package of ${elements.length} elements exceeds 255`);
  const body = concat([bytes(elements.length), ...elements]);
  return concat([bytes(PACKAGE_OP), pkgLength(body.length), body]);
}

/** Buffer(){ data }. */
export function buffer(data: Uint8Array): Aml {
  const body = concat([integer(data.length), data]);
  return concat([bytes(BUFFER_OP), pkgLength(body.length), body]);
}

/** Method(path, argCount, Serialized/NotSerialized){ body }. */
export function method(path: string, argCount: number, serialized: boolean, body: readonly Aml[]): Aml {
  if (argCount < 0 || argCount > 7) throw new Error(`AML method ${path} argument count ${argCount} is not 0..7`);
  const content = concat([nameString(path), bytes(argCount | (serialized ? 0x08 : 0)), ...body]);
  return concat([bytes(METHOD_OP), pkgLength(content.length), content]);
}

/** Return(value). */
export function returnValue(value: Aml): Aml {
  return concat([bytes(RETURN_OP), value]);
}

/** ArgN / LocalN references, for method bodies. */
export function arg(n: number): Aml {
  if (n < 0 || n > 6) throw new Error(`AML Arg${n} does not exist`);
  return bytes(ARG0_OP + n);
}
export function local(n: number): Aml {
  if (n < 0 || n > 7) throw new Error(`AML Local${n} does not exist`);
  return bytes(LOCAL0_OP + n);
}

/** Device(path){ body }. */
export function device(path: string, body: readonly Aml[]): Aml {
  const content = concat([nameString(path), ...body]);
  return concat([bytes(EXT_OP_PREFIX, DEVICE_OP), pkgLength(content.length), content]);
}

/** Scope(path){ body }. */
export function scope(path: string, body: readonly Aml[]): Aml {
  const content = concat([nameString(path), ...body]);
  return concat([bytes(SCOPE_OP), pkgLength(content.length), content]);
}

// ---- resource templates (ACPI "Resource Data Types") ---------------------------------------

/** ResourceTemplate(){ descriptors }: a buffer of descriptors closed by an End Tag. */
export function resourceTemplate(descriptors: readonly Uint8Array[]): Aml {
  // End Tag: small item 0xF, length 1; checksum 0 means "not checksummed".
  return buffer(concat([...descriptors, bytes(0x79, 0x00)]));
}

/** IO(Decode16, min, max, alignment, length). */
export function io(min: number, max: number, alignment: number, length: number): Uint8Array {
  return bytes(0x47, 0x01, min & 0xff, min >> 8, max & 0xff, max >> 8, alignment, length);
}

/** IRQNoFlags(){ irqs }: edge-triggered, active-high ISA interrupts. */
export function irqNoFlags(irqs: readonly number[]): Uint8Array {
  let mask = 0;
  for (const irq of irqs) {
    if (irq < 0 || irq > 15) throw new Error(`ISA IRQ ${irq} is not 0..15`);
    mask |= 1 << irq;
  }
  return bytes(0x22, mask & 0xff, mask >> 8);
}

/** Memory32Fixed(ReadWrite/ReadOnly, base, length). */
export function memory32Fixed(base: bigint, length: bigint, readWrite = true): Uint8Array {
  return bytes(0x86, 9, 0, readWrite ? 1 : 0, ...le(base, 4), ...le(length, 4));
}

/** General flags shared by the address space descriptors (Word/DWord/QWord*). */
export interface AddressSpaceFlags {
  /** ResourceProducer (a bridge handing the range to children) or ResourceConsumer. */
  producer?: boolean;
  minFixed?: boolean;
  maxFixed?: boolean;
  subtractiveDecode?: boolean;
}

function generalFlags(f: AddressSpaceFlags): number {
  return (f.producer === false ? 1 : 0) | (f.subtractiveDecode ? 2 : 0) | (f.minFixed === false ? 0 : 4)
    | (f.maxFixed === false ? 0 : 8);
}

const RESOURCE_MEMORY = 0;
const RESOURCE_IO = 1;
const RESOURCE_BUS = 2;

/** Memory range caching attribute for DWord/QWordMemory. */
export type MemoryCaching = 'NonCacheable' | 'Cacheable' | 'WriteCombining' | 'Prefetchable';
const CACHING: Record<MemoryCaching, number> = { NonCacheable: 0, Cacheable: 1, WriteCombining: 2, Prefetchable: 3 };

function addressSpace(tag: number, size: number, resourceType: number, general: number, specific: number,
  min: bigint, max: bigint, translation: bigint, length: bigint): Uint8Array {
  const checkField = (label: string, v: bigint) => {
    if (v < 0n || v >= 1n << BigInt(8 * size)) throw new Error(`resource ${label} 0x${v.toString(16)} does not fit in ${size} bytes`);
  };
  checkField('minimum', min);
  checkField('maximum', max);
  checkField('length', length);
  if (max < min) throw new Error(`resource range 0x${min.toString(16)}..0x${max.toString(16)} is inverted`);
  const body = [resourceType, general, specific, ...le(0n, size), ...le(min, size), ...le(max, size),
    ...le(translation, size), ...le(length, size)];
  return bytes(tag, body.length & 0xff, body.length >> 8, ...body);
}

/** WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, count). */
export function wordBusNumber(min: number, max: number, flags: AddressSpaceFlags = {}): Uint8Array {
  return addressSpace(0x88, 2, RESOURCE_BUS, generalFlags(flags), 0, BigInt(min), BigInt(max), 0n,
    BigInt(max - min + 1));
}

/** WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min, max, 0, length). */
export function wordIo(min: number, max: number, flags: AddressSpaceFlags = {}): Uint8Array {
  return addressSpace(0x88, 2, RESOURCE_IO, generalFlags(flags), 3, BigInt(min), BigInt(max), 0n,
    BigInt(max - min + 1));
}

/** DWordMemory(..., caching, ReadWrite, 0, min, max, 0, length). */
export function dwordMemory(min: bigint, max: bigint, caching: MemoryCaching = 'NonCacheable',
  flags: AddressSpaceFlags = {}): Uint8Array {
  return addressSpace(0x87, 4, RESOURCE_MEMORY, generalFlags(flags), 1 | (CACHING[caching] << 1), min, max, 0n,
    max - min + 1n);
}

/** QWordMemory(..., caching, ReadWrite, 0, min, max, 0, length). */
export function qwordMemory(min: bigint, max: bigint, caching: MemoryCaching = 'NonCacheable',
  flags: AddressSpaceFlags = {}): Uint8Array {
  return addressSpace(0x8a, 8, RESOURCE_MEMORY, generalFlags(flags), 1 | (CACHING[caching] << 1), min, max, 0n,
    max - min + 1n);
}

// ---- control flow and expressions, for methods such as _OSC, _STA and hot-plug handlers ---

const IF_OP = 0xa0;
const ELSE_OP = 0xa1;
const STORE_OP = 0x70;
const ADD_OP = 0x72;
const AND_OP = 0x7b;
const OR_OP = 0x7d;
const NOTIFY_OP = 0x86;
const CREATE_DWORD_FIELD_OP = 0x8a;
const LAND_OP = 0x90;
const LOR_OP = 0x91;
const LNOT_OP = 0x92;
const LEQUAL_OP = 0x93;
const LGREATER_OP = 0x94;
const LLESS_OP = 0x95;
const OP_REGION_OP = 0x80; // after EXT_OP_PREFIX
const FIELD_OP = 0x81; // after EXT_OP_PREFIX
const NULL_TARGET = 0x00;

/** A reference to a named object (or a method call with no arguments): just its NameString. */
export function ref(path: string): Aml {
  return nameString(path);
}

/** A call of method `path` with arguments: the NameString followed by the argument terms. */
export function call(path: string, args: readonly Aml[]): Aml {
  return concat([nameString(path), ...args]);
}

/** If (predicate) { body } [Else { elseBody }]. */
export function ifElse(predicate: Aml, body: readonly Aml[], elseBody?: readonly Aml[]): Aml {
  const content = concat([predicate, ...body]);
  const parts = [bytes(IF_OP), pkgLength(content.length), content];
  if (elseBody) {
    const e = concat(elseBody);
    parts.push(bytes(ELSE_OP), pkgLength(e.length), e);
  }
  return concat(parts);
}

/** Store (value, target). */
export function store(value: Aml, target: Aml): Aml {
  return concat([bytes(STORE_OP), value, target]);
}

function binary(op: number, a: Aml, b: Aml, target?: Aml): Aml {
  return concat([bytes(op), a, b, target ?? bytes(NULL_TARGET)]);
}

/** Add (a, b[, target]). */
export function add(a: Aml, b: Aml, target?: Aml): Aml {
  return binary(ADD_OP, a, b, target);
}
/** And (a, b[, target]): bitwise. */
export function and(a: Aml, b: Aml, target?: Aml): Aml {
  return binary(AND_OP, a, b, target);
}
/** Or (a, b[, target]): bitwise. */
export function or(a: Aml, b: Aml, target?: Aml): Aml {
  return binary(OR_OP, a, b, target);
}
/** LEqual (a, b). */
export function lEqual(a: Aml, b: Aml): Aml {
  return concat([bytes(LEQUAL_OP), a, b]);
}
/** LNotEqual (a, b), encoded as LNot (LEqual (a, b)). */
export function lNotEqual(a: Aml, b: Aml): Aml {
  return concat([bytes(LNOT_OP), lEqual(a, b)]);
}
export function lGreater(a: Aml, b: Aml): Aml {
  return concat([bytes(LGREATER_OP), a, b]);
}
export function lLess(a: Aml, b: Aml): Aml {
  return concat([bytes(LLESS_OP), a, b]);
}
export function lAnd(a: Aml, b: Aml): Aml {
  return concat([bytes(LAND_OP), a, b]);
}
export function lOr(a: Aml, b: Aml): Aml {
  return concat([bytes(LOR_OP), a, b]);
}
export function lNot(a: Aml): Aml {
  return concat([bytes(LNOT_OP), a]);
}

/** Notify (object, value): e.g. device check (1) or eject request (3) for hot-plug. */
export function notify(object: Aml, value: Aml): Aml {
  return concat([bytes(NOTIFY_OP), object, value]);
}

/** CreateDWordField (buffer, byteIndex, name). */
export function createDWordField(source: Aml, byteIndex: Aml, fieldName: string): Aml {
  return concat([bytes(CREATE_DWORD_FIELD_OP), source, byteIndex, nameString(fieldName)]);
}

/**
 * ToUUID ("xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx") as the 16-byte buffer ASL produces: the
 * first three groups little-endian, the last two in string order.
 */
export function uuid(text: string): Aml {
  if (!/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(text)) {
    throw new Error(`invalid UUID "${text}"`);
  }
  const hex = text.replace(/-/g, '');
  const b = Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16));
  const order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
  return buffer(Uint8Array.from(order.map((i) => b[i]!)));
}

/** Address spaces of OperationRegion. */
export type RegionSpace = 'SystemMemory' | 'SystemIO' | 'PCI_Config';
const REGION_SPACE: Record<RegionSpace, number> = { SystemMemory: 0, SystemIO: 1, PCI_Config: 2 };

/** OperationRegion (name, space, offset, length). */
export function operationRegion(regionName: string, space: RegionSpace, offset: number | bigint, length: number | bigint): Aml {
  return concat([bytes(EXT_OP_PREFIX, OP_REGION_OP), nameString(regionName), bytes(REGION_SPACE[space]),
    integer(offset), integer(length)]);
}

/** Access width of a Field. */
export type FieldAccess = 'AnyAcc' | 'ByteAcc' | 'WordAcc' | 'DWordAcc' | 'QWordAcc';
const FIELD_ACCESS: Record<FieldAccess, number> = { AnyAcc: 0, ByteAcc: 1, WordAcc: 2, DWordAcc: 3, QWordAcc: 4 };

/** One Field element: a named unit of `bits`, or an unnamed gap (`name` undefined). */
export interface FieldUnit {
  name?: string;
  bits: number;
}

/** A field unit length: PkgLength's byte layout, but the value is exactly `bits`. */
function fieldBits(bits: number): number[] {
  if (bits < 0 || bits >= 1 << 28) throw new Error(`AML field unit of ${bits} bits is out of range`);
  if (bits < 0x40) return [bits];
  const extra = bits < 1 << 12 ? 1 : bits < 1 << 20 ? 2 : 3;
  const out = [(extra << 6) | (bits & 0x0f)];
  for (let i = 0; i < extra; i++) out.push((bits >> (4 + 8 * i)) & 0xff);
  return out;
}

/** Field (region, access, NoLock, Preserve) { units }. */
export function field(regionName: string, access: FieldAccess, units: readonly FieldUnit[]): Aml {
  const list: number[] = [];
  for (const u of units) {
    if (u.name === undefined) list.push(0x00, ...fieldBits(u.bits)); // ReservedField
    else list.push(...nameSegment(u.name), ...fieldBits(u.bits));
  }
  const content = concat([nameString(regionName), bytes(FIELD_ACCESS[access]), Uint8Array.from(list)]);
  return concat([bytes(EXT_OP_PREFIX, FIELD_OP), pkgLength(content.length), content]);
}
