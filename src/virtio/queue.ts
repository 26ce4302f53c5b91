// A split virtqueue (virtio 1.x, section 2.7) seen from the device side, with no device
// logic: walk descriptor chains (direct and indirect), hand them out, put used elements
// back, and decide whether the driver wants an interrupt (EVENT_IDX or NO_INTERRUPT).
//
// Everything read from the rings is driver-controlled and may be hostile. Every address
// goes through GuestMemory's bounds checks, every chain is bounded (it cannot loop or grow
// past the queue size or the indirect-table limit) and every length is checked for 32-bit
// overflow. A protocol violation throws VirtqueueError naming the queue and guest address;
// the transport then marks the device DEVICE_NEEDS_RESET instead of crashing or hanging.
import type { GuestMemory } from '../memory/guest-memory.js';
import { hex } from '../pci/interrupt.js';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** The most descriptors one indirect table may hold (the spec leaves it to the device). */
export const MAX_INDIRECT_DESCRIPTORS = 1024;
export const MAX_QUEUE_SIZE = 32768;

export class VirtqueueError extends Error {
  constructor(
    readonly queueName: string,
    readonly guestAddress: bigint,
    detail: string,
  ) {
    super(`${queueName}: ${detail} at guest address ${hex(guestAddress)}`);
    this.name = 'VirtqueueError';
  }
}

/** One guest buffer of a chain. `address` and `length` are already checked against memory. */
export interface Descriptor {
  /** Guest-physical; a number, as every address inside guest memory is below 2^53. */
  address: number;
  length: number;
  writable: boolean;
  /**
   * The buffer's bytes (a view aliasing guest memory), resolved once while the chain is
   * walked so the device's copies and I/O vectors need no second address lookup.
   */
  bytes?: Uint8Array;
}

const EMPTY = new Uint8Array(0);

// A full memory barrier. The guest reads and writes the rings from other CPUs; the device's
// store of used.idx (or avail_event) must be visible before it loads used_event (or
// avail.idx), or both sides can decide the other needs no notification. x86 reorders exactly
// that (a store then a load); an atomic read-modify-write is a locked instruction, which
// orders every earlier store before every later load.
const fenceCell = new Int32Array(new SharedArrayBuffer(4));
export function fence(): void {
  Atomics.add(fenceCell, 0, 1);
}

/** DataViews over a queue's three areas, cached while its layout stays the same. */
interface RingViews {
  desc: DataView;
  avail: DataView;
  used: DataView;
}

/** The guest address of descriptor `index` of the table at `table`, for error reports. */
function descriptorAddress(table: number, index: number): bigint {
  return BigInt(table + 16 * index);
}

