// MSI-X: the capability in config space plus the vector table and pending-bit array that
// live in a memory BAR. A vector fires as an MSI through the InterruptSink unless it or the
// whole function is masked; then its pending bit is set and it fires when unmasked.
import type { BusDevice } from '../devices/bus.js';
import { PCI_CAP_ID_MSIX, type PciConfigSpace } from './config-space.js';
import type { InterruptSink } from './interrupt.js';

const ENTRY_SIZE = 16;
const CONTROL_ENABLE = 0x8000;
const CONTROL_FUNCTION_MASK = 0x4000;
const VECTOR_MASKED = 0x1;
export const MSIX_NO_VECTOR = 0xffff;

export interface MsixLayout {
  vectors: number;
  bar: number;
  tableOffset: number;
  pbaOffset: number;
}

export interface MsixState {
  table: number[];
  pba: number[];
}

export class Msix {
  readonly capabilityOffset: number;
  private readonly table: Uint8Array;
  private readonly tableView: DataView;
  private readonly pba: Uint8Array;

  constructor(
    private readonly config: PciConfigSpace,
    readonly layout: MsixLayout,
    private readonly sink: InterruptSink,
  ) {
    if (layout.vectors < 1 || layout.vectors > 2048) throw new Error(`MSI-X vector count ${layout.vectors} is out of range`);
    this.table = new Uint8Array(layout.vectors * ENTRY_SIZE);
    this.tableView = new DataView(this.table.buffer);
    this.pba = new Uint8Array(Math.ceil(layout.vectors / 64) * 8);
    // Vectors start masked (PCI spec).
    for (let v = 0; v < layout.vectors; v++) this.tableView.setUint32(v * ENTRY_SIZE + 12, VECTOR_MASKED, true);
    const body = new Uint8Array(10);
    const dv = new DataView(body.buffer);
    dv.setUint16(0, layout.vectors - 1, true);
    dv.setUint32(2, layout.tableOffset | layout.bar, true);
    dv.setUint32(6, layout.pbaOffset | layout.bar, true);
    this.capabilityOffset = config.addCapability(PCI_CAP_ID_MSIX, body);
    config.setWritable(this.capabilityOffset + 2, 2, CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
  }

  get tableSize(): number { return this.table.length; }
  get pbaSize(): number { return this.pba.length; }

  private get control(): number { return this.config.getU16(this.capabilityOffset + 2); }
  get enabled(): boolean { return (this.control & CONTROL_ENABLE) !== 0; }
  get functionMasked(): boolean { return (this.control & CONTROL_FUNCTION_MASK) !== 0; }

  vectorMasked(vector: number): boolean {
    return (this.tableView.getUint32(vector * ENTRY_SIZE + 12, true) & VECTOR_MASKED) !== 0;
  }

  pending(vector: number): boolean {
    return (this.pba[vector >> 3]! & (1 << (vector & 7))) !== 0;
  }

  private setPending(vector: number, on: boolean): void {
    if (on) this.pba[vector >> 3]! |= 1 << (vector & 7);
    else this.pba[vector >> 3]! &= ~(1 << (vector & 7));
  }

  /**
   * Raise `vector`. Returns false when MSI-X is disabled (the caller falls back to INTx) or
   * the vector number is out of range; true when delivered or left pending.
   */
  notify(vector: number): boolean {
    if (!this.enabled || vector < 0 || vector >= this.layout.vectors) return false;
    if (this.functionMasked || this.vectorMasked(vector)) {
      this.setPending(vector, true);
      return true;
    }
    this.deliver(vector);
    return true;
  }

  private deliver(vector: number): void {
    const base = vector * ENTRY_SIZE;
    const low = this.tableView.getUint32(base, true);
    const high = this.tableView.getUint32(base + 4, true);
    // (One BigInt for the usual 32-bit address: this runs for every interrupt.)
    const address = high === 0 ? BigInt(low) : (BigInt(high) << 32n) | BigInt(low);
    this.sink.signalMsi(address, this.tableView.getUint32(base + 8, true));
  }

  /** Deliver every pending vector that is no longer masked (after a mask change). */
  private flushPending(): void {
    if (!this.enabled || this.functionMasked) return;
    for (let v = 0; v < this.layout.vectors; v++) {
      if (this.pending(v) && !this.vectorMasked(v)) {
        this.setPending(v, false);
        this.deliver(v);
      }
    }
  }

  /** Called by the owner after any config-space write touching the capability. */
  configWritten(offset: number, length: number): void {
    const cap = this.capabilityOffset;
    if (offset < cap + 4 && offset + length > cap + 2) this.flushPending();
  }

  /** The table region of the BAR (at layout.tableOffset). */
  readonly tableRegion: BusDevice = {
    read: (offset, data) => {
      const at = Number(offset);
      if (at + data.length > this.table.length) return void data.fill(0);
      data.set(this.table.subarray(at, at + data.length));
    },
    write: (offset, data) => {
      const at = Number(offset);
      if (at + data.length > this.table.length) return;
      this.table.set(data, at);
      this.flushPending();
    },
  };

  /** The pending-bit array region (read-only for the guest). */
  readonly pbaRegion: BusDevice = {
    read: (offset, data) => {
      const at = Number(offset);
      if (at + data.length > this.pba.length) return void data.fill(0);
      data.set(this.pba.subarray(at, at + data.length));
    },
    write: () => {},
  };

  saveState(): MsixState {
    return { table: [...this.table], pba: [...this.pba] };
  }

  loadState(state: MsixState): void {
    if (state.table.length !== this.table.length || state.pba.length !== this.pba.length) {
      throw new Error(`MSI-X state has ${state.table.length / ENTRY_SIZE} vectors, device has ${this.layout.vectors}`);
    }
    this.table.set(state.table);
    this.pba.set(state.pba);
  }

  reset(): void {
    this.table.fill(0);
    this.pba.fill(0);
    for (let v = 0; v < this.layout.vectors; v++) this.tableView.setUint32(v * ENTRY_SIZE + 12, VECTOR_MASKED, true);
  }
}
