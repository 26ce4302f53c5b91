// An address bus: port I/O or MMIO ranges mapped to devices. vCPU exits for an address are
// routed to the device whose range holds it, with the offset inside that range. Both the
// legacy devices and PCI BARs attach here; PCI moves ranges when the guest reprograms BARs.

export interface BusDevice {
  /** Fill `data` (1, 2, 4 or 8 bytes, little-endian) with the value read at `offset`. */
  read(offset: bigint, data: Uint8Array): void;
  /** Handle a write of `data` (little-endian) at `offset`. */
  write(offset: bigint, data: Uint8Array): void;
}

interface BusRange {
  base: bigint;
  length: bigint;
  device: BusDevice;
  name: string;
}

export class BusConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BusConflictError';
  }
}

/** Port I/O addresses: 64 KiB of them, so a byte per port is a small shared map. */
export const PIO_SPACE = 0x10000;

export class Bus {
  // Sorted by base; lookups binary-search it. Exits are hot, so no allocation on lookup.
  private ranges: BusRange[] = [];
  /** One byte per port, 1 where a range is mapped (see claimsMap). */
  private claims: Uint8Array | undefined;

  constructor(readonly kind: 'pio' | 'mmio') {}

  /**
   * A map of the port space, one byte per port, set where a device is mapped, in memory any
   * thread can read, kept current as ranges come and go. A vCPU thread answers an access
   * to a port nobody claims itself (reads float to all ones, writes are dropped), as this
   * bus would, without handing the exit over: a Linux boot probes dozens of absent ports
   * (PCI configuration on a machine without PCI, missing serial ports).
   */
  claimsMap(): SharedArrayBuffer {
    if (this.kind !== 'pio') throw new Error('only the port I/O bus has a claims map');
    if (!this.claims) {
      this.claims = new Uint8Array(new SharedArrayBuffer(PIO_SPACE));
      for (const r of this.ranges) this.mark(r, 1);
    }
    return this.claims.buffer as SharedArrayBuffer;
  }

  private mark(r: BusRange, value: number): void {
    if (!this.claims || r.base >= BigInt(PIO_SPACE)) return;
    const end = r.base + r.length < BigInt(PIO_SPACE) ? r.base + r.length : BigInt(PIO_SPACE);
    this.claims.fill(value, Number(r.base), Number(end));
  }

  insert(base: bigint, length: bigint, device: BusDevice, name: string): void {
    if (length <= 0n) throw new BusConflictError(`${this.kind} range for ${name} has no length`);
    const end = base + length;
    for (const r of this.ranges) {
      if (base < r.base + r.length && r.base < end) {
        throw new BusConflictError(
          `${this.kind} range 0x${base.toString(16)}+0x${length.toString(16)} for ${name} overlaps ${r.name} at 0x${r.base.toString(16)}`,
        );
      }
    }
    const range = { base, length, device, name };
    this.ranges.push(range);
    this.mark(range, 1);
    this.ranges.sort((a, b) => (a.base < b.base ? -1 : a.base > b.base ? 1 : 0));
  }

  /** Remove the range starting at `base`; returns whether one was there. */
  remove(base: bigint): boolean {
    const i = this.ranges.findIndex((r) => r.base === base);
    if (i < 0) return false;
    this.mark(this.ranges[i]!, 0);
    this.ranges.splice(i, 1);
    return true;
  }

  private lookup(address: bigint): BusRange | undefined {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.ranges[mid]!;
      if (address < r.base) hi = mid - 1;
      else if (address >= r.base + r.length) lo = mid + 1;
      else return r;
    }
    return undefined;
  }

  /** Route a read; returns false (and leaves data as all ones) when nothing is mapped there. */
  read(address: bigint, data: Uint8Array): boolean {
    const r = this.lookup(address);
    if (!r) {
      data.fill(0xff);
      return false;
    }
    r.device.read(address - r.base, data);
    return true;
  }

  /** Route a write; returns false when nothing is mapped there (the write is dropped). */
  write(address: bigint, data: Uint8Array): boolean {
    const r = this.lookup(address);
    if (!r) return false;
    r.device.write(address - r.base, data);
    return true;
  }

  /** The mapped ranges, for diagnostics (`info mtree`-like listings). */
  list(): ReadonlyArray<{ base: bigint; length: bigint; name: string }> {
    return this.ranges.map(({ base, length, name }) => ({ base, length, name }));
  }
}