/** A 64-bit guest address from its halves, for error reports. */
function joinHalves(high: number, low: number): bigint {
  return (BigInt(high) << 32n) | BigInt(low);
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export interface DescriptorChain {
  /** The head index to return in the used ring. */
  head: number;
  /** Device-readable buffers, in order. */
  readable: Descriptor[];
  /** Device-writable buffers, in order (the spec puts them after the readable ones). */
  writable: Descriptor[];
  readableBytes: number;
  writableBytes: number;
}

export interface QueueState {
  size: number;
  ready: boolean;
  descTable: string;
  availRing: string;
  usedRing: string;
  nextAvail: number;
  nextUsed: number;
  signalledUsed: number | null;
  msixVector: number;
}

export class Virtqueue {
  ready = false;
  msixVector = 0xffff;
  /** Negotiated features that change ring handling. */
  eventIdx = false;
  indirect = false;

  private nextAvail = 0;
  private nextUsed = 0;
  private views: RingViews | undefined;
  /** The device asked the driver not to notify (it polls the ring itself for now). */
  private notifySuppressed = false;
  /** The used index at the last interrupt we sent (EVENT_IDX bookkeeping); null = unknown. */
  private signalledUsed: number | null = null;

  constructor(
    private readonly memory: GuestMemory,
    readonly name: string,
    readonly maxSize: number,
  ) {
    this.queueSize = maxSize;
  }

  // The layout, set by the driver through the transport before enabling. Each change drops
  // the ring views, so that rings() is a field read: it runs several times per request, and
  // comparing the three BigInt addresses each time cost more than the rest of it.
  private queueSize: number;
  private descAddress = 0n;
  private availAddress = 0n;
  private usedAddress = 0n;
  get size(): number { return this.queueSize; }
  set size(value: number) { this.queueSize = value; this.views = undefined; }
  get descTable(): bigint { return this.descAddress; }
  set descTable(value: bigint) { this.descAddress = value; this.views = undefined; }
  get availRing(): bigint { return this.availAddress; }
  set availRing(value: bigint) { this.availAddress = value; this.views = undefined; }
  get usedRing(): bigint { return this.usedAddress; }
  set usedRing(value: bigint) { this.usedAddress = value; this.views = undefined; }

  reset(): void {
    this.size = this.maxSize;
    this.ready = false;
    this.descTable = 0n;
    this.availRing = 0n;
    this.usedRing = 0n;
    this.msixVector = 0xffff;
    this.nextAvail = 0;
    this.nextUsed = 0;
    this.signalledUsed = null;
    this.views = undefined;
    this.notifySuppressed = false;
  }

  /**
   * Ask the driver to notify on its next buffer (true), or not to notify at all (false)
   * while the device will look at the ring anyway (it has requests in flight whose
   * completions make it poll). With EVENT_IDX, avail_event is set one behind what the device
   * took, which vring_need_event never fires for; without it, the used ring's NO_NOTIFY flag.
   * Enabling is followed by a barrier: re-check pendingCount() afterwards, since a buffer
   * added before the driver saw the change came without a notification.
   */
  setNotification(enabled: boolean): void {
    const used = this.rings().used;
    this.notifySuppressed = !enabled;
    if (this.eventIdx) this.writeAvailEvent(used);
    else used.setUint16(0, enabled ? 0 : VIRTQ_USED_F_NO_NOTIFY, true);
    if (enabled) fence();
  }

  /**
   * avail_event (EVENT_IDX): ask to be notified when the driver adds anything past what we
   * took, or, while notifications are suppressed, keep it one behind.
   */
  private writeAvailEvent(used: DataView): void {
    used.setUint16(4 + 8 * this.size, this.notifySuppressed ? (this.nextAvail - 1) & 0xffff : this.nextAvail, true);
  }

  /** Whether the driver was asked not to notify (see setNotification). */
  get notificationsSuppressed(): boolean {
    return this.notifySuppressed;
  }

  /**
   * The rings as DataViews: one bounds check when the layout is set instead of one per
   * field access (and no BigInt arithmetic per access). Throws GuestMemoryError when an
   * area is outside guest memory (validate() refuses such a layout first).
   */
  private rings(): RingViews {
    return this.views ?? this.makeViews();
  }

  private makeViews(): RingViews {
    const size = this.size;
    const views: RingViews = {
      desc: viewOf(this.memory.slice(this.descTable, 16 * size)),
      avail: viewOf(this.memory.slice(this.availRing, 6 + 2 * size)),
      used: viewOf(this.memory.slice(this.usedRing, 6 + 8 * size)),
    };
    this.views = views;
    return views;
  }

  /**
   * Check the layout the driver programmed when it enables the queue: a power-of-two size
   * no larger than the maximum, rings aligned and wholly inside guest memory.
   */
  validate(): void {
    const size = this.size;
    if (size === 0 || size > this.maxSize || (size & (size - 1)) !== 0) {
      throw new VirtqueueError(this.name, this.descTable, `queue size ${size} is not a power of two in 1..${this.maxSize}`);
    }
    const areas: Array<[string, bigint, number, bigint]> = [
      ['descriptor table', this.descTable, 16 * size, 16n],
      ['available ring', this.availRing, 6 + 2 * size, 2n],
      ['used ring', this.usedRing, 6 + 8 * size, 4n],
    ];
    for (const [what, address, length, align] of areas) {
      if (address % align !== 0n) throw new VirtqueueError(this.name, address, `${what} is not ${align}-byte aligned`);
      if (!this.memory.contains(address, length)) {
        throw new VirtqueueError(this.name, address, `${what} (${length} bytes) is outside guest memory`);
      }
    }
  }

  private availIdx(): number {
    return this.rings().avail.getUint16(2, true);
  }

  /** Chains the driver has made available that we have not taken yet. */
  pendingCount(): number {
    if (!this.ready) return 0;
    const pending = (this.availIdx() - this.nextAvail) & 0xffff;
    if (pending > this.size) {
      throw new VirtqueueError(this.name, this.availRing + 2n,
        `available index moved ${pending} entries past the ${this.size} the queue holds`);
    }
    return pending;
  }

  /** Take the next available chain, or null when the ring is empty. */
  pop(): DescriptorChain | null {
    if (this.pendingCount() === 0) return null;
    const rings = this.rings();
    const slot = this.nextAvail % this.size;
    const head = rings.avail.getUint16(4 + 2 * slot, true);
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    if (this.eventIdx) {
      this.writeAvailEvent(rings.used);
      if (!this.notifySuppressed) fence();
    }
    if (head >= this.size) {
      throw new VirtqueueError(this.name, this.availRing + 4n + 2n * BigInt(slot), `head index ${head} is beyond queue size ${this.size}`);
    }
    return this.walk(head);
  }

  /** Put the last popped chain back (the device cannot handle it yet, e.g. no room downstream). */
  undoPop(): void {
    this.nextAvail = (this.nextAvail - 1) & 0xffff;
    if (this.eventIdx) this.writeAvailEvent(this.rings().used);
  }

  /** Walk the chain starting at descriptor `head` (used to restore requests saved in flight). */
  walk(head: number): DescriptorChain {
    if (head >= this.size) throw new VirtqueueError(this.name, this.descTable, `head index ${head} is beyond queue size ${this.size}`);
    const chain: DescriptorChain = { head, readable: [], writable: [], readableBytes: 0, writableBytes: 0 };
    // (Numbers: the descriptor table and every indirect table lie inside guest memory.)
    let table = Number(this.descTable);
    let view = this.rings().desc;
    let tableSize = this.size;
    let index = head;
    let budget = this.size; // descriptors this table may still contribute: a loop runs out of it
    let inIndirect = false;
    // Addresses are read as two 32-bit halves: a 1 MiB request has 256 buffers, and a BigInt
    // per buffer (with the BigInt comparisons of the lookup) was a large part of its cost.
    for (;;) {
      const at = 16 * index;
      if (budget-- <= 0) throw new VirtqueueError(this.name, descriptorAddress(table, index), 'descriptor chain loops or is longer than its table');
      const low = view.getUint32(at, true);
      const high = view.getUint32(at + 4, true);
      const length = view.getUint32(at + 8, true);
      const flags = view.getUint16(at + 12, true);
      const next = view.getUint16(at + 14, true);
      // Past 2^53 the number is inexact, but stays past 2^53, where nothing is inside guest
      // memory: such an address is only ever reported, from its halves.
      const address = high * 0x1_0000_0000 + low;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) throw new VirtqueueError(this.name, descriptorAddress(table, index), 'indirect descriptor without VIRTIO_F_RING_INDIRECT_DESC');
        if (inIndirect) throw new VirtqueueError(this.name, descriptorAddress(table, index), 'indirect descriptor inside an indirect table');
        if (flags & VIRTQ_DESC_F_NEXT) throw new VirtqueueError(this.name, descriptorAddress(table, index), 'indirect descriptor with NEXT set');
        if (length === 0 || length % 16 !== 0 || length / 16 > MAX_INDIRECT_DESCRIPTORS) {
          throw new VirtqueueError(this.name, descriptorAddress(table, index), `indirect table length ${length} is not a multiple of 16 in 16..${16 * MAX_INDIRECT_DESCRIPTORS}`);
        }
        const bytes = this.memory.viewInside(address, length);
        if (!bytes) throw new VirtqueueError(this.name, joinHalves(high, low), `indirect table (${length} bytes) is outside guest memory`);
        inIndirect = true;
        table = address;
        view = viewOf(bytes);
        tableSize = length / 16;
        budget = tableSize;
        index = 0;
        continue;
      }
      const bytes = length > 0 ? this.memory.viewInside(address, length) : EMPTY;
      if (!bytes) throw new VirtqueueError(this.name, joinHalves(high, low), `buffer of ${length} bytes is outside guest memory`);
      const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
      if (writable) {
        chain.writable.push({ address, length, writable, bytes });
        chain.writableBytes += length;
      } else {
        if (chain.writable.length > 0) throw new VirtqueueError(this.name, descriptorAddress(table, index), 'device-readable descriptor after a writable one');
        chain.readable.push({ address, length, writable, bytes });
        chain.readableBytes += length;
      }
      if (chain.readableBytes + chain.writableBytes > 0xffffffff) {
        throw new VirtqueueError(this.name, descriptorAddress(table, index), 'chain buffers add up to more than 4 GiB');
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return chain;
      if (next >= tableSize) throw new VirtqueueError(this.name, descriptorAddress(table, index), `next index ${next} is beyond table size ${tableSize}`);
      index = next;
    }
  }

  /** Return a chain to the driver with `written` bytes written into its writable buffers. */
  pushUsed(head: number, written: number): void {
    const used = this.rings().used;
    const slot = 4 + 8 * (this.nextUsed % this.size);
    used.setUint32(slot, head, true);
    used.setUint32(slot + 4, written >>> 0, true);
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    used.setUint16(2, this.nextUsed, true);
  }

  /**
   * Whether the driver wants an interrupt for the used entries added since the last one.
   * Call after pushUsed(); it records the interrupt as sent when it answers true.
   */
  needsInterrupt(): boolean {
    const avail = this.rings().avail;
    // used.idx is stored; the guest's used_event must be read after that store is visible.
    fence();
    if (this.eventIdx) {
      const usedEvent = avail.getUint16(4 + 2 * this.size, true);
      const old = this.signalledUsed;
      const now = this.nextUsed;
      this.signalledUsed = now;
      if (old === null) return true;
      // vring_need_event: fire if used_event lies in (old, now].
      return ((now - usedEvent - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    return (avail.getUint16(0, true) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  saveState(): QueueState {
    return {
      size: this.size, ready: this.ready, descTable: hex(this.descTable), availRing: hex(this.availRing),
      usedRing: hex(this.usedRing), nextAvail: this.nextAvail, nextUsed: this.nextUsed,
      signalledUsed: this.signalledUsed, msixVector: this.msixVector,
    };
  }

  loadState(state: QueueState): void {
    this.size = state.size;
    this.ready = state.ready;
    this.descTable = BigInt(state.descTable);
    this.availRing = BigInt(state.availRing);
    this.usedRing = BigInt(state.usedRing);
    this.nextAvail = state.nextAvail;
    this.nextUsed = state.nextUsed;
    this.signalledUsed = state.signalledUsed;
    this.msixVector = state.msixVector;
    this.views = undefined;
    this.notifySuppressed = false;
    if (this.ready) this.validate();
  }
}

/** Copy up to `into.length` bytes out of `buffers`, skipping the first `skip` bytes. */
export function gather(memory: GuestMemory, buffers: readonly Descriptor[], into: Uint8Array, skip = 0): number {
  let done = 0;
  for (const d of buffers) {
    if (done >= into.length) break;
    if (skip >= d.length) {
      skip -= d.length;
      continue;
    }
    const n = Math.min(d.length - skip, into.length - done);
    into.set(d.bytes ? d.bytes.subarray(skip, skip + n) : memory.slice(BigInt(d.address + skip), n), done);
    done += n;
    skip = 0;
  }
  return done;
}

/** Copy `data` into `buffers` starting `skip` bytes in; returns bytes written. */
export function scatter(memory: GuestMemory, buffers: readonly Descriptor[], data: Uint8Array, skip = 0): number {
  let done = 0;
  for (const d of buffers) {
    if (done >= data.length) break;
    if (skip >= d.length) {
      skip -= d.length;
      continue;
    }
    const n = Math.min(d.length - skip, data.length - done);
    if (d.bytes) d.bytes.set(data.subarray(done, done + n), skip);
    else memory.write(BigInt(d.address + skip), data.subarray(done, done + n));
    done += n;
    skip = 0;
  }
  return done;
}

/**
 * Write `value` as the last byte of the buffers' concatenation (a request's status byte):
 * what scatter() does at offset total-1, without its copies. False when the buffers are empty.
 */
export function setLastByte(memory: GuestMemory, buffers: readonly Descriptor[], value: number): boolean {
  for (let i = buffers.length - 1; i >= 0; i--) {
    const d = buffers[i]!;
    if (d.length === 0) continue;
    if (d.bytes) d.bytes[d.length - 1] = value;
    else memory.write(BigInt(d.address + d.length - 1), Uint8Array.of(value));
    return true;
  }
  return false;
}

/**
 * Views (aliasing guest memory) of the byte range [start, start+length) of the buffers'
 * concatenation: the zero-copy iovecs for block I/O.
 */
export function sliceBuffers(memory: GuestMemory, buffers: readonly Descriptor[], start: number, length: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = start;
  let left = length;
  for (const d of buffers) {
    if (left <= 0) break;
    if (skip >= d.length) {
      skip -= d.length;
      continue;
    }
    const n = Math.min(d.length - skip, left);
    if (n > 0) out.push(d.bytes ? (skip === 0 && n === d.length ? d.bytes : d.bytes.subarray(skip, skip + n)) : memory.slice(BigInt(d.address + skip), n));
    left -= n;
    skip = 0;
  }
  return out;
}
