// The contract between a virtio device model (blk, console, rng) and its transport. The
// transport owns status, features, queues and interrupts; the device owns its config space
// layout and what it does with buffers.
import type { GuestMemory } from '../memory/guest-memory.js';
import type { LogLine } from '../pci/interrupt.js';
import { type DescriptorChain, type Virtqueue, VirtqueueError } from './queue.js';

export const VIRTIO_F_RING_INDIRECT_DESC = 28n;
export const VIRTIO_F_RING_EVENT_IDX = 29n;
export const VIRTIO_F_VERSION_1 = 32n;

export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_ID_CONSOLE = 3;
export const VIRTIO_ID_RNG = 4;

export function bit(n: bigint): bigint {
  return 1n << n;
}

export interface VirtioDeviceContext {
  readonly memory: GuestMemory;
  readonly queues: readonly Virtqueue[];
  /** Features both sides agreed on. */
  readonly features: bigint;
  readonly log: LogLine;
  /**
   * Raise the queue's interrupt if the driver has not suppressed it. By default the decision
   * waits for the end of the event-loop turn, so completions landing in the same turn share
   * one interrupt; `now` decides at once (nothing else is in flight to share it with).
   */
  signalUsed(queueIndex: number, now?: boolean): void;
  /** Tell the driver the device config changed (bumps config_generation). */
  configChanged(): void;
  /** The driver broke the protocol: log it, set DEVICE_NEEDS_RESET, stop the device. */
  fail(error: Error): void;
  /** False once the device was reset or failed: late async completions must be dropped. */
  readonly live: boolean;
}

export interface VirtioDevice {
  /** Unique name for logs ("virtio-blk0"). */
  readonly name: string;
  readonly deviceType: number;
  /** 24-bit PCI class code. */
  readonly pciClass: number;
  /** Maximum size of each queue; the array's length is the queue count. */
  readonly queueSizes: readonly number[];
  /** Device-specific feature bits offered (the transport adds the ring and version bits). */
  readonly features: bigint;
  /** Bytes of device-specific config space. */
  readonly configSize: number;
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
  /** The driver set DRIVER_OK: start using the queues. */
  activate(context: VirtioDeviceContext): void;
  /** The driver notified queue `index`. */
  queueNotify(index: number): void;
  /** The transport decided queue `queue`'s interrupt after used entries: sent, or suppressed by the driver. */
  interruptDecided?(queue: number, sent: boolean): void;
  /** Device reset: forget the context and every request in flight. */
  reset(): void;
  saveState(): unknown;
  loadState(state: unknown): void;
}

/**
 * Pop and handle the chains available on a queue, at most one queue's worth per call so a
 * driver that keeps refilling cannot starve the event loop; the rest is picked up on the
 * next turn. `handle` returns false when it cannot take the chain now (it is put back).
 * A protocol violation fails the device through the context.
 */
export function drainQueue(
  context: VirtioDeviceContext, index: number, handle: (chain: DescriptorChain) => boolean,
  options: { /** false: leave what is left to the caller instead of a later turn. */ deferRest?: boolean } = {},
): void {
  const queue = context.queues[index];
  if (!queue || !queue.ready || !context.live) return;
  try {
    for (let n = 0; n < queue.size; n++) {
      const chain = queue.pop();
      if (!chain) return;
      if (!handle(chain)) {
        queue.undoPop();
        return;
      }
      if (!context.live) return;
    }
    if (options.deferRest !== false && queue.pendingCount() > 0) {
      setImmediate(() => drainQueue(context, index, handle));
    }
  } catch (error) {
    failOnProtocolError(context, error);
  }
}

/**
 * Pop the chains available on a queue, at most one queue's worth (the rest waits for the
 * caller's next look). After a protocol violation, which fails the device through the
 * context, the chains taken before it are returned.
 */
export function takeAvailable(context: VirtioDeviceContext, index: number): DescriptorChain[] {
  const taken: DescriptorChain[] = [];
  const queue = context.queues[index];
  if (!queue || !queue.ready || !context.live) return taken;
  try {
    for (let n = 0; n < queue.size; n++) {
      const chain = queue.pop();
      if (!chain) break;
      taken.push(chain);
    }
  } catch (error) {
    failOnProtocolError(context, error);
  }
  return taken;
}

/** A driver's protocol violation fails the device; anything else is a bug, thrown on. */
function failOnProtocolError(context: VirtioDeviceContext, error: unknown): void {
  if (error instanceof VirtqueueError || (error instanceof Error && error.name === 'GuestMemoryError')) {
    context.fail(error);
    return;
  }
  throw error;
}

/** Return a chain and interrupt the driver if it wants one (`now`: see signalUsed). */
export function complete(context: VirtioDeviceContext, index: number, head: number, written: number, now?: boolean): void {
  if (!context.live) return;
  const queue = context.queues[index]!;
  try {
    queue.pushUsed(head, written);
  } catch (error) {
    context.fail(error as Error);
    return;
  }
  context.signalUsed(index, now);
}
