// PCI configuration space in memory the vCPU threads share, so that they answer the guest's
// config reads through the legacy ports themselves. Linux reads the first 256 bytes of every
// function through 0xCF8/0xCFC even when ECAM is announced: a boot with a few virtio devices
// made about 1500 such port exits, each a round trip through the main thread.
//
// The host bridge keeps each plugged function's registers here (PciConfigSpace.moveTo) and
// the 0xCF8 address latch too, so there is one copy of everything and nothing to keep in
// step. What stays with the main thread: every config write (BAR moves, decode and MSI-X
// changes have effects), reads of bytes a device computes on demand (virtio's PCI_CFG
// window), extended registers, and string (rep) accesses.
import { PCI_CONFIG_SPACE_SIZE } from './config-space.js';

export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
export const PCI_CONFIG_DATA_PORT = 0xcfc;
/** Bus 0's device slots. */
export const PCI_SLOTS = 32;

const LATCH = 0;
/** Per slot: ABSENT, SERVED or FORWARDED. */
const FLAGS = 4;
/** Per slot: the [start, end) of the bytes whose reads go to the main thread (u16 each). */
const HOOKED = FLAGS + PCI_SLOTS;
const STORAGE = PCI_CONFIG_SPACE_SIZE;
const BYTES = STORAGE + PCI_SLOTS * PCI_CONFIG_SPACE_SIZE;

const ABSENT = 0;
const SERVED = 1;
const FORWARDED = 2;
/** Type-1 reads reach the first 256 bytes; longer offsets (AMD's extension bits) go to the bridge. */
const LEGACY_REACH = 256;

/** Where a type-1 config cycle goes. */
export interface ConfigTarget { bus: number; slot: number; fn: number; reg: number }

/**
 * The target of an access at `offset` (0-3) into the data ports, of `length` bytes, under
 * the 0xCF8 latch `address`; undefined when it makes no config cycle (enable bit clear, or
 * past the data window). Bits 27:24 extend the register number (AMD-style), so the legacy
 * ports reach extended config too.
 */
export function configTarget(address: number, offset: number, length: number): ConfigTarget | undefined {
  if (!(address & 0x80000000) || offset + length > 4) return undefined;
  const reg = ((address & 0xfc) | ((address >>> 16) & 0xf00)) + offset;
  return { bus: (address >>> 16) & 0xff, slot: (address >>> 11) & 31, fn: (address >>> 8) & 7, reg };
}

/** The bytes of a function's config space that the main thread must produce on each read. */
export interface ConfigReadHook { offset: number; length: number }

export class PciConfigMirror {
  readonly buffer: SharedArrayBuffer;
  private readonly words: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly hooked: DataView;

  /** A new mirror, or (on a vCPU thread) a view of the one the main thread made. */
  constructor(buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(BYTES);
    if (this.buffer.byteLength !== BYTES) throw new Error(`PCI config mirror: ${this.buffer.byteLength} bytes, expected ${BYTES}`);
    this.words = new Int32Array(this.buffer, 0, 1);
    this.bytes = new Uint8Array(this.buffer);
    this.hooked = new DataView(this.buffer, HOOKED, 4 * PCI_SLOTS);
  }

  /** The 0xCF8 latch: enable bit, bus, device, function and register of the next data access. */
  get address(): number { return Atomics.load(this.words, LATCH) >>> 0; }
  set address(value: number) { Atomics.store(this.words, LATCH, value | 0); }

  /** Where slot `slot`'s function keeps its registers. */
  slotStorage(slot: number): Uint8Array {
    return this.bytes.subarray(STORAGE + slot * PCI_CONFIG_SPACE_SIZE, STORAGE + (slot + 1) * PCI_CONFIG_SPACE_SIZE);
  }

  /**
   * A function now answers in `slot`. `hook`: the bytes its reads must be computed for on
   * the main thread, or 'all' for a function whose reads all have to go there.
   */
  plugged(slot: number, hook?: ConfigReadHook | 'all'): void {
    this.hooked.setUint16(slot * 4, hook && hook !== 'all' ? hook.offset : 0, true);
    this.hooked.setUint16(slot * 4 + 2, hook && hook !== 'all' ? hook.offset + hook.length : 0, true);
    Atomics.store(this.bytes, FLAGS + slot, hook === 'all' ? FORWARDED : SERVED);
  }

  /**
   * Answer a port access on the calling thread when that has no side effect: the latch (dword
   * accesses at 0xCF8) and reads of the data ports. False: the main thread's bridge must.
   */
  servePort(port: number, isRead: boolean, data: Uint8Array): boolean {
    if (port === PCI_CONFIG_ADDRESS_PORT) {
      if (data.length !== 4) return false;
      if (isRead) writeLe(data, this.address);
      else this.address = readLe(data);
      return true;
    }
    if (!isRead || port < PCI_CONFIG_DATA_PORT || port > PCI_CONFIG_DATA_PORT + 3) return false;
    const t = configTarget(this.address, port - PCI_CONFIG_DATA_PORT, data.length);
    if (!t) {
      data.fill(0xff);
      return true;
    }
    const flags = t.bus === 0 && t.fn === 0 ? Atomics.load(this.bytes, FLAGS + t.slot) : ABSENT;
    if (flags === ABSENT) {
      data.fill(0xff);
      return true;
    }
    if (flags === FORWARDED) return false;
    const { slot, reg } = t;
    // Past the first 256 bytes (the extension bits): the bridge's business.
    if (reg + data.length > LEGACY_REACH) return false;
    const start = this.hooked.getUint16(slot * 4, true);
    const end = this.hooked.getUint16(slot * 4 + 2, true);
    if (reg < end && reg + data.length > start) return false;
    data.set(this.slotStorage(slot).subarray(reg, reg + data.length));
    return true;
  }
}

export function readLe(data: Uint8Array): number {
  let v = 0;
  for (let i = data.length - 1; i >= 0; i--) v = v * 256 + data[i]!;
  return v >>> 0;
}

export function writeLe(data: Uint8Array, value: number): void {
  for (let i = 0; i < data.length; i++) data[i] = (value >>> (i * 8)) & 0xff;
}
