// C struct layouts described as data, laid out with the x86-64 System V rules (each field
// at the next multiple of its alignment, the struct rounded up to its largest alignment),
// and a generic encoder/decoder between byte buffers and plain objects.
// Describing layouts as data (instead of hand-written offsets) lets one test compare every
// size and offset with the kernel's own header (see test/host/kvm/layout.test.ts).

export type ScalarKind = 'u8' | 'u16' | 'u32' | 'u64' | 'i32' | 'i64';

export interface ScalarType {
  readonly kind: 'scalar';
  readonly scalar: ScalarKind;
  readonly size: number;
  readonly align: number;
}

export interface ArrayType {
  readonly kind: 'array';
  readonly element: CType;
  /** 0 marks a C flexible array member: it has an offset but no size. */
  readonly length: number;
  readonly size: number;
  readonly align: number;
}

export interface Field {
  /** The name used in TypeScript objects. */
  readonly name: string;
  /** The member name in C; '' for an anonymous struct/union whose members belong to the parent. */
  readonly cName: string;
  readonly type: CType;
  readonly offset: number;
}

export interface StructType {
  readonly kind: 'struct' | 'union';
  /** `struct kvm_regs` etc. for top-level kernel types; undefined for nested anonymous ones. */
  readonly cType: string | undefined;
  readonly fields: readonly Field[];
  readonly size: number;
  readonly align: number;
}

export type CType = ScalarType | ArrayType | StructType;

function scalar(kind: ScalarKind, size: number): ScalarType {
  return { kind: 'scalar', scalar: kind, size, align: size };
}

export const u8 = scalar('u8', 1);
export const u16 = scalar('u16', 2);
export const u32 = scalar('u32', 4);
export const u64 = scalar('u64', 8);
export const i32 = scalar('i32', 4);
export const i64 = scalar('i64', 8);

export function array(element: CType, length: number): ArrayType {
  return { kind: 'array', element, length, size: element.size * length, align: element.align };
}

/** A field spec: [name, type] or [name, type, cName] ('' for anonymous members). */
export type FieldSpec = readonly [string, CType] | readonly [string, CType, string];

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

export function struct(cType: string | undefined, specs: readonly FieldSpec[]): StructType {
  let offset = 0;
  let align = 1;
  const fields: Field[] = [];
  for (const [name, type, cName] of specs) {
    offset = alignUp(offset, type.align);
    fields.push({ name, cName: cName ?? name, type, offset });
    offset += type.size;
    align = Math.max(align, type.align);
  }
  return { kind: 'struct', cType, fields, size: alignUp(offset, align), align };
}

export function union(cType: string | undefined, specs: readonly FieldSpec[]): StructType {
  let size = 0;
  let align = 1;
  const fields: Field[] = specs.map(([name, type, cName]) => {
    size = Math.max(size, type.size);
    align = Math.max(align, type.align);
    return { name, cName: cName ?? name, type, offset: 0 };
  });
  return { kind: 'union', cType, fields, size: alignUp(size, align), align };
}

/** A field located by a dotted TypeScript path ("exit.io.port"), with its absolute offset. */
export interface ResolvedField {
  readonly offset: number;
  readonly type: CType;
  /** The same path as C spells it (anonymous members dropped), for offsetof(). */
  readonly cPath: string;
}

export function resolve(layout: StructType, path: string): ResolvedField {
  let type: CType = layout;
  let offset = 0;
  const cParts: string[] = [];
  for (const part of path.split('.')) {
    if (type.kind !== 'struct' && type.kind !== 'union') {
      throw new Error(`${layout.cType ?? 'struct'}: '${path}' descends into a non-struct member`);
    }
    const field: Field | undefined = type.fields.find((f) => f.name === part);
    if (!field) throw new Error(`${layout.cType ?? 'struct'} has no field '${path}'`);
    offset += field.offset;
    type = field.type;
    if (field.cName !== '') cParts.push(field.cName);
  }
  return { offset, type, cPath: cParts.join('.') };
}

export function offsetOf(layout: StructType, path: string): number {
  return resolve(layout, path).offset;
}

