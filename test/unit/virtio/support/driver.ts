// A virtio-pci driver written for tests: it finds the device through config space (ECAM on
// the MMIO bus), walks the vendor capabilities to locate the structures, negotiates features,
// lays out split rings in a RegionGuestMemory and submits buffers exactly like a guest.
import { Bus } from '../../../../src/devices/bus.js';
import { RegionGuestMemory } from '../../../../src/memory/region-memory.js';
import { PciHostBridge } from '../../../../src/pci/host-bridge.js';
import type { InterruptSink } from '../../../../src/pci/interrupt.js';
import type { VirtioDevice } from '../../../../src/virtio/device.js';
import { type NotifyRegistrar, VirtioPciDevice } from '../../../../src/virtio/pci-transport.js';

export const ECAM_BASE = 0xe000_0000n;
export const MMIO32 = { base: 0xc000_0000n, size: 0x2000_0000n };
export const RAM_SIZE = 4 << 20;

export class RecordingSink implements InterruptSink {
  readonly msis: Array<{ address: bigint; data: number }> = [];
  readonly lines = new Map<number, boolean>();
  readonly lineChanges: Array<{ gsi: number; level: boolean }> = [];
  signalMsi(address: bigint, data: number): void { this.msis.push({ address, data }); }
  setIntx(gsi: number, level: boolean): void {
    this.lines.set(gsi, level);
    this.lineChanges.push({ gsi, level });
  }
}

export interface Machine {
  memory: RegionGuestMemory;
  mmio: Bus;
  pio: Bus;
  sink: RecordingSink;
  bridge: PciHostBridge;
  logs: string[];
}

export function makeMachine(ramSize = RAM_SIZE): Machine {
  const memory = RegionGuestMemory.ofSize(ramSize);
  const mmio = new Bus('mmio');
  const pio = new Bus('pio');
  const sink = new RecordingSink();
  const logs: string[] = [];
  const bridge = new PciHostBridge({
    mmioBus: mmio, pioBus: pio, interrupts: sink, ecam: { base: ECAM_BASE, size: 0x10_0000n }, mmio32: MMIO32,
    log: (l) => logs.push(l),
  });
  return { memory, mmio, pio, sink, bridge, logs };
}

export function plugVirtio(m: Machine, device: VirtioDevice, slot?: number, registrar?: NotifyRegistrar): { transport: VirtioPciDevice; slot: number } {
  const transport = new VirtioPciDevice(device, {
    memory: m.memory, interrupts: m.sink, log: (l) => m.logs.push(l), ...(registrar ? { notifyRegistrar: registrar } : {}),
  });
  const s = m.bridge.addDevice(transport, slot);
  return { transport, slot: s };
}

// ---- raw bus helpers ----
export function mmioRead(bus: Bus, address: bigint, size: number): bigint {
  const data = new Uint8Array(size);
  bus.read(address, data);
  let v = 0n;
  for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[i]!);
  return v;
}

