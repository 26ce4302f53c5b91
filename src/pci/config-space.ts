// The configuration space of one PCI Express function: 4 KiB of registers, a per-byte mask
// of which bits the guest may write, and a per-byte mask of write-1-to-clear bits. BAR
// sizing falls out of the masks: the address bits below the BAR size are read-only zeros,
// so writing all ones reads back the size mask with the type flags.

export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08;
export const PCI_CLASS_PROG = 0x09;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BAR0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;

export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_PARITY = 0x40;
export const PCI_COMMAND_SERR = 0x100;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
export const PCI_STATUS_INTERRUPT = 0x8;
export const PCI_STATUS_CAP_LIST = 0x10;

export const PCI_CAP_ID_PM = 0x01;
export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_EXP = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;

export const PCI_CONFIG_SPACE_SIZE = 4096;

export type BarKind = 'mem32' | 'mem64' | 'io';

export interface BarDefinition {
  kind: BarKind;
  /** Power of two; at least 16 bytes for memory BARs (4 KiB used in practice), 4 for I/O. */
  size: bigint;
  prefetchable?: boolean;
}

export interface PciIdentity {
  vendorId: number;
  deviceId: number;
  revision: number;
  /** 24-bit class code: base class, subclass, programming interface. */
  classCode: number;
  subsystemVendorId: number;
  subsystemId: number;
  /** 0 for none, 1..4 for INTA#..INTD#. */
  interruptPin: number;
  /** Header type 0 (endpoint) by default. */
  headerType?: number;
}

export class PciConfigSpace {
  private storage: Uint8Array = new Uint8Array(PCI_CONFIG_SPACE_SIZE);
  private readonly writable = new Uint8Array(PCI_CONFIG_SPACE_SIZE);
  private readonly writeOneToClear = new Uint8Array(PCI_CONFIG_SPACE_SIZE);
  private view: DataView = new DataView(this.storage.buffer);
  readonly bars: (BarDefinition | undefined)[] = new Array(6).fill(undefined);
  private lastCapability = 0;
  private nextCapabilityOffset = 0x40;

  constructor(identity: PciIdentity) {
    this.setU16(PCI_VENDOR_ID, identity.vendorId);
    this.setU16(PCI_DEVICE_ID, identity.deviceId);
    this.setU8(PCI_REVISION_ID, identity.revision);
    this.setU8(PCI_CLASS_PROG, identity.classCode & 0xff);
    this.setU16(PCI_CLASS_PROG + 1, (identity.classCode >> 8) & 0xffff);
    this.setU8(PCI_HEADER_TYPE, identity.headerType ?? 0);
    this.setU16(PCI_SUBSYSTEM_VENDOR_ID, identity.subsystemVendorId);
    this.setU16(PCI_SUBSYSTEM_ID, identity.subsystemId);
    this.setU8(PCI_INTERRUPT_PIN, identity.interruptPin);
    const command = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_PARITY
      | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE;
    this.setWritable(PCI_COMMAND, 2, command);
    this.setWritable(PCI_INTERRUPT_LINE, 1, 0xff);
    // Error status bits (parity, aborts, SERR) are cleared by writing ones.
    this.writeOneToClear[PCI_STATUS + 1] = 0xf9;
  }

  /** The registers' bytes (the masks are kept apart). */
  get bytes(): Uint8Array { return this.storage; }

  /**
   * Keep the registers in `storage` (PCI_CONFIG_SPACE_SIZE bytes) from now on, starting with
   * their current contents. The host bridge moves each plugged function's registers into
   * memory its vCPU threads share, so they answer config reads without the main thread.
   */
  moveTo(storage: Uint8Array): void {
    if (storage.length !== PCI_CONFIG_SPACE_SIZE) throw new Error(`config space storage must be ${PCI_CONFIG_SPACE_SIZE} bytes, not ${storage.length}`);
    storage.set(this.storage);
    this.storage = storage;
    this.view = new DataView(storage.buffer, storage.byteOffset, storage.byteLength);
  }

  getU8(offset: number): number { return this.view.getUint8(offset); }
  getU16(offset: number): number { return this.view.getUint16(offset, true); }
  getU32(offset: number): number { return this.view.getUint32(offset, true); }
  setU8(offset: number, value: number): void { this.view.setUint8(offset, value); }
  setU16(offset: number, value: number): void { this.view.setUint16(offset, value, true); }
  setU32(offset: number, value: number): void { this.view.setUint32(offset, value >>> 0, true); }

  /** Let the guest write the bits of `mask` in the `length`-byte register at `offset`. */
  setWritable(offset: number, length: number, mask: number | bigint): void {
    let m = BigInt(mask);
    for (let i = 0; i < length; i++) {
      this.writable[offset + i] = Number(m & 0xffn);
      m >>= 8n;
    }
  }

