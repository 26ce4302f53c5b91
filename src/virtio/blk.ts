// virtio-blk (virtio 1.x, section 5.2) on a block backend. Requests run asynchronously with
// zero-copy vectored I/O straight from guest buffers; many are in flight and complete in
// whatever order the backend finishes them. Host I/O errors are never swallowed: they
// become VIRTIO_BLK_S_IOERR, or (policy 'stop') the request is parked, the VM is paused
// through a callback and the request is retried on resume().
import type { GuestMemory } from '../memory/guest-memory.js';
import { hex, type LogLine } from '../pci/interrupt.js';
import {
  bit, complete, takeAvailable, VIRTIO_ID_BLOCK, type VirtioDevice, type VirtioDeviceContext,
} from './device.js';
import { type DescriptorChain, gather, scatter, setLastByte, sliceBuffers } from './queue.js';
import { BlkTracer, blkTraceEnabled, type RequestTrace, type TakeSource } from './blk-trace.js';

/**
 * What virtio-blk needs of a disk. The block layer's BlockDriver satisfies it; it is
 * declared here because the block layer sits above the device models.
 */
export interface BlockBackend {
  readonly filename: string;
  readonly readOnly: boolean;
  size(): bigint;
  topology(): {
    logicalBlockSize: number;
    physicalBlockSize: number;
    alignmentOffset: number;
    minimumIoSize: number;
    optimalIoSize: number;
    discardGranularity: number;
  };
  readv(offset: bigint, buffers: Uint8Array[]): Promise<void>;
  writev(offset: bigint, buffers: Uint8Array[]): Promise<void>;
  /**
   * Optional: the whole read or write done on the calling thread, when the backend can do it
   * at once (a disk file in memory, a page-cache hit); false, with nothing reported, when it
   * cannot, and readv()/writev() then run it.
   */
  readvNow?(offset: bigint, buffers: Uint8Array[]): boolean;
  writevNow?(offset: bigint, buffers: Uint8Array[]): boolean;
  flush(): Promise<void>;
  discard(offset: bigint, length: bigint): Promise<void>;
  writeZeroes(offset: bigint, length: bigint, opts?: { mayUnmap?: boolean }): Promise<void>;
  close?(): Promise<void>;
}

export const VIRTIO_BLK_F_SEG_MAX = 2n;
export const VIRTIO_BLK_F_RO = 5n;
export const VIRTIO_BLK_F_BLK_SIZE = 6n;
export const VIRTIO_BLK_F_FLUSH = 9n;
export const VIRTIO_BLK_F_TOPOLOGY = 10n;
export const VIRTIO_BLK_F_MQ = 12n;
export const VIRTIO_BLK_F_DISCARD = 13n;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14n;

export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;

export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

const SECTOR = 512;
const SECTOR_BIG = 512n;
const HEADER = 16;
const SEGMENT = 16;
const ID_BYTES = 20;
const MAX_DISCARD_SECTORS = 0x3fffff;
const CONFIG_SIZE = 60;
/** How often the rings are looked at while the driver is asked not to notify (see armPollTimer). */
const POLL_FALLBACK_MS = 4;

export type IoErrorPolicy = 'report' | 'stop';

export interface VirtioBlkOptions {
  name?: string;
  /** Up to 20 bytes, returned by GET_ID (/sys/block/vdX/serial). */
  serial?: string;
  /** Expose the disk read-only even if the backend is writable. */
  readOnly?: boolean;
  /** Request queues (default 1); one per vCPU is the usual choice. */
  numQueues?: number;
  queueSize?: number;
  /** Override the backend's topology. */
  logicalBlockSize?: number;
  physicalBlockSize?: number;
  /** What a host I/O error does: fail the request (default) or pause the VM and retry later. */
  errorPolicy?: IoErrorPolicy;
  /** Called with policy 'stop' when a request fails; the VMM pauses the guest. */
  onIoError?: (device: string, error: Error) => void;
  log?: LogLine;
}

interface Parked { context: VirtioDeviceContext; queue: number; chain: DescriptorChain }

