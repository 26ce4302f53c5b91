// A PCI Express root complex with one bus (bus 0): the host bridge function at slot 0 and up
// to 31 device slots. Config space is reached through ECAM (MMIO) and the legacy 0xCF8/0xCFC
// ports. The bridge assigns BAR addresses like firmware would, and maps or unmaps BARs on
// the MMIO/PIO buses when the guest changes a BAR or the command register's decode bits.
//
// INTx routing (announced to the guest with _PRT): slot S pin P (1 = INTA#) is wired to
// IOAPIC GSI 16 + ((S + P - 1) mod 4), the classic swizzle over four shared lines. Lines
// are level-triggered and shared, so a line stays asserted while any function drives it.
import { type Bus, BusConflictError, type BusDevice } from '../devices/bus.js';
import {
  PCI_BAR0, PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_IO, PCI_COMMAND_MEMORY, PCI_INTERRUPT_LINE,
  PCI_STATUS, PCI_STATUS_INTERRUPT, PciConfigSpace,
} from './config-space.js';
import { configTarget, PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_DATA_PORT, PCI_SLOTS, PciConfigMirror, readLe, writeLe } from './config-mirror.js';
import type { PciDevice, PciSlotContext } from './device.js';
import { hex, type InterruptSink, type LogLine, logToStderr } from './interrupt.js';

export { PCI_SLOTS };
export const PCI_INTX_GSI_BASE = 16;

/** The IOAPIC GSI that slot `slot`'s pin `pin` (1..4 = INTA#..INTD#) is wired to. */
export function intxGsi(slot: number, pin: number): number {
  return PCI_INTX_GSI_BASE + ((slot + pin - 1) % 4);
}

export interface PciRoute { slot: number; /** 0..3 = INTA#..INTD#, as _PRT numbers pins */ pin: number; gsi: number }

/** Every _PRT entry for bus 0: one per slot and pin. */
export function pciInterruptRoutes(): PciRoute[] {
  const routes: PciRoute[] = [];
  for (let slot = 0; slot < PCI_SLOTS; slot++) {
    for (let pin = 0; pin < 4; pin++) routes.push({ slot, pin, gsi: intxGsi(slot, pin + 1) });
  }
  return routes;
}

export interface AddressWindow { base: bigint; size: bigint }

export interface PciHostBridgeOptions {
  mmioBus: Bus;
  pioBus: Bus;
  interrupts: InterruptSink;
  /** ECAM window; bus N's config space is at base + N MiB. Only bus 0 is populated. */
  ecam: AddressWindow;
  /** Memory BARs go here (and 64-bit BARs too when `mmio64` is absent). */
  mmio32: AddressWindow;
  /** 64-bit BARs go here when given. */
  mmio64?: AddressWindow;
  /** I/O BARs go here; default 0xC000..0xFFFF. */
  io?: AddressWindow;
  log?: LogLine;
}

/** One BAR as QMP query-pci reports it (addresses as bigint; QMP wants numbers). */
export interface PciBarInfo {
  bar: number;
  type: 'memory' | 'io';
  address: bigint;
  size: bigint;
  prefetch: boolean;
  memType64: boolean;
}

/** One function, shaped like QMP's query-pci entry (QmpPciDevice) plus name and revision. */
export interface PciDeviceInfo {
  bus: number;
  slot: number;
  function: number;
  /** The device's name, used as QMP's qdev_id. */
  qdevId: string;
  vendorId: number;
  deviceId: number;
  subsystemVendorId: number;
  subsystemId: number;
  classCode: number;
  revision: number;
  /** The GSI of the INTx line, absent for functions without an interrupt pin. */
  irq?: number;
  bars: PciBarInfo[];
}

export class PciSlotError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PciSlotError';
  }
}

interface Plugged {
  device: PciDevice;
  /** Config space as firmware left it (after BAR assignment), restored on machine reset. */
  initial?: Uint8Array;
  slot: number;
  mapped: (bigint | undefined)[];
  intxLevel: boolean;
}

