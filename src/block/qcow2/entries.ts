// L1 and L2 table entries: decoding the bit fields of the qcow2 mapping tables.
// Host offsets are kept as JavaScript numbers (exact up to 8 PiB, far beyond any image).

export const COPIED_HI = 0x80000000;
export const COMPRESSED_HI = 0x40000000;
export const ZERO_LO = 0x1;
const OFFSET_HI_MASK = 0x00ffffff;
const OFFSET_LO_MASK = 0xfffffe00;

export type ClusterKind = 'unallocated' | 'zero' | 'normal' | 'compressed';

export interface L2Entry {
  kind: ClusterKind;
  /** Host offset of the data cluster (normal, or zero with a preallocated cluster). */
  offset: number;
  copied: boolean;
  /** Compressed clusters: where the compressed bytes are and how many may be read. */
  compressedOffset: number;
  compressedLength: number;
  /** Extended L2 only: allocation and zero bitmaps (bit i = subcluster i). */
  allocMask: number;
  zeroMask: number;
}

/** The big-endian 32-bit word at `at` (no allocation: the quick read path uses it per request). */
export function readU32(buf: Uint8Array, at: number): number {
  return ((buf[at] << 24) | (buf[at + 1] << 16) | (buf[at + 2] << 8) | buf[at + 3]) >>> 0;
}

export function readU64Parts(buf: Uint8Array, at: number): [number, number] {
  return [readU32(buf, at), readU32(buf, at + 4)];
}

export function writeU64Parts(buf: Uint8Array, at: number, hi: number, lo: number): void {
  buf[at] = hi >>> 24; buf[at + 1] = (hi >>> 16) & 0xff; buf[at + 2] = (hi >>> 8) & 0xff; buf[at + 3] = hi & 0xff;
  buf[at + 4] = lo >>> 24; buf[at + 5] = (lo >>> 16) & 0xff; buf[at + 6] = (lo >>> 8) & 0xff; buf[at + 7] = lo & 0xff;
}

export function offsetOf(hi: number, lo: number): number {
  // `>>> 0`: a bitwise AND yields a signed 32-bit result, negative for offsets whose low word
  // has bit 31 set (2-4 GiB into the file, and every 4 GiB after).
  return (hi & OFFSET_HI_MASK) * 0x100000000 + ((lo & OFFSET_LO_MASK) >>> 0);
}

/** The high word of an entry pointing at `offset`. */
function entryHi(offset: number, copied: boolean): number {
  return ((Math.floor(offset / 0x100000000) & OFFSET_HI_MASK) | (copied ? COPIED_HI : 0)) >>> 0;
}

/** The low word of an entry pointing at `offset`. */
function entryLo(offset: number, zero: boolean): number {
  return (((offset % 0x100000000) & OFFSET_LO_MASK) | (zero ? ZERO_LO : 0)) >>> 0;
}

/** The hi/lo words of an entry pointing at `offset` with the given flags. */
export function makeEntry(offset: number, copied: boolean, zero = false): [number, number] {
  return [entryHi(offset, copied), entryLo(offset, zero)];
}

/** Writes at `at` the entry of a plainly allocated cluster at `offset` (copied, not zero): makeEntry's words, without the array. */
export function writeEntry(buf: Uint8Array, at: number, offset: number): void {
  writeU64Parts(buf, at, entryHi(offset, true), entryLo(offset, false));
}

export function decodeL2(buf: Uint8Array, index: number, clusterBits: number, extended: boolean): L2Entry {
  const size = extended ? 16 : 8;
  const [hi, lo] = readU64Parts(buf, index * size);
  const e: L2Entry = { kind: 'unallocated', offset: 0, copied: (hi & COPIED_HI) !== 0, compressedOffset: 0, compressedLength: 0, allocMask: 0, zeroMask: 0 };
  if (extended) {
    const [zeroMask, allocMask] = readU64Parts(buf, index * size + 8);
    e.allocMask = allocMask;
    e.zeroMask = zeroMask;
  }
  if (hi & COMPRESSED_HI) {
    const raw = (BigInt(hi) << 32n) | BigInt(lo);
    const x = BigInt(62 - (clusterBits - 8));
    const off = raw & ((1n << x) - 1n);
    const sectors = ((raw >> x) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1n;
    e.kind = 'compressed';
    e.copied = false;
    e.compressedOffset = Number(off);
    e.compressedLength = Number(sectors) * 512 - (Number(off) % 512);
    return e;
  }
  e.offset = offsetOf(hi, lo);
  if (extended) {
    // In extended entries bit 0 is reserved; zero status lives in the bitmap.
    e.kind = e.offset !== 0 ? 'normal' : e.zeroMask !== 0 ? 'zero' : 'unallocated';
  } else if (lo & ZERO_LO) e.kind = 'zero';
  else e.kind = e.offset !== 0 ? 'normal' : 'unallocated';
  return e;
}

/** Encode a compressed-cluster descriptor. */
export function makeCompressedEntry(offset: number, length: number, clusterBits: number): [number, number] {
  const x = BigInt(62 - (clusterBits - 8));
  const firstSector = Math.floor(offset / 512);
  const lastSector = Math.floor((offset + length - 1) / 512);
  const raw = (1n << 62n) | (BigInt(lastSector - firstSector) << x) | BigInt(offset);
  return [Number(raw >> 32n) >>> 0, Number(raw & 0xffffffffn) >>> 0];
}
