// What the host bridge needs from a PCI function: its config space, a handler per BAR, and
// a hook after guest config writes. The bridge hands each device an interrupt line.
import type { BusDevice } from '../devices/bus.js';
import type { ConfigReadHook } from './config-mirror.js';
import type { PciConfigSpace } from './config-space.js';

export interface PciSlotContext {
  readonly slot: number;
  readonly function: number;
  /** Drive this function's INTx pin (ignored while the command register disables INTx). */
  setIntx(level: boolean): void;
}

export interface PciDevice {
  /** A unique, human-readable name used in logs and query-pci ("virtio-blk0"). */
  readonly name: string;
  readonly config: PciConfigSpace;
  /** The handler for accesses inside BAR `index` (offsets relative to the BAR's start). */
  barRegion(index: number): BusDevice | undefined;
  /** Called once when the device is plugged into a slot. */
  attached?(context: PciSlotContext): void;
  /**
   * Called before a guest config read; a device whose registers are windows onto something
   * else (virtio's PCI_CFG access capability) refreshes `config` here.
   */
  configWillRead?(offset: number, length: number): void;
  /**
   * The bytes configWillRead refreshes. Reads elsewhere in config space then need no hook,
   * and vCPU threads serve them from shared memory; without it, every read of a device
   * with configWillRead goes to the main thread.
   */
  readonly configReadHook?: ConfigReadHook;
  /** Called after every guest write to config space, with the masks already applied. */
  configWritten?(offset: number, length: number): void;
  /**
   * Called when BAR `index` starts or stops decoding (`address` undefined), so the device
   * can move what depends on its address (ioeventfds on a notify region).
   */
  barMapped?(index: number, address: bigint | undefined): void;
  /** Machine reset: return to the power-on state (the bridge restores config space itself). */
  reset?(): void;
}
