// The virtio-pci modern transport (virtio 1.x, section 4.1): a PCI function whose BAR 4
// holds the common config, ISR, device config and notify structures, announced through
// vendor-specific capabilities, with MSI-X vectors in BAR 1 and INTx (+ ISR) as fallback.
//
// BAR 4 layout: 0x0000 common config, 0x1000 ISR, 0x2000 device config, 0x3000 notify
// (queue N's doorbell at 0x3000 + 4*N, notify_off_multiplier 4), so each queue has its own
// address and the VMM can hang an ioeventfd with datamatch N on it.
import type { BusDevice } from '../devices/bus.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import {
  PCI_CAP_ID_EXP, PCI_CAP_ID_VNDR, PciConfigSpace,
} from '../pci/config-space.js';
import type { PciDevice, PciSlotContext } from '../pci/device.js';
import { hex, type InterruptSink, type LogLine, logToStderr } from '../pci/interrupt.js';
import { Msix, MSIX_NO_VECTOR, type MsixState } from '../pci/msix.js';
import {
  bit, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1, type VirtioDevice, type VirtioDeviceContext,
} from './device.js';
import { type QueueState, Virtqueue, VirtqueueError } from './queue.js';

export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 0x40;
export const STATUS_FAILED = 0x80;

export const VIRTIO_PCI_CAP_COMMON_CFG = 1;
export const VIRTIO_PCI_CAP_NOTIFY_CFG = 2;
export const VIRTIO_PCI_CAP_ISR_CFG = 3;
export const VIRTIO_PCI_CAP_DEVICE_CFG = 4;
export const VIRTIO_PCI_CAP_PCI_CFG = 5;

export const MSIX_BAR = 1;
export const VIRTIO_BAR = 4;
export const COMMON_OFFSET = 0x0000;
export const COMMON_SIZE = 0x38;
export const ISR_OFFSET = 0x1000;
export const DEVICE_CONFIG_OFFSET = 0x2000;
export const NOTIFY_OFFSET = 0x3000;
export const NOTIFY_OFF_MULTIPLIER = 4;
const VIRTIO_BAR_SIZE = 0x4000n;
const MSIX_BAR_SIZE = 0x1000n;
const MSIX_PBA_OFFSET = 0x800;

/** Where queue `index`'s doorbell is, for an ioeventfd (write of `datamatch`, `length` bytes). */
export interface NotifyDoorbell { address: bigint; length: number; datamatch: number; queue: number }

/** The VMM's ioeventfd plumbing; without it, notify writes arrive as ordinary MMIO exits. */
export interface NotifyRegistrar {
  register(doorbell: NotifyDoorbell, onNotify: () => void): void;
  unregister(doorbell: NotifyDoorbell): void;
}

export interface VirtioPciOptions {
  memory: GuestMemory;
  interrupts: InterruptSink;
  notifyRegistrar?: NotifyRegistrar;
  log?: LogLine;
}

export interface VirtioPciState {
  version: 1;
  status: number;
  deviceFeatureSelect: number;
  driverFeatureSelect: number;
  driverFeatures: string;
  queueSelect: number;
  configVector: number;
  configGeneration: number;
  isr: number;
  queues: QueueState[];
  msix: MsixState;
  device: unknown;
}

export class VirtioPciDevice implements PciDevice {
  readonly config: PciConfigSpace;
  readonly queues: Virtqueue[];
  readonly msix: Msix;
  private readonly log: LogLine;
  private readonly offeredFeatures: bigint;
  private status = 0;
  private deviceFeatureSelect = 0;
  private driverFeatureSelect = 0;
  private driverFeatures = 0n;
  private queueSelect = 0;
  private configVector = MSIX_NO_VECTOR;
  private configGeneration = 0;
  private isr = 0;
  private slot: PciSlotContext | undefined;
  private context: (VirtioDeviceContext & { live: boolean }) | undefined;
  private doorbells: NotifyDoorbell[] = [];