/** Every (nested) field of a layout, depth first, with TS path, C path, offset and type. */
export function* allFields(
  layout: StructType,
  prefix = '',
  cPrefix = '',
  base = 0,
): Generator<{ path: string; cPath: string; offset: number; type: CType }> {
  for (const f of layout.fields) {
    const path = prefix ? `${prefix}.${f.name}` : f.name;
    const cPath = f.cName === '' ? cPrefix : cPrefix ? `${cPrefix}.${f.cName}` : f.cName;
    const offset = base + f.offset;
    if (f.cName !== '') yield { path, cPath, offset, type: f.type };
    if (f.type.kind === 'struct' || f.type.kind === 'union') {
      yield* allFields(f.type, path, cPath, offset);
    }
  }
}

export type Decoded = number | bigint | Decoded[] | { [name: string]: Decoded };

function readScalar(view: DataView, offset: number, kind: ScalarKind): number | bigint {
  switch (kind) {
    case 'u8': return view.getUint8(offset);
    case 'u16': return view.getUint16(offset, true);
    case 'u32': return view.getUint32(offset, true);
    case 'i32': return view.getInt32(offset, true);
    case 'u64': return view.getBigUint64(offset, true);
    case 'i64': return view.getBigInt64(offset, true);
  }
}

function writeScalar(view: DataView, offset: number, kind: ScalarKind, value: unknown, path: string): void {
  if (value === undefined) return; // absent fields stay as they are (zero in a fresh buffer)
  switch (kind) {
    case 'u8': view.setUint8(offset, Number(value)); return;
    case 'u16': view.setUint16(offset, Number(value), true); return;
    case 'u32': view.setUint32(offset, Number(value), true); return;
    case 'i32': view.setInt32(offset, Number(value), true); return;
    case 'u64':
    case 'i64': {
      if (typeof value !== 'bigint' && typeof value !== 'number') {
        throw new TypeError(`field '${path}' needs a bigint, got ${typeof value}`);
      }
      const v = BigInt(value);
      if (kind === 'u64') view.setBigUint64(offset, BigInt.asUintN(64, v), true);
      else view.setBigInt64(offset, BigInt.asIntN(64, v), true);
    }
  }
}

/**
 * Reads a value of `type` at `offset`: u64/i64 become bigint, smaller integers number,
 * arrays arrays, structs objects. Union members are all decoded (each is a view of the same bytes).
 */
export function decode(type: CType, view: DataView, offset = 0): Decoded {
  switch (type.kind) {
    case 'scalar':
      return readScalar(view, offset, type.scalar);
    case 'array': {
      const out: Decoded[] = [];
      for (let i = 0; i < type.length; i++) out.push(decode(type.element, view, offset + i * type.element.size));
      return out;
    }
    default: {
      const out: { [name: string]: Decoded } = {};
      for (const f of type.fields) out[f.name] = decode(f.type, view, offset + f.offset);
      return out;
    }
  }
}

/** Writes `value` (shaped like decode's result; missing members are left untouched) at `offset`. */
export function encode(type: CType, value: unknown, view: DataView, offset = 0, path = ''): void {
  if (value === undefined) return;
  switch (type.kind) {
    case 'scalar':
      writeScalar(view, offset, type.scalar, value, path);
      return;
    case 'array': {
      if (type.element.kind === 'scalar' && type.element.size === 1 && value instanceof Uint8Array) {
        new Uint8Array(view.buffer, view.byteOffset + offset, type.size).set(value.subarray(0, type.length));
        return;
      }
      const items = value as ArrayLike<unknown>;
      const n = Math.min(items.length, type.length);
      for (let i = 0; i < n; i++) encode(type.element, items[i], view, offset + i * type.element.size, `${path}[${i}]`);
      return;
    }
    default: {
      const obj = value as Record<string, unknown>;
      for (const f of type.fields) {
        encode(f.type, obj[f.name], view, offset + f.offset, path ? `${path}.${f.name}` : f.name);
      }
    }
  }
}

/** A zeroed buffer holding `value` encoded as `type`. */
export function encodeToBytes(type: CType, value: unknown, size = type.size): Uint8Array {
  const bytes = new Uint8Array(size);
  encode(type, value, new DataView(bytes.buffer));
  return bytes;
}

export function decodeBytes(type: CType, bytes: Uint8Array, offset = 0): Decoded {
  return decode(type, new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), offset);
}
