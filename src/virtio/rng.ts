// virtio-rng (virtio 1.x, section 5.4): one queue of device-writable buffers, filled from
// the host's CSPRNG. An optional rate limit (bytes per period) keeps a guest from draining
// host entropy or CPU: once the period's budget is spent, buffers wait for the next period.
import { randomFillSync } from 'node:crypto';
import { complete, drainQueue, VIRTIO_ID_RNG, type VirtioDevice, type VirtioDeviceContext } from './device.js';
import { sliceBuffers } from './queue.js';

export interface RngRateLimit {
  bytes: number;
  periodMs: number;
}

export interface VirtioRngOptions {
  name?: string;
  rateLimit?: RngRateLimit;
  queueSize?: number;
  /** Source of randomness (tests pass a deterministic one). */
  fill?: (buffer: Uint8Array) => void;
  /** Clock in ms (tests). */
  now?: () => number;
}

export class VirtioRng implements VirtioDevice {
  readonly name: string;
  readonly deviceType = VIRTIO_ID_RNG;
  readonly pciClass = 0x00ff00;
  readonly queueSizes: number[];
  readonly features = 0n;
  readonly configSize = 0;
  private context: VirtioDeviceContext | undefined;
  private periodStart = 0;
  private spent = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly fill: (buffer: Uint8Array) => void;
  private readonly now: () => number;

  constructor(private readonly options: VirtioRngOptions = {}) {
    this.name = options.name ?? 'virtio-rng0';
    this.queueSizes = [options.queueSize ?? 64];
    this.fill = options.fill ?? ((b) => randomFillSync(b));
    this.now = options.now ?? (() => Date.now());
    const limit = options.rateLimit;
    if (limit && (!(limit.bytes > 0) || !(limit.periodMs > 0))) {
      throw new Error(`${this.name}: rate limit needs positive bytes and period (got ${limit.bytes}/${limit.periodMs} ms)`);
    }
  }

  readConfig(): void {}
  writeConfig(): void {}

  activate(context: VirtioDeviceContext): void {
    this.context = context;
    this.periodStart = this.now();
    this.spent = 0;
    this.queueNotify(0);
  }

  reset(): void {
    this.context = undefined;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Bytes the rate limit still allows in this period (Infinity without a limit). */
  private budget(): number {
    const limit = this.options.rateLimit;
    if (!limit) return Infinity;
    const now = this.now();
    if (now - this.periodStart >= limit.periodMs) {
      this.periodStart = now;
      this.spent = 0;
    }
    return limit.bytes - this.spent;
  }

  queueNotify(index: number): void {
    const context = this.context;
    if (!context || index !== 0) return;
    drainQueue(context, 0, (chain) => {
      const budget = this.budget();
      if (budget <= 0) {
        this.waitForNextPeriod();
        return false;
      }
      const want = Math.min(chain.writableBytes, budget);
      let written = 0;
      for (const view of sliceBuffers(context.memory, chain.writable, 0, want)) {
        this.fill(view);
        written += view.length;
      }
      this.spent += written;
      complete(context, 0, chain.head, written);
      return true;
    });
  }

  private waitForNextPeriod(): void {
    const limit = this.options.rateLimit;
    if (!limit || this.timer) return;
    const wait = Math.max(1, this.periodStart + limit.periodMs - this.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.queueNotify(0);
    }, wait);
    this.timer.unref();
  }

  saveState(): unknown {
    return { version: 1 };
  }

  loadState(): void {}
}
