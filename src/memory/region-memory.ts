// GuestMemory over a list of non-overlapping regions, each a byte array placed at a
// guest-physical address. The byte arrays may be plain buffers (tests) or views of host
// mappings that KVM also sees (the VMM): this class does not care where bytes live.
import { GuestMemory, GuestMemoryError } from './guest-memory.js';

export interface MemoryRegion {
  /** Guest-physical address of the first byte. */
  readonly guestAddress: bigint;
  readonly bytes: Uint8Array;
}

export class RegionGuestMemory implements GuestMemory {
  readonly size: bigint;
  private readonly regions: readonly MemoryRegion[];
  private readonly views: DataView[];

  constructor(regions: readonly MemoryRegion[]) {
    const sorted = [...regions].sort((a, b) => (a.guestAddress < b.guestAddress ? -1 : 1));
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!;
      if (prev.guestAddress + BigInt(prev.bytes.length) > sorted[i]!.guestAddress) {
        throw new Error(`guest memory regions overlap at 0x${sorted[i]!.guestAddress.toString(16)}`);
      }
    }
    this.regions = sorted;
    this.views = sorted.map((r) => new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength));
    this.size = sorted.reduce((sum, r) => sum + BigInt(r.bytes.length), 0n);
  }

  /** A single zero-filled region of `size` bytes at guest address 0 (for tests and tools). */
  static ofSize(size: number): RegionGuestMemory {
    return new RegionGuestMemory([{ guestAddress: 0n, bytes: new Uint8Array(size) }]);
  }

  get regionList(): readonly MemoryRegion[] {
    return this.regions;
  }

  /** Index of the region holding [address, address+length), or -1. */
  private find(address: bigint, length: number): number {
    if (address < 0n || length < 0) return -1;
    const end = address + BigInt(length);
    for (let i = 0; i < this.regions.length; i++) {
      const r = this.regions[i]!;
      if (address >= r.guestAddress && end <= r.guestAddress + BigInt(r.bytes.length)) return i;
    }
    return -1;
  }

  private locate(address: bigint, length: number): { index: number; offset: number } {
    const index = this.find(address, length);
    if (index < 0) throw new GuestMemoryError(address, length);
    return { index, offset: Number(address - this.regions[index]!.guestAddress) };
  }

  contains(address: bigint, length: number): boolean {
    return this.find(address, length) >= 0;
  }

  slice(address: bigint, length: number): Uint8Array {
    const { index, offset } = this.locate(address, length);
    return this.regions[index]!.bytes.subarray(offset, offset + length);
  }

  read(address: bigint, into: Uint8Array): void {
    into.set(this.slice(address, into.length));
  }

  write(address: bigint, data: Uint8Array): void {
    this.slice(address, data.length).set(data);
  }

  readU8(address: bigint): number {
    const { index, offset } = this.locate(address, 1);
    return this.views[index]!.getUint8(offset);
  }
  readU16(address: bigint): number {
    const { index, offset } = this.locate(address, 2);
    return this.views[index]!.getUint16(offset, true);
  }
  readU32(address: bigint): number {
    const { index, offset } = this.locate(address, 4);
    return this.views[index]!.getUint32(offset, true);
  }
  readU64(address: bigint): bigint {
    const { index, offset } = this.locate(address, 8);
    return this.views[index]!.getBigUint64(offset, true);
  }
  writeU8(address: bigint, value: number): void {
    const { index, offset } = this.locate(address, 1);
    this.views[index]!.setUint8(offset, value);
  }
  writeU16(address: bigint, value: number): void {
    const { index, offset } = this.locate(address, 2);
    this.views[index]!.setUint16(offset, value, true);
  }
  writeU32(address: bigint, value: number): void {
    const { index, offset } = this.locate(address, 4);
    this.views[index]!.setUint32(offset, value, true);
  }
  writeU64(address: bigint, value: bigint): void {
    const { index, offset } = this.locate(address, 8);
    this.views[index]!.setBigUint64(offset, value, true);
  }
}
