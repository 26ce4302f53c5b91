// A disk in a byte array for virtio-blk tests, with controllable completion order and
// injectable host errors (the device under test is virtio-blk, not the disk).
import type { BlockBackend } from '../../../../src/virtio/blk.js';

export class MemoryDisk implements BlockBackend {
  readonly bytes: Uint8Array;
  readonly filename = 'memory-disk';
  readonly calls: string[] = [];
  /** When set, each operation waits for release() instead of finishing on the next tick. */
  hold = false;
  private held: Array<() => void> = [];
  failNext: Error | undefined;
  topo = { logicalBlockSize: 512, physicalBlockSize: 4096, alignmentOffset: 0, minimumIoSize: 4096, optimalIoSize: 65536, discardGranularity: 4096 };

  constructor(size: number, readonly readOnly = false) {
    this.bytes = new Uint8Array(size);
  }

  size(): bigint { return BigInt(this.bytes.length); }
  topology() { return this.topo; }

  /** Finish held operations in the given order (indices into the held list), or all; the others stay held. */
  release(order?: number[]): void {
    const held = this.held;
    const chosen = order ?? held.map((_, j) => j);
    this.held = held.filter((_, j) => !chosen.includes(j));
    for (const i of chosen) held[i]!();
  }
  get heldCount(): number { return this.held.length; }

  /** Let event-loop turns pass (100 at most) until at least `n` operations are held. */
  async untilHeld(n: number): Promise<void> {
    for (let i = 0; i < 100 && this.held.length < n; i++) await new Promise((r) => setImmediate(r));
  }

  private async gate(call: string): Promise<void> {
    this.calls.push(call);
    if (this.hold) await new Promise<void>((r) => this.held.push(r));
    else await new Promise((r) => setImmediate(r));
    if (this.failNext) {
      const e = this.failNext;
      this.failNext = undefined;
      throw e;
    }
  }

  async readv(offset: bigint, buffers: Uint8Array[]): Promise<void> {
    await this.gate(`read ${offset}`);
    this.copyOut(offset, buffers);
  }

  async writev(offset: bigint, buffers: Uint8Array[]): Promise<void> {
    await this.gate(`write ${offset}`);
    this.copyIn(offset, buffers);
  }

  protected copyOut(offset: bigint, buffers: Uint8Array[]): void {
    let at = Number(offset);
    for (const b of buffers) {
      b.set(this.bytes.subarray(at, at + b.length));
      at += b.length;
    }
  }

  protected copyIn(offset: bigint, buffers: Uint8Array[]): void {
    let at = Number(offset);
    for (const b of buffers) {
      this.bytes.set(b, at);
      at += b.length;
    }
  }

  async flush(): Promise<void> { await this.gate('flush'); }
  async discard(offset: bigint, length: bigint): Promise<void> {
    await this.gate(`discard ${offset}+${length}`);
    this.bytes.fill(0, Number(offset), Number(offset + length));
  }
  async writeZeroes(offset: bigint, length: bigint, opts?: { mayUnmap?: boolean }): Promise<void> {
    await this.gate(`zeroes ${offset}+${length}${opts?.mayUnmap ? ' unmap' : ''}`);
    this.bytes.fill(0, Number(offset), Number(offset + length));
  }
}

/**
 * A MemoryDisk that also reads and writes on the spot (readvNow/writevNow), as a disk file in
 * memory does, except at offsets `refuse` turns down: those take readv/writev.
 */
export class SpotMemoryDisk extends MemoryDisk {
  refuse: (offset: bigint) => boolean = () => false;
  readonly spotCalls: string[] = [];

  readvNow(offset: bigint, buffers: Uint8Array[]): boolean {
    if (this.refuse(offset)) return false;
    this.spotCalls.push(`read ${offset}`);
    this.copyOut(offset, buffers);
    return true;
  }

  writevNow(offset: bigint, buffers: Uint8Array[]): boolean {
    if (this.readOnly || this.refuse(offset)) return false;
    this.spotCalls.push(`write ${offset}`);
    this.copyIn(offset, buffers);
    return true;
  }
}