/** The host bridge's own function at 00:00.0. */
class HostBridgeFunction implements PciDevice {
  readonly name = 'pcie-host-bridge';
  readonly config = new PciConfigSpace({
    vendorId: 0x1b36, deviceId: 0x0008, revision: 0, classCode: 0x060000,
    subsystemVendorId: 0x1af4, subsystemId: 0x1100, interruptPin: 0,
  });
  barRegion(): BusDevice | undefined { return undefined; }
}

export class PciHostBridge {
  private readonly slots: (Plugged | undefined)[] = new Array(PCI_SLOTS).fill(undefined);
  private readonly asserted = new Map<number, Set<number>>();
  private readonly log: LogLine;
  /** Every function's registers and the 0xCF8 latch, in memory vCPU threads read (config-mirror.ts). */
  private readonly mirror = new PciConfigMirror();
  private barsAssigned = false;

  constructor(private readonly options: PciHostBridgeOptions) {
    this.log = options.log ?? logToStderr;
    this.plug(new HostBridgeFunction(), 0);
    options.mmioBus.insert(options.ecam.base, options.ecam.size, this.ecamRegion, 'pci-ecam');
    // Only 0xCF8 itself: a dword access there reaches us whole, while the byte port 0xCF9 stays
    // free for the machine's reset control register.
    options.pioBus.insert(BigInt(PCI_CONFIG_ADDRESS_PORT), 1n, this.configAddressPort, 'pci-config-address');
    options.pioBus.insert(BigInt(PCI_CONFIG_DATA_PORT), 4n, this.configDataPort, 'pci-config-data');
  }

  /** The shared config space (PciConfigMirror) for vCPU threads to serve config reads from. */
  get configMirror(): SharedArrayBuffer { return this.mirror.buffer; }

  private get configAddress(): number { return this.mirror.address; }
  private set configAddress(value: number) { this.mirror.address = value; }

  /**
   * Plug `device` into `slot`, or the lowest free slot when none is asked for. Callers that
   * mix fixed and automatic slots place the fixed ones first so numbering is stable.
   */
  addDevice(device: PciDevice, slot?: number): number {
    if (this.barsAssigned) throw new PciSlotError(`cannot add ${device.name}: BARs are already assigned`);
    if (slot !== undefined) {
      if (!Number.isInteger(slot) || slot < 1 || slot >= PCI_SLOTS) {
        throw new PciSlotError(`${device.name}: PCI slot ${slot} is out of range (1..${PCI_SLOTS - 1})`);
      }
      const taken = this.slots[slot];
      if (taken) throw new PciSlotError(`${device.name}: PCI slot ${slot} is already used by ${taken.device.name}`);
    } else {
      slot = this.slots.findIndex((s) => s === undefined);
      if (slot < 0) throw new PciSlotError(`${device.name}: no free PCI slot on bus 0`);
    }
    this.plug(device, slot);
    return slot;
  }

  private plug(device: PciDevice, slot: number): void {
    const plugged: Plugged = { device, slot, mapped: new Array(6).fill(undefined), intxLevel: false };
    this.slots[slot] = plugged;
    device.config.moveTo(this.mirror.slotStorage(slot));
    this.mirror.plugged(slot, device.configWillRead ? device.configReadHook ?? 'all' : undefined);
    const pin = device.config.getU8(0x3d);
    if (pin >= 1 && pin <= 4) device.config.setU8(PCI_INTERRUPT_LINE, intxGsi(slot, pin));
    const context: PciSlotContext = {
      slot,
      function: 0,
      setIntx: (level) => {
        plugged.intxLevel = level;
        this.updateIntx(plugged);
      },
    };
    device.attached?.(context);
  }

  /** The device in `slot`, if any. */
  deviceAt(slot: number): PciDevice | undefined {
    return this.slots[slot]?.device;
  }