export function mmioWrite(bus: Bus, address: bigint, size: number, value: bigint | number): void {
  const data = new Uint8Array(size);
  let v = BigInt(value);
  for (let i = 0; i < size; i++) {
    data[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  bus.write(address, data);
}

export function cfgRead(m: Machine, slot: number, offset: number, size: number): number {
  return Number(mmioRead(m.mmio, ECAM_BASE + (BigInt(slot) << 15n) + BigInt(offset), size));
}

export function cfgWrite(m: Machine, slot: number, offset: number, size: number, value: number): void {
  mmioWrite(m.mmio, ECAM_BASE + (BigInt(slot) << 15n) + BigInt(offset), size, value);
}

export const F_INDIRECT = 1n << 28n;
export const F_EVENT_IDX = 1n << 29n;
export const F_VERSION_1 = 1n << 32n;

export interface Buffer { address: bigint; length: number; writable: boolean }

export class DriverQueue {
  readonly desc: bigint;
  readonly avail: bigint;
  readonly used: bigint;
  private freeHead = 0;
  availIdx = 0;
  lastUsed = 0;

  constructor(readonly driver: VirtioDriver, readonly index: number, readonly size: number) {
    this.desc = driver.alloc(16 * size, 16);
    this.avail = driver.alloc(6 + 2 * size, 2);
    this.used = driver.alloc(6 + 8 * size, 4);
    // Like a guest driver, start from zeroed rings.
    for (const [at, len] of [[this.desc, 16 * size], [this.avail, 6 + 2 * size], [this.used, 6 + 8 * size]] as const) {
      driver.m.memory.slice(at, len).fill(0);
    }
  }

  private get mem(): RegionGuestMemory { return this.driver.m.memory; }

  writeDesc(table: bigint, i: number, b: Buffer, next: number | undefined, flags = 0): void {
    const at = table + 16n * BigInt(i);
    this.mem.writeU64(at, b.address);
    this.mem.writeU32(at + 8n, b.length);
    this.mem.writeU16(at + 12n, (b.writable ? 2 : 0) | (next !== undefined ? 1 : 0) | flags);
    this.mem.writeU16(at + 14n, next ?? 0);
  }

  /** Place a chain (direct, or through an indirect table) and publish it; returns the head. */
  add(buffers: Buffer[], opts: { indirect?: boolean; publish?: boolean } = {}): number {
    const head = this.freeHead % this.size;
    if (opts.indirect) {
      const table = this.driver.alloc(16 * buffers.length, 16);
      buffers.forEach((b, i) => this.writeDesc(table, i, b, i + 1 < buffers.length ? i + 1 : undefined));
      this.writeDesc(this.desc, head, { address: table, length: 16 * buffers.length, writable: false }, undefined, 4);
      this.freeHead++;
    } else {
      buffers.forEach((b, i) => {
        const at = (head + i) % this.size;
        this.writeDesc(this.desc, at, b, i + 1 < buffers.length ? (head + i + 1) % this.size : undefined);
      });
      this.freeHead += buffers.length;
    }
    this.mem.writeU16(this.avail + 4n + 2n * BigInt(this.availIdx % this.size), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    if (opts.publish !== false) this.publish();
    return head;
  }

  publish(): void {
    this.mem.writeU16(this.avail + 2n, this.availIdx);
  }

  setUsedEvent(value: number): void {
    this.mem.writeU16(this.avail + 4n + 2n * BigInt(this.size), value);
  }

  setNoInterrupt(on: boolean): void {
    this.mem.writeU16(this.avail, on ? 1 : 0);
  }

  get usedIdx(): number { return this.mem.readU16(this.used + 2n); }
  get availEvent(): number { return this.mem.readU16(this.used + 4n + 8n * BigInt(this.size)); }

  /** Used elements not yet consumed by this driver. */
  takeUsed(): Array<{ id: number; len: number }> {
    const out: Array<{ id: number; len: number }> = [];
    while (this.lastUsed !== this.usedIdx) {
      const at = this.used + 4n + 8n * BigInt(this.lastUsed % this.size);
      out.push({ id: this.mem.readU32(at), len: this.mem.readU32(at + 4n) });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  kick(): void {
    this.driver.kick(this.index);
  }

  /** Wait (bounded) until `count` used entries are available; returns them. */
  async waitUsed(count: number, timeoutMs = 2000): Promise<Array<{ id: number; len: number }>> {
    const got: Array<{ id: number; len: number }> = [];
    const deadline = Date.now() + timeoutMs;
    let spins = 0;
    for (;;) {
      got.push(...this.takeUsed());
      if (got.length >= count) {
        // The device decides on interrupts once per event-loop turn, after the used entries
        // are written: let that turn end, so callers can check the interrupts too.
        await new Promise((r) => setImmediate(r));
        return got;
      }
      if (Date.now() > deadline) throw new Error(`queue ${this.index}: ${got.length}/${count} used entries after ${timeoutMs} ms`);
      // Spin on the event loop first (completions usually land within a few turns), then sleep.
      await new Promise((r) => (spins++ < 100 ? setImmediate(r) : setTimeout(r, 1)));
    }
  }
}

export class VirtioDriver {
  bar4 = 0n;
  bar1 = 0n;
  common = 0n;
  isr = 0n;
  deviceCfg = 0n;
  notify = 0n;
  notifyMultiplier = 0;
  private heap: bigint;
  readonly queues: DriverQueue[] = [];

  constructor(readonly m: Machine, readonly slot: number, heapStart = 0x10000n) {
    this.heap = heapStart;
  }

  alloc(size: number, align: number): bigint {
    const a = BigInt(align);
    const at = (this.heap + a - 1n) & ~(a - 1n);
    this.heap = at + BigInt(size);
    if (this.heap > BigInt(this.m.memory.size)) throw new Error('test heap exhausted');
    return at;
  }

  /** The allocation point, to give memory back with release(). */
  mark(): bigint { return this.heap; }
  release(mark: bigint): void { this.heap = mark; }

  /** Bring up PCI: enable memory decoding and bus mastering, read the BARs, walk the caps. */
  probePci(): void {
    cfgWrite(this.m, this.slot, 0x04, 2, 0x6);
    const bar = (i: number): bigint => BigInt((cfgRead(this.m, this.slot, 0x10 + 4 * i, 4) & ~0xf) >>> 0);
    this.bar1 = bar(1);
    this.bar4 = bar(4) | (BigInt(cfgRead(this.m, this.slot, 0x24, 4)) << 32n);
    let cap = cfgRead(this.m, this.slot, 0x34, 1);
    for (let guard = 0; cap !== 0 && guard < 48; guard++) {
      if (cfgRead(this.m, this.slot, cap, 1) === 0x09 && cfgRead(this.m, this.slot, cap + 3, 1) !== 5) {
        const type = cfgRead(this.m, this.slot, cap + 3, 1);
        const barIndex = cfgRead(this.m, this.slot, cap + 4, 1);
        const offset = BigInt(cfgRead(this.m, this.slot, cap + 8, 4));
        if (barIndex !== 4) throw new Error(`virtio capability in BAR ${barIndex}`);
        const at = this.bar4 + offset;
        if (type === 1) this.common = at;
        else if (type === 2) {
          this.notify = at;
          this.notifyMultiplier = cfgRead(this.m, this.slot, cap + 16, 4);
        } else if (type === 3) this.isr = at;
        else if (type === 4) this.deviceCfg = at;
      }
      cap = cfgRead(this.m, this.slot, cap + 1, 1);
    }
  }

  c8(off: number): number { return Number(mmioRead(this.m.mmio, this.common + BigInt(off), 1)); }
  c16(off: number): number { return Number(mmioRead(this.m.mmio, this.common + BigInt(off), 2)); }
  c32(off: number): number { return Number(mmioRead(this.m.mmio, this.common + BigInt(off), 4)); }
  w8(off: number, v: number): void { mmioWrite(this.m.mmio, this.common + BigInt(off), 1, v); }
  w16(off: number, v: number): void { mmioWrite(this.m.mmio, this.common + BigInt(off), 2, v); }
  w32(off: number, v: number): void { mmioWrite(this.m.mmio, this.common + BigInt(off), 4, v); }
  w64(off: number, v: bigint): void {
    this.w32(off, Number(v & 0xffffffffn));
    this.w32(off + 4, Number(v >> 32n));
  }

  get status(): number { return this.c8(0x14); }
  set status(v: number) { this.w8(0x14, v); }

  deviceFeatures(): bigint {
    this.w32(0x00, 0);
    const lo = BigInt(this.c32(0x04) >>> 0);
    this.w32(0x00, 1);
    return lo | (BigInt(this.c32(0x04) >>> 0) << 32n);
  }

  writeDriverFeatures(f: bigint): void {
    this.w32(0x08, 0);
    this.w32(0x0c, Number(f & 0xffffffffn));
    this.w32(0x08, 1);
    this.w32(0x0c, Number(f >> 32n));
  }

  /** Reset, ACK, DRIVER, features, FEATURES_OK; returns whether the device accepted them. */
  negotiate(wanted: bigint): boolean {
    this.status = 0;
    this.status = 1;
    this.status = 1 | 2;
    this.writeDriverFeatures(this.deviceFeatures() & wanted);
    this.status = 1 | 2 | 8;
    return (this.status & 8) !== 0;
  }

  setupQueue(index: number, size?: number, vector?: number): DriverQueue {
    this.w16(0x16, index);
    const max = this.c16(0x18);
    const qsize = size ?? max;
    this.w16(0x18, qsize);
    const q = new DriverQueue(this, index, qsize);
    this.w64(0x20, q.desc);
    this.w64(0x28, q.avail);
    this.w64(0x30, q.used);
    if (vector !== undefined) this.w16(0x1a, vector);
    this.w16(0x1c, 1);
    this.queues[index] = q;
    return q;
  }

  driverOk(): void {
    this.status = this.status | 4;
  }

  /** Program MSI-X vector `v` with a recognisable address/data, unmask it and enable MSI-X. */
  enableMsix(vectors: number): void {
    for (let v = 0; v < vectors; v++) {
      const at = this.bar1 + BigInt(16 * v);
      mmioWrite(this.m.mmio, at, 4, 0xfee00000 + v * 0x1000);
      mmioWrite(this.m.mmio, at + 4n, 4, 0);
      mmioWrite(this.m.mmio, at + 8n, 4, 0x40 + v);
      mmioWrite(this.m.mmio, at + 12n, 4, 0);
    }
    const cap = this.findCap(0x11);
    cfgWrite(this.m, this.slot, cap + 2, 2, 0x8000);
  }

  findCap(id: number): number {
    let cap = cfgRead(this.m, this.slot, 0x34, 1);
    for (let guard = 0; cap !== 0 && guard < 48; guard++) {
      if (cfgRead(this.m, this.slot, cap, 1) === id) return cap;
      cap = cfgRead(this.m, this.slot, cap + 1, 1);
    }
    throw new Error(`capability ${id} not found`);
  }

  kick(index: number): void {
    mmioWrite(this.m.mmio, this.notify + BigInt(index * this.notifyMultiplier), 2, index);
  }

  readIsr(): number {
    return Number(mmioRead(this.m.mmio, this.isr, 1));
  }

  cfg(off: number, size: number): bigint {
    return mmioRead(this.m.mmio, this.deviceCfg + BigInt(off), size);
  }

  /** Full bring-up: PCI probe, negotiate, every queue set up, DRIVER_OK. */
  static async start(m: Machine, slot: number, opts: { features?: bigint; msix?: boolean; queueSize?: number } = {}): Promise<VirtioDriver> {
    const d = new VirtioDriver(m, slot);
    d.probePci();
    if (!d.negotiate(opts.features ?? (F_VERSION_1 | F_INDIRECT | F_EVENT_IDX | 0xffffffn))) throw new Error('FEATURES_OK refused');
    const n = d.c16(0x12);
    if (opts.msix) d.enableMsix(n + 1);
    if (opts.msix) d.w16(0x10, 0);
    for (let i = 0; i < n; i++) d.setupQueue(i, opts.queueSize, opts.msix ? i + 1 : undefined);
    d.driverOk();
    return d;
  }
}

export function fill(memory: RegionGuestMemory, address: bigint, bytes: Uint8Array | number[]): void {
  memory.write(address, Uint8Array.from(bytes));
}

export async function settle(ms = 5): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}
