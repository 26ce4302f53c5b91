// A single-producer single-consumer byte ring in a SharedArrayBuffer: how console output
// leaves a vCPU thread without a message per byte. The producer is whichever thread holds
// the UART's lock (so there is one at a time); the consumer is the main thread, woken with
// Atomics.waitAsync when the write index moves.

import { waitAsync } from './atomics.js';

const WRITE = 0;
const READ = 1;
const HEADER_BYTES = 8;

export class ByteRing {
  private readonly idx: Int32Array;
  private readonly data: Uint8Array;
  readonly capacity: number;
  private readonly mask: number;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.idx = new Int32Array(buffer, 0, 2);
    this.data = new Uint8Array(buffer, HEADER_BYTES);
    this.capacity = this.data.length;
    // Indices are free-running 32-bit counters; a power-of-two capacity keeps `index & mask`
    // right across their wrap-around.
    if (this.capacity & (this.capacity - 1)) throw new RangeError(`byte ring capacity ${this.capacity} is not a power of two`);
    this.mask = this.capacity - 1;
  }

  static create(capacity = 1 << 16): ByteRing {
    return new ByteRing(new SharedArrayBuffer(HEADER_BYTES + capacity));
  }

  /**
   * Append one byte. When the ring is full (the consumer fell behind by `capacity` bytes)
   * the producer waits for it, at most `timeoutMs`; returns false if the byte was dropped.
   */
  push(byte: number, timeoutMs = 1000): boolean {
    const w = Atomics.load(this.idx, WRITE);
    let r = Atomics.load(this.idx, READ);
    const deadline = Date.now() + timeoutMs;
    while (w - r >= this.capacity) {
      if (Date.now() > deadline) return false;
      Atomics.wait(this.idx, READ, r, 10);
      r = Atomics.load(this.idx, READ);
    }
    this.data[w & this.mask] = byte;
    Atomics.store(this.idx, WRITE, (w + 1) | 0);
    Atomics.notify(this.idx, WRITE);
    return true;
  }

  /** Take everything written so far (empty array when nothing). */
  drain(): Uint8Array {
    const w = Atomics.load(this.idx, WRITE);
    const r = Atomics.load(this.idx, READ);
    const n = (w - r) | 0;
    if (n === 0) return new Uint8Array(0);
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.data[(r + i) & this.mask]!;
    Atomics.store(this.idx, READ, w);
    Atomics.notify(this.idx, READ);
    return out;
  }

  /** Resolves when bytes are (or already were) available, or after `timeoutMs`. */
  async waitForData(timeoutMs: number): Promise<void> {
    const w = Atomics.load(this.idx, WRITE);
    if (w !== Atomics.load(this.idx, READ)) return;
    await waitAsync(this.idx, WRITE, w, timeoutMs);
  }
}