  /**
   * Give every BAR an address, largest first within each window so natural alignment
   * leaves no holes, in slot order for stable results. Memory decoding stays off until the
   * guest enables it, as after firmware.
   */
  assignBars(): void {
    type Want = { plugged: Plugged; index: number; size: bigint; window: 'mmio32' | 'mmio64' | 'io' };
    const wants: Want[] = [];
    for (const plugged of this.slots) {
      if (!plugged) continue;
      plugged.device.config.bars.forEach((bar, index) => {
        if (!bar) return;
        const window = bar.kind === 'io' ? 'io' : bar.kind === 'mem64' && this.options.mmio64 ? 'mmio64' : 'mmio32';
        wants.push({ plugged, index, size: bar.size, window });
      });
    }
    wants.sort((a, b) => (a.size > b.size ? -1 : a.size < b.size ? 1 : a.plugged.slot - b.plugged.slot || a.index - b.index));
    const next: Record<Want['window'], bigint> = {
      mmio32: this.options.mmio32.base,
      mmio64: this.options.mmio64?.base ?? 0n,
      io: (this.options.io ?? { base: 0xc000n }).base,
    };
    const limit: Record<Want['window'], bigint> = {
      mmio32: this.options.mmio32.base + this.options.mmio32.size,
      mmio64: this.options.mmio64 ? this.options.mmio64.base + this.options.mmio64.size : 0n,
      io: (this.options.io ?? { base: 0xc000n, size: 0x4000n }).base + (this.options.io ?? { size: 0x4000n }).size,
    };
    for (const w of wants) {
      const address = (next[w.window] + w.size - 1n) & ~(w.size - 1n);
      if (address + w.size > limit[w.window]) {
        throw new PciSlotError(`${w.plugged.device.name}: BAR ${w.index} (${w.size} bytes) does not fit in the ${w.window} window`);
      }
      w.plugged.device.config.setBarAddress(w.index, address);
      next[w.window] = address + w.size;
    }
    for (const plugged of this.slots) if (plugged) plugged.initial = plugged.device.config.snapshot();
    this.barsAssigned = true;
  }

  /**
   * Machine reset: every function's config space goes back to its post-firmware state
   * (decoding off, BARs at their assigned addresses, MSI-X disabled), mappings and INTx
   * lines are dropped, and each device resets itself.
   */
  reset(): void {
    for (const plugged of this.slots) {
      if (!plugged) continue;
      if (plugged.initial) plugged.device.config.restore(plugged.initial);
      this.updateMappings(plugged);
      plugged.device.reset?.();
      plugged.intxLevel = false;
      this.updateIntx(plugged);
    }
    this.configAddress = 0;
  }

  // ---- config access ----

  /** Read `length` bytes of config space of bus/slot/function at `offset`. */
  configRead(bus: number, slot: number, fn: number, offset: number, length: number): number {
    const plugged = bus === 0 && fn === 0 ? this.slots[slot] : undefined;
    if (!plugged) return length === 4 ? 0xffffffff : (1 << (length * 8)) - 1;
    plugged.device.configWillRead?.(offset, length);
    return plugged.device.config.read(offset, length);
  }

  configWrite(bus: number, slot: number, fn: number, offset: number, length: number, value: number): void {
    const plugged = bus === 0 && fn === 0 ? this.slots[slot] : undefined;
    if (!plugged) return;
    const config = plugged.device.config;
    config.write(offset, length, value);
    const end = offset + length;
    if (offset < PCI_COMMAND + 2 && end > PCI_COMMAND) {
      this.updateMappings(plugged);
      this.updateIntx(plugged);
    } else if (offset < PCI_BAR0 + 24 && end > PCI_BAR0) {
      this.updateMappings(plugged);
    }
    plugged.device.configWritten?.(offset, length);
  }

  private readonly ecamRegion: BusDevice = {
    read: (offset, data) => {
      const value = this.configRead(Number(offset >> 20n), Number((offset >> 15n) & 31n), Number((offset >> 12n) & 7n),
        Number(offset & 0xfffn), data.length);
      writeLe(data, value);
    },
    write: (offset, data) => {
      this.configWrite(Number(offset >> 20n), Number((offset >> 15n) & 31n), Number((offset >> 12n) & 7n),
        Number(offset & 0xfffn), data.length, readLe(data));
    },
  };

  private readonly configAddressPort: BusDevice = {
    read: (offset, data) => {
      if (offset === 0n && data.length === 4) writeLe(data, this.configAddress);
      else data.fill(0xff);
    },
    write: (offset, data) => {
      // Only dword accesses latch an address (byte writes to 0xCF8 are not config cycles).
      if (offset === 0n && data.length === 4) this.configAddress = readLe(data) >>> 0;
    },
  };