  get command(): number { return this.getU16(PCI_COMMAND); }

  /** Declare a BAR. 64-bit BARs take this slot and the next. */
  defineBar(index: number, bar: BarDefinition): void {
    const slots = bar.kind === 'mem64' ? 2 : 1;
    if (index < 0 || index + slots > 6) throw new Error(`BAR ${index} does not fit in the header`);
    if (bar.size & (bar.size - 1n) || bar.size < (bar.kind === 'io' ? 4n : 16n)) {
      throw new Error(`BAR ${index} size ${bar.size} is not a power of two of at least the minimum`);
    }
    for (let i = index; i < index + slots; i++) {
      if (this.bars[i]) throw new Error(`BAR ${i} is already defined`);
    }
    this.bars[index] = bar;
    const offset = PCI_BAR0 + index * 4;
    if (bar.kind === 'io') {
      this.setU32(offset, 0x1);
      this.setWritable(offset, 4, 0xffffffffn & ~(bar.size - 1n));
      return;
    }
    const flags = (bar.kind === 'mem64' ? 0x4 : 0) | (bar.prefetchable ? 0x8 : 0);
    this.setU32(offset, flags);
    const mask = (bar.kind === 'mem64' ? 0xffffffffffffffffn : 0xffffffffn) & ~(bar.size - 1n);
    this.setWritable(offset, 4, mask & 0xffffffffn);
    if (bar.kind === 'mem64') this.setWritable(offset + 4, 4, mask >> 32n);
  }

  /** The address a BAR currently decodes (flags stripped). */
  barAddress(index: number): bigint {
    const bar = this.bars[index];
    if (!bar) return 0n;
    const offset = PCI_BAR0 + index * 4;
    const low = BigInt(this.getU32(offset));
    if (bar.kind === 'io') return low & ~0x3n;
    const address = low & ~0xfn;
    return bar.kind === 'mem64' ? address | (BigInt(this.getU32(offset + 4)) << 32n) : address;
  }

  /** Program a BAR's address (firmware-style allocation, done by the host bridge). */
  setBarAddress(index: number, address: bigint): void {
    const bar = this.bars[index];
    if (!bar) throw new Error(`BAR ${index} is not defined`);
    const offset = PCI_BAR0 + index * 4;
    const flags = this.getU32(offset) & (bar.kind === 'io' ? 0x3 : 0xf);
    this.setU32(offset, Number(address & 0xffffffffn) | flags);
    if (bar.kind === 'mem64') this.setU32(offset + 4, Number(address >> 32n));
  }

  /**
   * Append a capability: `body` is everything after the ID and next-pointer bytes. Returns the
   * capability's offset; the caller then marks its writable bits.
   */
  addCapability(id: number, body: Uint8Array): number {
    const offset = this.nextCapabilityOffset;
    const length = 2 + body.length;
    if (offset + length > 0x100) throw new Error(`capability 0x${id.toString(16)} does not fit in config space`);
    this.setU8(offset, id);
    this.setU8(offset + 1, 0);
    this.bytes.set(body, offset + 2);
    if (this.lastCapability === 0) this.setU8(PCI_CAPABILITY_LIST, offset);
    else this.setU8(this.lastCapability + 1, offset);
    this.lastCapability = offset;
    this.setU16(PCI_STATUS, this.getU16(PCI_STATUS) | PCI_STATUS_CAP_LIST);
    this.nextCapabilityOffset = (offset + length + 3) & ~3;
    return offset;
  }

  /** The register contents (not the masks), to restore on machine reset. */
  snapshot(): Uint8Array {
    return Uint8Array.from(this.bytes);
  }

  restore(snapshot: Uint8Array): void {
    this.bytes.set(snapshot);
  }

  /** A guest read of 1, 2 or 4 bytes; out-of-range reads return all ones. */
  read(offset: number, length: number): number {
    if (offset < 0 || offset + length > PCI_CONFIG_SPACE_SIZE) return length === 4 ? 0xffffffff : (1 << (length * 8)) - 1;
    if (length === 1) return this.getU8(offset);
    if (length === 2) return this.getU16(offset);
    return this.getU32(offset);
  }

  /** A guest write of 1, 2 or 4 bytes, honouring the writable and write-1-to-clear masks. */
  write(offset: number, length: number, value: number): void {
    if (offset < 0 || offset + length > PCI_CONFIG_SPACE_SIZE) return;
    for (let i = 0; i < length; i++) {
      const byte = (value >>> (i * 8)) & 0xff;
      const at = offset + i;
      const keep = this.bytes[at]! & ~this.writable[at]!;
      let next = keep | (byte & this.writable[at]!);
      next &= ~(byte & this.writeOneToClear[at]!);
      this.bytes[at] = next;
    }
  }
}