/** A read or write that passed every check: its byte range and its data buffers in guest memory. */
interface Transfer { isRead: boolean; offset: bigint; bytes: number; buffers: Uint8Array[] }

/**
 * A request whose header was read (once: the guest may rewrite it meanwhile, and what was
 * merged must be what runs), with its read or write checked.
 */
interface Request {
  chain: DescriptorChain;
  type: number;
  sector: bigint;
  /** A read or write that can run; undefined for other types and for refused ones. */
  transfer?: Transfer;
  /** Why a read or write is refused (VIRTIO_BLK_S_IOERR). */
  refused?: string;
}

/** A read or write of at least one sector: it may be merged with its neighbours. */
type Mergeable = Request & { transfer: Transfer; trace?: RequestTrace };

/** Merged requests stay within what one preadv/pwritev takes (IOV_MAX) and a few MiB. */
const MERGE_MAX_BUFFERS = 1024;
const MERGE_MAX_BYTES = 4 << 20;

/**
 * A completion of at least this many data bytes interrupts at once, even with other
 * requests in flight: large requests complete a few hundred times a second, too rarely for
 * a shared interrupt to save anything, while the driver (readahead, one or two requests
 * deep) waits for each.
 */
const INTERRUPT_AT_ONCE_BYTES = 64 * 1024;

/**
 * Whether a completion of `bytes` data bytes decides its interrupt at once rather than at
 * the end of the event-loop turn: when nothing else is in flight on its queue to share the
 * interrupt with (at low queue depth that wait is the driver's wait), or when it is large.
 */
function interruptAtOnce(othersInFlight: number, bytes: number): boolean {
  return othersInFlight === 0 || bytes >= INTERRUPT_AT_ONCE_BYTES;
}

/**
 * Every data buffer of a run, in order. A plain loop: Array.prototype.flatMap adds each
 * element through V8's generic property path, which cost more than the rest of the merge
 * for 256-buffer requests.
 */
function buffersOfRun(run: Mergeable[]): Uint8Array[] {
  const buffers: Uint8Array[] = [];
  for (const r of run) for (const b of r.transfer.buffers) buffers.push(b);
  return buffers;
}

function isMergeable(request: Request | undefined): request is Mergeable {
  return request?.transfer !== undefined && request.transfer.bytes > 0;
}

export class VirtioBlk implements VirtioDevice {
  readonly name: string;
  readonly deviceType = VIRTIO_ID_BLOCK;
  readonly pciClass = 0x010000;
  readonly queueSizes: number[];
  readonly features: bigint;
  readonly configSize = CONFIG_SIZE;
  private readonly config = new Uint8Array(CONFIG_SIZE);
  private readonly headerBytes = new Uint8Array(HEADER);
  private readonly headerView = new DataView(this.headerBytes.buffer);
  private readonly readOnly: boolean;
  private readonly serial: Uint8Array;
  private readonly capacityBytes: bigint;
  /** capacityBytes as a number, for the per-request check. */
  private readonly capacityNumber: number;
  private context: VirtioDeviceContext | undefined;
  private parked: Parked[] = [];
  private inFlightCount = 0;
  /** Requests taken from each queue and still running on the backend. */
  private queueBusy: number[];
  private pollWanted: boolean[];
  private pollImmediate: NodeJS.Immediate | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  /** Per-request timing (TSVIRT_BLK_TRACE=1); undefined, and free, otherwise. */
  private readonly tracer: BlkTracer | undefined;