  private readonly configDataPort: BusDevice = {
    read: (offset, data) => {
      const t = configTarget(this.configAddress, Number(offset), data.length);
      writeLe(data, t ? this.configRead(t.bus, t.slot, t.fn, t.reg, data.length) : 0xffffffff);
    },
    write: (offset, data) => {
      const t = configTarget(this.configAddress, Number(offset), data.length);
      if (t) this.configWrite(t.bus, t.slot, t.fn, t.reg, data.length, readLe(data));
    },
  };

  // ---- BAR mapping ----

  private updateMappings(plugged: Plugged): void {
    const config = plugged.device.config;
    const command = config.command;
    config.bars.forEach((bar, index) => {
      if (!bar) return;
      const bus = bar.kind === 'io' ? this.options.pioBus : this.options.mmioBus;
      const decode = (command & (bar.kind === 'io' ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY)) !== 0;
      const address = config.barAddress(index);
      const allOnes = bar.kind === 'mem64' ? 0xffffffffffffffffn : bar.kind === 'io' ? 0xfffcn : 0xfffffff0n;
      // While the guest sizes a BAR it holds the size mask, not an address: do not map that.
      const sizing = (address | (bar.size - 1n)) >= allOnes;
      const wanted = decode && address !== 0n && !sizing ? address : undefined;
      const current = plugged.mapped[index];
      if (wanted === current) return;
      if (current !== undefined) {
        bus.remove(current);
        plugged.mapped[index] = undefined;
        plugged.device.barMapped?.(index, undefined);
      }
      const region = plugged.device.barRegion(index);
      if (wanted === undefined || !region) return;
      try {
        bus.insert(wanted, bar.size, region, `${plugged.device.name} BAR${index}`);
        plugged.mapped[index] = wanted;
        plugged.device.barMapped?.(index, wanted);
      } catch (error) {
        if (!(error instanceof BusConflictError)) throw error;
        this.log(`pci: ${plugged.device.name} BAR${index} at ${hex(wanted)} not mapped: ${error.message}`);
      }
    });
  }

  // ---- INTx ----

  private updateIntx(plugged: Plugged): void {
    const config = plugged.device.config;
    const pin = config.getU8(0x3d);
    if (pin < 1 || pin > 4) return;
    const status = config.getU16(PCI_STATUS);
    config.setU16(PCI_STATUS, plugged.intxLevel ? status | PCI_STATUS_INTERRUPT : status & ~PCI_STATUS_INTERRUPT);
    const drive = plugged.intxLevel && (config.command & PCI_COMMAND_INTX_DISABLE) === 0;
    const gsi = intxGsi(plugged.slot, pin);
    let set = this.asserted.get(gsi);
    if (!set) this.asserted.set(gsi, (set = new Set()));
    const before = set.size > 0;
    if (drive) set.add(plugged.slot);
    else set.delete(plugged.slot);
    const after = set.size > 0;
    if (before !== after) this.options.interrupts.setIntx(gsi, after);
  }

  // ---- introspection ----

  /** Every function on bus 0, for QMP query-pci and diagnostics. */
  list(): PciDeviceInfo[] {
    const out: PciDeviceInfo[] = [];
    for (const plugged of this.slots) {
      if (!plugged) continue;
      const c = plugged.device.config;
      const bars: PciBarInfo[] = [];
      c.bars.forEach((bar, index) => {
        if (!bar) return;
        bars.push({
          bar: index, type: bar.kind === 'io' ? 'io' : 'memory', address: c.barAddress(index), size: bar.size,
          prefetch: bar.prefetchable ?? false, memType64: bar.kind === 'mem64',
        });
      });
      const pin = c.getU8(0x3d);
      out.push({
        bus: 0, slot: plugged.slot, function: 0, qdevId: plugged.device.name,
        vendorId: c.getU16(0), deviceId: c.getU16(2), subsystemVendorId: c.getU16(0x2c), subsystemId: c.getU16(0x2e),
        classCode: c.getU32(8) >>> 8, revision: c.getU8(8), ...(pin >= 1 && pin <= 4 ? { irq: intxGsi(plugged.slot, pin) } : {}), bars,
      });
    }
    return out;
  }
}