  constructor(readonly device: VirtioDevice, private readonly options: VirtioPciOptions) {
    this.log = options.log ?? logToStderr;
    this.offeredFeatures = device.features | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_INDIRECT_DESC)
      | bit(VIRTIO_F_RING_EVENT_IDX);
    this.queues = device.queueSizes.map((size, i) => new Virtqueue(options.memory, `${device.name} queue ${i}`, size));
    this.config = new PciConfigSpace({
      vendorId: 0x1af4,
      deviceId: 0x1040 + device.deviceType,
      revision: 1,
      classCode: device.pciClass,
      subsystemVendorId: 0x1af4,
      subsystemId: 0x1100,
      interruptPin: 1,
    });
    this.config.defineBar(MSIX_BAR, { kind: 'mem32', size: MSIX_BAR_SIZE });
    this.config.defineBar(VIRTIO_BAR, { kind: 'mem64', size: VIRTIO_BAR_SIZE, prefetchable: true });
    if ((this.queues.length + 1) * 16 > MSIX_PBA_OFFSET) {
      throw new Error(`${device.name}: ${this.queues.length} queues need more MSI-X vectors than the table holds`);
    }
    this.msix = new Msix(this.config, {
      vectors: this.queues.length + 1, bar: MSIX_BAR, tableOffset: 0, pbaOffset: MSIX_PBA_OFFSET,
    }, options.interrupts);
    this.addExpressCapability();
    this.addVirtioCapability(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, COMMON_SIZE);
    this.addVirtioCapability(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 4);
    this.addVirtioCapability(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CONFIG_OFFSET, Math.max(device.configSize, 4));
    this.addVirtioCapability(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, this.queues.length * NOTIFY_OFF_MULTIPLIER,
      NOTIFY_OFF_MULTIPLIER);
    // The PCI configuration access window: bar/offset/length chosen by the driver, data at +16.
    this.pciCfgCap = this.addVirtioCapability(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0);
    this.config.setU8(this.pciCfgCap + 4, 0);
    this.config.setWritable(this.pciCfgCap + 4, 1, 0xff);
    this.config.setWritable(this.pciCfgCap + 8, 8, 0xffffffffffffffffn);
    this.config.setWritable(this.pciCfgCap + 16, 4, 0xffffffff);
    this.configReadHook = { offset: this.pciCfgCap + 16, length: 4 };
  }

  private readonly pciCfgCap: number;

  /** Only the PCI_CFG window's data bytes are computed on read (configWillRead). */
  readonly configReadHook: { offset: number; length: number };

  /** Whether config bytes [offset, offset+length) touch the PCI_CFG window's data. */
  private touchesPciCfgData(offset: number, length: number): boolean {
    const { offset: data, length: window } = this.configReadHook;
    return offset < data + window && offset + length > data;
  }

  /** The BAR access the PCI_CFG window describes, if it is a valid one. */
  private pciCfgAccess(): { region: BusDevice; offset: bigint; length: number } | undefined {
    const cap = this.pciCfgCap;
    const bar = this.config.getU8(cap + 4);
    const offset = this.config.getU32(cap + 8);
    const length = this.config.getU32(cap + 12);
    const region = this.barRegion(bar);
    const size = this.config.bars[bar]?.size ?? 0n;
    if (!region || ![1, 2, 4].includes(length) || offset % length !== 0 || BigInt(offset + length) > size) return undefined;
    return { region, offset: BigInt(offset), length };
  }

  configWillRead(offset: number, length: number): void {
    if (!this.touchesPciCfgData(offset, length)) return;
    const { offset: data, length: window } = this.configReadHook;
    const access = this.pciCfgAccess();
    if (!access) return;
    const bytes = new Uint8Array(access.length);
    access.region.read(access.offset, bytes);
    this.config.bytes.fill(0, data, data + window);
    this.config.bytes.set(bytes, data);
  }

  get name(): string { return this.device.name; }

  /** A Root Complex Integrated Endpoint: sits on bus 0 with no link to describe. */
  private addExpressCapability(): void {
    const body = new Uint8Array(0x3c - 2);
    const dv = new DataView(body.buffer);
    dv.setUint16(0, 0x2 | (0x9 << 4), true); // capability version 2, device/port type RCiEP
    dv.setUint32(2, 0x1 | (1 << 15), true); // device capabilities: max payload 256, role-based error reporting
    dv.setUint16(6, 0x1 << 5 | 0x2 << 12, true); // device control: payload 256, read request 512
    const cap = this.config.addCapability(PCI_CAP_ID_EXP, body);
    // The OS tunes payload sizes and error reporting through Device Control (and Control 2).
    this.config.setWritable(cap + 0x08, 2, 0x7fff);
    this.config.setWritable(cap + 0x28, 2, 0xffff);
  }

  private addVirtioCapability(type: number, offset: number, length: number, extra?: number): number {
    const body = new Uint8Array(extra === undefined ? 14 : 18);
    const dv = new DataView(body.buffer);
    body[0] = body.length + 2; // cap_len
    body[1] = type;
    body[2] = VIRTIO_BAR;
    dv.setUint32(6, offset, true);
    dv.setUint32(10, length, true);
    if (extra !== undefined) dv.setUint32(14, extra, true);
    return this.config.addCapability(PCI_CAP_ID_VNDR, body);
  }

  attached(context: PciSlotContext): void {
    this.slot = context;
  }

  configWritten(offset: number, length: number): void {
    this.msix.configWritten(offset, length);
    if (this.touchesPciCfgData(offset, length)) {
      const access = this.pciCfgAccess();
      const data = this.configReadHook.offset;
      if (access) access.region.write(access.offset, this.config.bytes.slice(data, data + access.length));
    }
  }

  barRegion(index: number): BusDevice | undefined {
    if (index === VIRTIO_BAR) return this.virtioRegion;
    if (index === MSIX_BAR) return this.msixRegion;
    return undefined;
  }

  barMapped(index: number, address: bigint | undefined): void {
    const registrar = this.options.notifyRegistrar;
    if (index !== VIRTIO_BAR || !registrar) return;
    for (const d of this.doorbells) registrar.unregister(d);
    this.doorbells = [];
    if (address === undefined) return;
    this.queues.forEach((_, queue) => {
      const doorbell: NotifyDoorbell = {
        address: address + BigInt(NOTIFY_OFFSET + queue * NOTIFY_OFF_MULTIPLIER), length: 2, datamatch: queue, queue,
      };
      registrar.register(doorbell, () => this.notifyQueue(queue));
      this.doorbells.push(doorbell);
    });
  }

  /** The doorbells currently registered (empty until the guest enables memory decoding). */
  get notifyDoorbells(): readonly NotifyDoorbell[] { return this.doorbells; }

  get deviceStatus(): number { return this.status; }
  get negotiatedFeatures(): bigint { return this.driverFeatures; }

  // ---- interrupts ----

  private raise(vector: number, isrBit: number): void {
    if (this.msix.enabled) {
      if (vector !== MSIX_NO_VECTOR) this.msix.notify(vector);
      return;
    }
    this.isr |= isrBit;
    this.slot?.setIntx(true);
  }

  private signalConfig(): void {
    this.raise(this.configVector, 2);
  }

  // ---- device lifecycle ----

  /** Machine reset, called by the host bridge (which restores config space itself). */
  reset(): void {
    this.resetVirtio();
    this.msix.reset();
  }

  /** Virtio device reset (the driver wrote 0 to device_status). */
  private resetVirtio(): void {
    if (this.interruptFlush) clearImmediate(this.interruptFlush);
    this.interruptFlush = undefined;
    this.interruptPending = [];
    if (this.context) this.context.live = false;
    this.context = undefined;
    this.device.reset();
    for (const q of this.queues) q.reset();
    this.status = 0;
    this.driverFeatures = 0n;
    this.deviceFeatureSelect = 0;
    this.driverFeatureSelect = 0;
    this.queueSelect = 0;
    this.configVector = MSIX_NO_VECTOR;
    this.isr = 0;
    this.slot?.setIntx(false);
  }

  /** Put the device in DEVICE_NEEDS_RESET after a driver error and tell the driver. */
  fail(error: Error): void {
    this.log(`${this.device.name}: ${error.message}; device needs reset`);
    if (this.context) this.context.live = false;
    if (this.status & STATUS_DEVICE_NEEDS_RESET) return;
    this.status |= STATUS_DEVICE_NEEDS_RESET;
    if (this.status & STATUS_DRIVER_OK) this.signalConfig();
  }

  private writeStatus(value: number): void {
    if (value === 0) {
      this.resetVirtio();
      return;
    }
    const was = this.status;
    let next = value & 0xff;
    if ((next & STATUS_FEATURES_OK) && !(was & STATUS_FEATURES_OK)) {
      const unknown = this.driverFeatures & ~this.offeredFeatures;
      if (unknown !== 0n || !(this.driverFeatures & bit(VIRTIO_F_VERSION_1))) {
        this.log(`${this.device.name}: driver features ${hex(this.driverFeatures)} rejected `
          + (unknown !== 0n ? `(not offered: ${hex(unknown)})` : '(VIRTIO_F_VERSION_1 missing)'));
        next &= ~STATUS_FEATURES_OK;
      } else {
        for (const q of this.queues) {
          q.eventIdx = (this.driverFeatures & bit(VIRTIO_F_RING_EVENT_IDX)) !== 0n;
          q.indirect = (this.driverFeatures & bit(VIRTIO_F_RING_INDIRECT_DESC)) !== 0n;
        }
      }
    }
    // The device owns NEEDS_RESET; the driver cannot clear it except by a reset.
    next = (next & ~STATUS_DEVICE_NEEDS_RESET) | (was & STATUS_DEVICE_NEEDS_RESET);
    this.status = next;
    if ((next & STATUS_DRIVER_OK) && !(was & STATUS_DRIVER_OK) && !(next & STATUS_DEVICE_NEEDS_RESET)) this.activate();
  }

  private activate(): void {
    const context: VirtioDeviceContext & { live: boolean } = {
      memory: this.options.memory,
      queues: this.queues,
      features: this.driverFeatures,
      log: this.log,
      live: true,
      signalUsed: (queueIndex: number, now?: boolean): void => {
        if (!context.live) return;
        if (now) {
          // Also covers used entries of this queue still waiting for the end of the turn.
          this.interruptPending[queueIndex] = false;
          this.flushInterrupt(queueIndex);
          return;
        }
        // Completions that land in the same event-loop turn (the block layer's thread pool
        // reports every finished request in one poll phase) share one interrupt decision:
        // one used_event check and at most one MSI per queue per turn, not one per request.
        this.interruptPending[queueIndex] = true;
        if (this.interruptFlush) return;
        this.interruptFlush = setImmediate(() => {
          this.interruptFlush = undefined;
          if (this.context === context && context.live) this.flushInterrupts();
        });
      },
      configChanged: (): void => {
        this.configGeneration = (this.configGeneration + 1) & 0xff;
        if (this.status & STATUS_DRIVER_OK) this.signalConfig();
      },
      fail: (error: Error): void => this.fail(error),
    };
    this.context = context;
    this.device.activate(context);
  }

  private interruptPending: boolean[] = [];
  private interruptFlush: NodeJS.Immediate | undefined;

  /** Interrupt the driver for each queue with new used entries, if it wants one. */
  private flushInterrupts(): void {
    const pending = this.interruptPending;
    for (let i = 0; i < pending.length; i++) {
      if (!pending[i]) continue;
      pending[i] = false;
      if (!this.flushInterrupt(i)) return;
    }
  }

  /** Interrupt the driver for queue `index` if it wants one; false when the device failed. */
  private flushInterrupt(index: number): boolean {
    const q = this.queues[index]!;
    let wanted: boolean;
    try {
      wanted = q.needsInterrupt();
    } catch (error) {
      this.fail(error as Error);
      return false;
    }
    if (wanted) this.raise(q.msixVector, 1);
    this.device.interruptDecided?.(index, wanted);
    return true;
  }

  /** A doorbell rang for queue `index` (MMIO write or ioeventfd). */
  notifyQueue(index: number): void {
    if (!this.context?.live || index >= this.queues.length || !this.queues[index]!.ready) return;
    this.device.queueNotify(index);
  }

  // ---- BAR 4 ----

  private readonly virtioRegion: BusDevice = {
    read: (offset, data) => {
      const at = Number(offset);
      data.fill(0);
      if (at < COMMON_OFFSET + COMMON_SIZE) this.readCommon(at, data);
      else if (at >= ISR_OFFSET && at < ISR_OFFSET + 4) {
        if (at === ISR_OFFSET) {
          // Reading the ISR acknowledges it and lowers INTx.
          data[0] = this.isr;
          this.isr = 0;
          this.slot?.setIntx(false);
        }
      } else if (at >= DEVICE_CONFIG_OFFSET && at < DEVICE_CONFIG_OFFSET + 0x1000) {
        const rel = at - DEVICE_CONFIG_OFFSET;
        if (rel + data.length <= this.device.configSize) this.device.readConfig(rel, data);
      }
    },
    write: (offset, data) => {
      const at = Number(offset);
      if (at < COMMON_OFFSET + COMMON_SIZE) this.writeCommon(at, data);
      else if (at >= DEVICE_CONFIG_OFFSET && at < DEVICE_CONFIG_OFFSET + 0x1000) {
        const rel = at - DEVICE_CONFIG_OFFSET;
        if (rel + data.length <= this.device.configSize) this.device.writeConfig(rel, data);
      } else if (at >= NOTIFY_OFFSET && at < NOTIFY_OFFSET + this.queues.length * NOTIFY_OFF_MULTIPLIER) {
        this.notifyQueue(Math.floor((at - NOTIFY_OFFSET) / NOTIFY_OFF_MULTIPLIER));
      }
    },
  };

  private readonly msixRegion: BusDevice = {
    read: (offset, data) => {
      if (offset >= BigInt(MSIX_PBA_OFFSET)) this.msix.pbaRegion.read(offset - BigInt(MSIX_PBA_OFFSET), data);
      else this.msix.tableRegion.read(offset, data);
    },
    write: (offset, data) => {
      if (offset >= BigInt(MSIX_PBA_OFFSET)) this.msix.pbaRegion.write(offset - BigInt(MSIX_PBA_OFFSET), data);
      else this.msix.tableRegion.write(offset, data);
    },
  };

  private get selectedQueue(): Virtqueue | undefined {
    return this.queues[this.queueSelect];
  }

  private commonValue(at: number): number | bigint {
    const q = this.selectedQueue;
    switch (at) {
      case 0x00: return this.deviceFeatureSelect;
      case 0x04: return this.deviceFeatureSelect < 2 ? Number((this.offeredFeatures >> BigInt(32 * this.deviceFeatureSelect)) & 0xffffffffn) : 0;
      case 0x08: return this.driverFeatureSelect;
      case 0x0c: return this.driverFeatureSelect < 2 ? Number((this.driverFeatures >> BigInt(32 * this.driverFeatureSelect)) & 0xffffffffn) : 0;
      case 0x10: return this.configVector;
      case 0x12: return this.queues.length;
      case 0x14: return this.status;
      case 0x15: return this.configGeneration;
      case 0x16: return this.queueSelect;
      case 0x18: return q ? q.size : 0;
      case 0x1a: return q ? q.msixVector : MSIX_NO_VECTOR;
      case 0x1c: return q?.ready ? 1 : 0;
      case 0x1e: return q ? this.queueSelect : 0;
      case 0x20: return q ? q.descTable : 0n;
      case 0x28: return q ? q.availRing : 0n;
      case 0x30: return q ? q.usedRing : 0n;
      default: return 0;
    }
  }

  /** Width of the common-config field starting at `at`, 0 if none starts there. */
  private static fieldWidth(at: number): number {
    if (at <= 0x0c) return at % 4 === 0 ? 4 : 0;
    if (at === 0x14 || at === 0x15) return 1;
    if (at >= 0x20) return (at - 0x20) % 8 === 0 ? 8 : 0;
    return at % 2 === 0 ? 2 : 0;
  }

  private readCommon(at: number, data: Uint8Array): void {
    // Accesses are field-sized per the spec; a 64-bit field may also be read as two dwords.
    let base = at;
    let width = VirtioPciDevice.fieldWidth(base);
    if (width === 0 && at >= 0x20 && at % 4 === 0) {
      base = at - 4;
      width = 8;
    }
    if (width === 0) return;
    const value = BigInt(this.commonValue(base));
    const shift = BigInt((at - base) * 8);
    for (let i = 0; i < data.length; i++) data[i] = Number((value >> (shift + BigInt(8 * i))) & 0xffn);
  }

  private writeCommon(at: number, data: Uint8Array): void {
    let value = 0n;
    for (let i = data.length - 1; i >= 0; i--) value = (value << 8n) | BigInt(data[i]!);
    const v = Number(value & 0xffffffffn);
    const q = this.selectedQueue;
    const queueWritable = q !== undefined && !q.ready;
    const featuresLocked = (this.status & STATUS_FEATURES_OK) !== 0;
    switch (at) {
      case 0x00: this.deviceFeatureSelect = v; return;
      case 0x08: this.driverFeatureSelect = v; return;
      case 0x0c:
        if (!featuresLocked && this.driverFeatureSelect < 2) {
          const shift = BigInt(32 * this.driverFeatureSelect);
          this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(v) << shift);
        }
        return;
      case 0x10: this.configVector = this.checkVector(v & 0xffff); return;
      case 0x14: this.writeStatus(v & 0xff); return;
      case 0x16: this.queueSelect = v & 0xffff; return;
      case 0x18: if (queueWritable) q.size = v & 0xffff; return;
      case 0x1a: if (q) q.msixVector = this.checkVector(v & 0xffff); return;
      case 0x1c:
        if (q && (v & 1) && !q.ready) this.enableQueue(q);
        return;
    }
    if (!queueWritable || at < 0x20 || at >= COMMON_SIZE) return;
    const field = at - ((at - 0x20) % 8);
    const shift = BigInt((at - field) * 8);
    const width = BigInt(data.length * 8);
    const mask = ((1n << width) - 1n) << shift;
    const merge = (old: bigint): bigint => (old & ~mask) | ((value << shift) & mask);
    if (field === 0x20) q.descTable = merge(q.descTable);
    else if (field === 0x28) q.availRing = merge(q.availRing);
    else if (field === 0x30) q.usedRing = merge(q.usedRing);
  }

  /** Vectors beyond the table read back as NO_VECTOR, which tells the driver it failed. */
  private checkVector(vector: number): number {
    return vector < this.msix.layout.vectors ? vector : MSIX_NO_VECTOR;
  }

  private enableQueue(q: Virtqueue): void {
    try {
      q.validate();
      q.ready = true;
    } catch (error) {
      if (!(error instanceof VirtqueueError)) throw error;
      this.fail(error);
    }
  }

  // ---- migration ----

  saveState(): VirtioPciState {
    // An interrupt still waiting for the end of this turn is sent now: the saved state must
    // not depend on a timer that will not exist on the other side.
    if (this.interruptFlush) {
      clearImmediate(this.interruptFlush);
      this.interruptFlush = undefined;
      if (this.context?.live) this.flushInterrupts();
    }
    return {
      version: 1, status: this.status, deviceFeatureSelect: this.deviceFeatureSelect,
      driverFeatureSelect: this.driverFeatureSelect, driverFeatures: hex(this.driverFeatures),
      queueSelect: this.queueSelect, configVector: this.configVector, configGeneration: this.configGeneration,
      isr: this.isr, queues: this.queues.map((q) => q.saveState()), msix: this.msix.saveState(),
      device: this.device.saveState(),
    };
  }

  /** Restore a saved state into a freshly created, identically configured device. */
  loadState(state: VirtioPciState): void {
    if (state.version !== 1) throw new Error(`${this.device.name}: unsupported virtio-pci state version ${state.version}`);
    if (state.queues.length !== this.queues.length) {
      throw new Error(`${this.device.name}: saved state has ${state.queues.length} queues, device has ${this.queues.length}`);
    }
    this.resetVirtio();
    this.deviceFeatureSelect = state.deviceFeatureSelect;
    this.driverFeatureSelect = state.driverFeatureSelect;
    this.driverFeatures = BigInt(state.driverFeatures);
    this.queueSelect = state.queueSelect;
    this.configVector = state.configVector;
    this.configGeneration = state.configGeneration;
    this.isr = state.isr;
    this.msix.loadState(state.msix);
    state.queues.forEach((qs, i) => {
      const q = this.queues[i]!;
      q.loadState(qs);
      q.eventIdx = (this.driverFeatures & bit(VIRTIO_F_RING_EVENT_IDX)) !== 0n;
      q.indirect = (this.driverFeatures & bit(VIRTIO_F_RING_INDIRECT_DESC)) !== 0n;
    });
    this.device.loadState(state.device);
    this.status = state.status;
    if (this.isr) this.slot?.setIntx(true);
    if ((this.status & STATUS_DRIVER_OK) && !(this.status & STATUS_DEVICE_NEEDS_RESET)) this.activate();
  }
}