  constructor(private readonly backend: BlockBackend, private readonly options: VirtioBlkOptions = {}) {
    this.name = options.name ?? 'virtio-blk0';
    this.tracer = blkTraceEnabled ? new BlkTracer(this.name) : undefined;
    const numQueues = options.numQueues ?? 1;
    const queueSize = options.queueSize ?? 256;
    if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > 64) throw new Error(`${this.name}: num_queues ${numQueues} is not in 1..64`);
    this.queueSizes = new Array<number>(numQueues).fill(queueSize);
    this.queueBusy = new Array<number>(numQueues).fill(0);
    this.pollWanted = new Array<boolean>(numQueues).fill(false);
    this.readOnly = backend.readOnly || options.readOnly === true;
    const serial = new TextEncoder().encode(options.serial ?? '');
    if (serial.length > ID_BYTES) throw new Error(`${this.name}: serial '${options.serial}' is longer than ${ID_BYTES} bytes`);
    this.serial = serial;
    const topo = backend.topology();
    const logical = options.logicalBlockSize ?? topo.logicalBlockSize;
    const physical = options.physicalBlockSize ?? Math.max(topo.physicalBlockSize, logical);
    const isPow2 = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
    if (!isPow2(logical) || logical < SECTOR || logical > 65536) {
      throw new Error(`${this.name}: logical_block_size ${logical} is not a power of two in 512..65536`);
    }
    if (!isPow2(physical) || physical < logical) {
      throw new Error(`${this.name}: physical_block_size ${physical} is not a power of two >= logical_block_size ${logical}`);
    }
    this.capacityBytes = backend.size() - (backend.size() % BigInt(SECTOR));
    this.capacityNumber = Number(this.capacityBytes);
    let features = bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH)
      | bit(VIRTIO_BLK_F_TOPOLOGY);
    if (numQueues > 1) features |= bit(VIRTIO_BLK_F_MQ);
    if (this.readOnly) features |= bit(VIRTIO_BLK_F_RO);
    else features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
    this.features = features;

    const dv = new DataView(this.config.buffer);
    dv.setBigUint64(0, this.capacityBytes / BigInt(SECTOR), true);
    dv.setUint32(12, Math.max(1, queueSize - 2), true); // seg_max: header and status take two descriptors
    dv.setUint32(20, logical, true);
    this.config[24] = Math.log2(physical / logical);
    this.config[25] = Math.min(255, Math.floor(topo.alignmentOffset / logical));
    dv.setUint16(26, Math.min(0xffff, Math.floor(topo.minimumIoSize / logical)), true);
    dv.setUint32(28, Math.floor(topo.optimalIoSize / logical), true);
    dv.setUint16(34, numQueues, true);
    dv.setUint32(36, MAX_DISCARD_SECTORS, true);
    dv.setUint32(40, 1, true);
    dv.setUint32(44, Math.max(1, Math.floor(Math.max(topo.discardGranularity, logical) / SECTOR)), true);
    dv.setUint32(48, MAX_DISCARD_SECTORS, true);
    dv.setUint32(52, 1, true);
    this.config[56] = 1;
  }

  /** Requests currently submitted to the backend. */
  get inFlight(): number { return this.inFlightCount; }
  /** Requests held back by the 'stop' policy, waiting for resume(). */
  get parkedRequests(): number { return this.parked.length; }

  readConfig(offset: number, data: Uint8Array): void {
    data.set(this.config.subarray(offset, offset + data.length));
  }

  writeConfig(): void {}

  activate(context: VirtioDeviceContext): void {
    this.context = context;
    for (const { queue, head } of this.restoredParked) {
      try {
        this.parked.push({ context, queue, chain: context.queues[queue]!.walk(head) });
      } catch (error) {
        context.fail(error as Error);
      }
    }
    this.restoredParked = [];
    for (let i = 0; i < this.queueSizes.length; i++) this.serviceQueue(i, 'activate');
  }

  reset(): void {
    this.context = undefined;
    this.parked = [];
    this.queueBusy.fill(0);
    this.pollWanted.fill(false);
    if (this.pollImmediate) clearImmediate(this.pollImmediate);
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.pollImmediate = undefined;
    this.pollTimer = undefined;
  }

  queueNotify(index: number): void {
    if (index >= this.queueSizes.length) return;
    this.serviceQueue(index, 'doorbell');
  }

  interruptDecided(queue: number, sent: boolean): void {
    this.tracer?.interrupt(queue, sent);
  }

  /**
   * Take every request available on the queue. While some are in flight the driver is asked
   * not to notify: each completion makes the device look at the ring again (pollSoon), so
   * the guest's later requests cost no doorbell exit and no wake-up of the notify thread.
   * When the last one completes, notifications are enabled again and the ring re-checked
   * for a buffer that raced with the change.
   */
  private serviceQueue(index: number, source: TakeSource): void {
    const context = this.context;
    if (!context) return;
    const q = context.queues[index];
    const pass = this.tracer?.pass(source);
    try {
      for (let round = 0; round < 2; round++) {
        const batch = takeAvailable(context, index);
        if (!context.live || !q?.ready) return;
        this.submit(context, index, batch, pass);
        if (!context.live) return;
        if (q.pendingCount() > 0) {
          // More than a queue's worth was waiting: take the rest on a later turn.
          this.pollSoon(index);
          if (this.queueBusy[index]! > 0) q.setNotification(false);
          return;
        }
        if (this.queueBusy[index]! > 0) {
          q.setNotification(false);
          this.armPollTimer();
          return;
        }
        // Requests done on the spot (runNow) left notifications off and a look at the ring
        // for the end of the turn: that look turns them back on.
        if (this.pollWanted[index]) return;
        q.setNotification(true);
        if (q.pendingCount() === 0) {
          this.stopPollTimerWhenIdle();
          return;
        }
      }
      // Buffers raced with enabling notifications twice in a row: the driver may not have
      // seen either, so take them on a later turn rather than wait for a doorbell.
      this.pollSoon(index);
    } catch (error) {
      context.fail(error as Error);
    }
  }

  /**
   * Start the requests taken in one pass. Reads (or writes) of consecutive sectors that the
   * driver queued together go to the backend as one vectored request, as one readv/writev
   * of all their buffers: sequential I/O then costs one thread-pool round trip per batch,
   * not per request. Anything else runs on its own.
   */
  private submit(context: VirtioDeviceContext, queue: number, chains: DescriptorChain[], pass?: ReturnType<BlkTracer['pass']>): void {
    // (No closure for the run: its variables would live in a heap context, which unoptimised
    // code, the usual state of this path for a short benchmark, pays for on every access.)
    let run: Mergeable[] = [];
    let runBytes = 0;
    let runBuffers = 0;
    for (const chain of chains) {
      const request = this.parse(context.memory, chain);
      if (!isMergeable(request)) {
        if (run.length > 0) {
          this.startRun(context, queue, run, runBytes);
          run = [];
          runBytes = 0;
          runBuffers = 0;
        }
        this.run(context, queue, chain, request, pass && this.tracer!.start(queue, pass, 'other', chain.readableBytes + chain.writableBytes, chain.readable.length + chain.writable.length));
        continue;
      }
      const t = request.transfer;
      if (pass) request.trace = this.tracer!.start(queue, pass, t.isRead ? 'read' : 'write', t.bytes, t.buffers.length);
      const last = run.length > 0 ? run[run.length - 1]!.transfer : undefined;
      if (last && (last.isRead !== t.isRead || last.offset + BigInt(last.bytes) !== t.offset
        || runBytes + t.bytes > MERGE_MAX_BYTES || runBuffers + t.buffers.length > MERGE_MAX_BUFFERS)) {
        this.startRun(context, queue, run, runBytes);
        run = [];
        runBytes = 0;
        runBuffers = 0;
      }
      run.push(request);
      runBytes += t.bytes;
      runBuffers += t.buffers.length;
    }
    if (run.length > 0) this.startRun(context, queue, run, runBytes);
  }

  /** Start a run of mergeable transfers: on the spot if it can be, else as one request or merged. */
  private startRun(context: VirtioDeviceContext, queue: number, run: Mergeable[], runBytes: number): void {
    if (this.runNow(context, queue, run, runBytes)) return;
    if (run.length === 1) this.run(context, queue, run[0]!.chain, run[0], run[0]!.trace);
    else this.runMerged(context, queue, run, runBytes);
  }

  /**
   * Read a request's header and check a read or write (its length, range, the disk's
   * read-only state), slicing its data buffers; undefined when the chain has no status byte
   * or too short a header (process() reports those).
   */
  private parse(memory: GuestMemory, chain: DescriptorChain): Request | undefined {
    if (chain.writableBytes < 1 || chain.readableBytes < HEADER) return undefined;
    let type: number;
    let sector: bigint;
    const h = chain.readable[0]!.bytes;
    if (h && h.length >= HEADER) {
      // The header in one buffer (as drivers place it), read in place: a copy through
      // gather() cost more, run unoptimised, than the rest of the parse.
      type = (h[0]! | (h[1]! << 8) | (h[2]! << 16) | (h[3]! << 24)) >>> 0;
      const low = (h[8]! | (h[9]! << 8) | (h[10]! << 16) | (h[11]! << 24)) >>> 0;
      const high = (h[12]! | (h[13]! << 8) | (h[14]! << 16) | (h[15]! << 24)) >>> 0;
      sector = high === 0 ? BigInt(low) : (BigInt(high) << 32n) | BigInt(low);
    } else {
      gather(memory, chain.readable, this.headerBytes);
      type = this.headerView.getUint32(0, true);
      sector = this.headerView.getBigUint64(8, true);
    }
    const request: Request = { chain, type, sector };
    if (type !== VIRTIO_BLK_T_IN && type !== VIRTIO_BLK_T_OUT) return request;
    const isRead = type === VIRTIO_BLK_T_IN;
    const bytes = isRead ? chain.writableBytes - 1 : chain.readableBytes - HEADER;
    const offset = sector * SECTOR_BIG;
    if (!isRead && this.readOnly) request.refused = 'write to a read-only disk';
    else if (bytes % SECTOR !== 0) request.refused = `data length ${bytes} is not a multiple of ${SECTOR}`;
    // In numbers first where they are exact (a disk below 2^53 bytes: a request whose end
    // rounds is past it anyway); BigInt decides otherwise, and words the refusal.
    else if (this.capacityNumber > Number.MAX_SAFE_INTEGER || Number(sector) * SECTOR + bytes > this.capacityNumber) {
      request.refused = this.beyondDisk(offset, BigInt(bytes));
    }
    if (request.refused === undefined) {
      const buffers = isRead ? sliceBuffers(memory, chain.writable, 0, bytes) : sliceBuffers(memory, chain.readable, HEADER, bytes);
      request.transfer = { isRead, offset, bytes, buffers };
    }
    return request;
  }

  /** Why `bytes` at byte `start` do not fit on the disk, or undefined when they do. */
  private beyondDisk(start: bigint, bytes: bigint): string | undefined {
    if (start + bytes <= this.capacityBytes) return undefined;
    return `sectors ${start / BigInt(SECTOR)}+${bytes / BigInt(SECTOR)} are beyond the disk's ${this.capacityBytes / BigInt(SECTOR)} sectors`;
  }

  /**
   * Complete a run of transfers (`runBytes` in all) on the spot when the backend can do the
   * I/O at once: no promise, no async frame and no microtask between the doorbell and the
   * interrupt, which under emulation cost more than the copy. The queue stays as it would
   * with the completion a microtask later: notifications off until the end of the turn, when
   * pollSoon looks at the ring again, so the driver's next requests still need no doorbell.
   * Only runs of 64 KiB or more, whose interrupt is decided at once either way: done on the
   * spot, small requests at queue depth 32 (fio in the lab) ran at two fifths of their IOPS
   * through the asynchronous path, whose completions land after the whole pass and share
   * the end of the turn's interrupt (same-run A/B, docs/design.md). False when the run is
   * small or the backend cannot (nothing was done; the caller runs the transfers).
   */
  private runNow(context: VirtioDeviceContext, queue: number, run: Mergeable[], runBytes: number): boolean {
    if (runBytes < INTERRUPT_AT_ONCE_BYTES) return false;
    const first = run[0]!.transfer;
    const backend = this.backend;
    if (!(first.isRead ? backend.readvNow : backend.writevNow)) return false;
    const buffers = run.length === 1 ? first.buffers : buffersOfRun(run);
    if (!(first.isRead ? backend.readvNow!(first.offset, buffers) : backend.writevNow!(first.offset, buffers))) return false;
    const q = context.queues[queue]!;
    if (!q.notificationsSuppressed) q.setNotification(false);
    // (Traced as submitted and completed at once: the I/O's time falls in the parse phase.)
    const traces = this.tracer && run.map((r) => r.trace!);
    if (traces) {
      this.tracer!.submitted(traces, this.queueBusy[queue]! + run.length, buffers.length);
      this.tracer!.completed(traces);
    }
    if (this.completeRun(context, queue, run, runBytes)) this.pollSoon(queue);
    return true;
  }

  /**
   * Give back a run whose I/O succeeded: each status OK and used element, the interrupt
   * decided with the last one. False when that failed the device.
   */
  private completeRun(context: VirtioDeviceContext, queue: number, run: Mergeable[], runBytes: number): boolean {
    const n = run.length;
    try {
      for (let i = 0; i < n; i++) {
        const { chain, transfer, trace } = run[i]!;
        setLastByte(context.memory, chain.writable, VIRTIO_BLK_S_OK);
        // (Traced before complete(), which may decide the interrupt at once.)
        if (trace) this.tracer!.used(queue, trace, this.queueBusy[queue]!);
        complete(context, queue, chain.head, (transfer.isRead ? transfer.bytes : 0) + 1, i === n - 1 && interruptAtOnce(this.queueBusy[queue]!, runBytes));
      }
    } catch (error) {
      context.fail(error as Error);
      return false;
    }
    return true;
  }

  /** Run merged transfers (`runBytes` in all) as one backend request; on an error, each runs again on its own. */
  private runMerged(context: VirtioDeviceContext, queue: number, run: Mergeable[], runBytes: number): void {
    const n = run.length;
    this.queueBusy[queue]! += n;
    this.inFlightCount += n;
    const buffers = buffersOfRun(run);
    const traces = this.tracer && run.map((r) => r.trace!);
    if (traces) this.tracer!.submitted(traces, this.queueBusy[queue]!, buffers.length);
    const first = run[0]!.transfer;
    const io = first.isRead ? this.backend.readv(first.offset, buffers) : this.backend.writev(first.offset, buffers);
    io.then(() => {
      this.inFlightCount -= n;
      if (traces) this.tracer!.completed(traces);
      if (this.context !== context || !context.live) return;
      this.queueBusy[queue]! -= n;
      if (this.completeRun(context, queue, run, runBytes)) this.pollSoon(queue);
    }, () => {
      // Which request failed is not known: run each alone, so every status (and the error
      // policy) is exactly what it would be unmerged.
      this.inFlightCount -= n;
      if (this.context !== context || !context.live) return;
      this.queueBusy[queue]! -= n;
      // (Untraced: their traces ended with the merged call.)
      for (const r of run) this.run(context, queue, r.chain, r);
    });
  }

  /** After a completion: look at the queue again at the end of this event-loop turn. */
  private pollSoon(index: number): void {
    this.pollWanted[index] = true;
    this.pollImmediate ??= setImmediate(() => {
      this.pollImmediate = undefined;
      for (let i = 0; i < this.pollWanted.length; i++) {
        if (!this.pollWanted[i]) continue;
        this.pollWanted[i] = false;
        this.serviceQueue(i, 'completion');
      }
    });
  }

  /**
   * Once no queue has a request in flight, the fallback timer has nothing to look for: left
   * armed, it would still wake the event loop once per request that armed it (each such
   * wake-up cost about a millisecond of the main thread's CPU in the lab).
   */
  private stopPollTimerWhenIdle(): void {
    if (!this.pollTimer || this.queueBusy.some((n) => n > 0)) return;
    clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
  }

  /** Whether the fallback timer is armed (for tests and diagnostics). */
  get fallbackPollArmed(): boolean {
    return this.pollTimer !== undefined;
  }

  // A request that takes long (a flush, a stalled host disk) must not hold back the ones the
  // guest adds meanwhile without notifying: while notifications are off, the rings are also
  // looked at every POLL_FALLBACK_MS.
  private armPollTimer(): void {
    if (this.pollTimer) return;
    this.pollTimer = setTimeout(() => {
      this.pollTimer = undefined;
      for (let i = 0; i < this.queueBusy.length; i++) if (this.queueBusy[i]! > 0) this.serviceQueue(i, 'timer');
    }, POLL_FALLBACK_MS);
    this.pollTimer.unref();
  }

  /** Retry the requests parked by the 'stop' error policy (call when the VM resumes). */
  resume(): void {
    const parked = this.parked;
    this.parked = [];
    for (const p of parked) this.run(p.context, p.queue, p.chain);
  }

  /**
   * Start a request, parsed already when `request` is given (a request resumed after a
   * pause is parsed again); anything unexpected fails the device instead of escaping as a
   * rejection.
   */
  private run(context: VirtioDeviceContext, queue: number, chain: DescriptorChain, request?: Request, trace?: RequestTrace): void {
    this.queueBusy[queue]!++;
    if (trace) this.tracer!.submitted([trace], this.queueBusy[queue]!, trace.segments);
    this.process(context, queue, chain, request, trace).then(() => {
      if (this.context !== context) return;
      // Parked requests ('stop' policy) count as done here: the VM is paused, and resume()
      // runs them again.
      this.queueBusy[queue]!--;
      this.pollSoon(queue);
    }, (error: unknown) => {
      context.fail(error instanceof Error ? error : new Error(String(error)));
    });
  }

  private fail(queue: number, chain: DescriptorChain, message: string): number {
    const address = BigInt(chain.readable[0]?.address ?? chain.writable[0]?.address ?? 0);
    (this.options.log ?? this.context?.log ?? (() => {}))(`${this.name}: queue ${queue}: request at guest address ${hex(address)}: ${message}`);
    return VIRTIO_BLK_S_IOERR;
  }

  /** Run a request to completion (or park it, under the 'stop' policy). */
  private async process(context: VirtioDeviceContext, queue: number, chain: DescriptorChain, parsed?: Request, trace?: RequestTrace): Promise<void> {
    const memory = context.memory;
    if (chain.writableBytes < 1) {
      // Nowhere to put a status: hand the buffers back untouched so the driver is not stuck.
      this.fail(queue, chain, 'has no writable status byte');
      complete(context, queue, chain.head, 0);
      return;
    }
    let status = VIRTIO_BLK_S_OK;
    let written = 0;
    let bytes = 0;
    if (chain.readableBytes < HEADER) {
      status = this.fail(queue, chain, `header is ${chain.readableBytes} bytes, needs ${HEADER}`);
    } else {
      const request = parsed ?? this.parse(memory, chain)!;
      bytes = request.transfer?.bytes ?? 0;
      this.inFlightCount++;
      try {
        ({ status, written } = await this.execute(memory, queue, request));
      } catch (error) {
        const err = error instanceof Error ? error : new Error(String(error));
        if (this.options.errorPolicy === 'stop' && context.live) {
          this.fail(queue, chain, `host I/O error, pausing: ${err.message}`);
          this.parked.push({ context, queue, chain });
          this.options.onIoError?.(this.name, err);
          return;
        }
        status = this.fail(queue, chain, `host I/O error: ${err.message}`);
        written = 0;
      } finally {
        this.inFlightCount--;
        if (trace) this.tracer!.completed([trace]);
      }
    }
    if (!context.live) return;
    try {
      setLastByte(memory, chain.writable, status);
    } catch (error) {
      context.fail(error as Error);
      return;
    }
    // queueBusy still counts this request until process() returns.
    const othersInFlight = this.queueBusy[queue]! - 1;
    if (trace) this.tracer!.used(queue, trace, othersInFlight);
    complete(context, queue, chain.head, written + 1, interruptAtOnce(othersInFlight, bytes));
  }

  /** Run one request; returns its status and how many data bytes went to the driver. */
  private async execute(memory: GuestMemory, queue: number, request: Request): Promise<{ status: number; written: number }> {
    const { chain, type } = request;
    const dataIn = chain.writableBytes - 1;
    const dataOut = chain.readableBytes - HEADER;
    const ioerr = (message: string): { status: number; written: number } => ({ status: this.fail(queue, chain, message), written: 0 });
    switch (type) {
      case VIRTIO_BLK_T_IN:
      case VIRTIO_BLK_T_OUT: {
        const t = request.transfer;
        if (!t) return ioerr(request.refused!);
        if (t.isRead) {
          await this.backend.readv(t.offset, t.buffers);
          return { status: VIRTIO_BLK_S_OK, written: t.bytes };
        }
        await this.backend.writev(t.offset, t.buffers);
        return { status: VIRTIO_BLK_S_OK, written: 0 };
      }
      case VIRTIO_BLK_T_FLUSH:
        await this.backend.flush();
        return { status: VIRTIO_BLK_S_OK, written: 0 };
      case VIRTIO_BLK_T_GET_ID: {
        const id = new Uint8Array(Math.min(ID_BYTES, dataIn));
        id.set(this.serial.subarray(0, id.length));
        scatter(memory, chain.writable, id);
        return { status: VIRTIO_BLK_S_OK, written: id.length };
      }
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES: {
        if (this.readOnly) return ioerr('discard or write-zeroes on a read-only disk');
        if (dataOut === 0 || dataOut % SEGMENT !== 0) return ioerr(`segment list of ${dataOut} bytes is not a multiple of ${SEGMENT}`);
        const segments = new Uint8Array(dataOut);
        gather(memory, chain.readable, segments, HEADER);
        const sv = new DataView(segments.buffer);
        for (let at = 0; at < dataOut; at += SEGMENT) {
          const start = sv.getBigUint64(at, true) * BigInt(SECTOR);
          const count = sv.getUint32(at + 8, true);
          const flags = sv.getUint32(at + 12, true);
          if (count > MAX_DISCARD_SECTORS) return ioerr(`segment of ${count} sectors exceeds the ${MAX_DISCARD_SECTORS} advertised`);
          const bytes = BigInt(count) * BigInt(SECTOR);
          const bad = this.beyondDisk(start, bytes);
          if (bad) return ioerr(bad);
          if (type === VIRTIO_BLK_T_DISCARD) await this.backend.discard(start, bytes);
          else await this.backend.writeZeroes(start, bytes, { mayUnmap: (flags & 1) !== 0 });
        }
        return { status: VIRTIO_BLK_S_OK, written: 0 };
      }
      default:
        return { status: VIRTIO_BLK_S_UNSUPP, written: 0 };
    }
  }

  /**
   * Save with the VM paused. Requests parked by the 'stop' policy are saved by head index
   * and retried on resume() after load; requests still running on the backend cannot be
   * saved, so the caller waits until inFlight is 0.
   */
  saveState(): unknown {
    if (this.inFlightCount > 0) throw new Error(`${this.name}: ${this.inFlightCount} requests in flight; drain before saving`);
    return {
      version: 1, capacity: this.capacityBytes.toString(),
      parked: this.parked.map((p) => ({ queue: p.queue, head: p.chain.head })),
    };
  }

  private restoredParked: Array<{ queue: number; head: number }> = [];

  loadState(state: unknown): void {
    const s = state as { version?: number; capacity?: string; parked?: Array<{ queue: number; head: number }> };
    if (s?.version !== 1) throw new Error(`${this.name}: unsupported virtio-blk state version ${String(s?.version)}`);
    if (s.capacity !== this.capacityBytes.toString()) {
      throw new Error(`${this.name}: saved capacity ${s.capacity} bytes differs from the disk's ${this.capacityBytes}`);
    }
    this.restoredParked = s.parked ?? [];
  }
}
