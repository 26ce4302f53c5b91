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
