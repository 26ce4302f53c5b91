// virtio-console with VIRTIO_CONSOLE_F_MULTIPORT (virtio 1.x, section 5.3): named ports the
// guest sees as /dev/vportNpM (names in /sys/class/virtio-ports/*/name), each backed on the
// host by a PortBackend (a unix socket server, a stream), plus an optional console port.
//
// Queues: 0/1 are port 0's receive/transmit, 2/3 the control receive/transmit queues, and
// port N >= 1 uses 2+2N / 3+2N. Port 0 is reserved for the console; named ports are 1..N.
// Backpressure both ways: host data waits (and the backend is paused) while the guest has
// no receive buffers or has not opened the port; guest data stays in the transmit queue
// while the backend reports it is full.
import { type LogLine, logToStderr } from '../pci/interrupt.js';
import {
  bit, complete, drainQueue, VIRTIO_ID_CONSOLE, type VirtioDevice, type VirtioDeviceContext,
} from './device.js';
import { gather, scatter } from './queue.js';

export const VIRTIO_CONSOLE_F_MULTIPORT = 1n;

export const VIRTIO_CONSOLE_DEVICE_READY = 0;
export const VIRTIO_CONSOLE_DEVICE_ADD = 1;
export const VIRTIO_CONSOLE_DEVICE_REMOVE = 2;
export const VIRTIO_CONSOLE_PORT_READY = 3;
export const VIRTIO_CONSOLE_CONSOLE_PORT = 4;
export const VIRTIO_CONSOLE_RESIZE = 5;
export const VIRTIO_CONSOLE_PORT_OPEN = 6;
export const VIRTIO_CONSOLE_PORT_NAME = 7;

const CONTROL_RX = 2;
const CONTROL_TX = 3;
const CONTROL_HEADER = 8;
/** Host bytes held for the guest before the backend is paused. */
const HIGH_WATER = 64 * 1024;
const MAX_CONTROL_OUTBOX = 1024;

/** The device side of a port, as its backend sees it. */
export interface PortEndpoint {
  readonly name: string;
  /** Bytes from the host for the guest. */
  fromHost(data: Uint8Array): void;
  /** A host peer connected or went away (PORT_OPEN 1/0 to the guest). */
  hostConnected(connected: boolean): void;
  /** The backend can take guest data again after write() returned false. */
  hostDrained(): void;
}

/** The host side of a port. */
export interface PortBackend {
  start(port: PortEndpoint): Promise<void>;
  /** Guest data for the host; false when the backend is full (wait for hostDrained()). */
  write(data: Uint8Array): boolean;
  /** Stop / restart delivering host data (backpressure towards the host). */
  pauseInput(): void;
  resumeInput(): void;
  close(): Promise<void>;
}

export interface PortConfig {
  name: string;
  backend: PortBackend;
}

export interface VirtioConsoleOptions {
  name?: string;
  ports: PortConfig[];
  /** Port 0 as the guest console (hvc0). */
  console?: PortBackend;
  queueSize?: number;
  log?: LogLine;
}

class Port implements PortEndpoint {
  guestReady = false;
  guestOpen = false;
  host = false;
  blocked = false;
  inputPaused = false;
  pending: Uint8Array[] = [];
  pendingBytes = 0;

  constructor(readonly id: number, readonly name: string, readonly backend: PortBackend, readonly isConsole: boolean,
    private readonly owner: VirtioConsole) {}

  get rxQueue(): number { return this.id === 0 ? 0 : 2 + 2 * this.id; }
  get txQueue(): number { return this.id === 0 ? 1 : 3 + 2 * this.id; }

  fromHost(data: Uint8Array): void {
    if (data.length === 0) return;
    this.pending.push(data);
    this.pendingBytes += data.length;
    this.owner.flushToGuest(this);
  }

  hostConnected(connected: boolean): void {
    this.host = connected;
    if (!connected) {
      this.pending = [];
      this.pendingBytes = 0;
      this.blocked = false;
    }
    this.owner.hostConnectionChanged(this);
  }

  hostDrained(): void {
    this.blocked = false;
    this.owner.queueNotify(this.txQueue);
  }
}

export class VirtioConsole implements VirtioDevice {
  readonly name: string;
  readonly deviceType = VIRTIO_ID_CONSOLE;
  readonly pciClass = 0x078000;
  readonly queueSizes: number[];
  readonly features = bit(VIRTIO_CONSOLE_F_MULTIPORT);
  readonly configSize = 12;
  private readonly config = new Uint8Array(12);
  private readonly ports: Port[] = [];
  private readonly log: LogLine;
  private context: VirtioDeviceContext | undefined;
  private outbox: Uint8Array[] = [];

  constructor(options: VirtioConsoleOptions) {
    this.name = options.name ?? 'virtio-serial0';
    this.log = options.log ?? logToStderr;
    const seen = new Set<string>();
    for (const p of options.ports) {
      if (!/^[A-Za-z0-9._-]{1,127}$/.test(p.name)) throw new Error(`${this.name}: port name '${p.name}' must be 1-127 of [A-Za-z0-9._-]`);
      if (seen.has(p.name)) throw new Error(`${this.name}: port name '${p.name}' is used twice`);
      seen.add(p.name);
    }
    if (options.console) this.ports.push(new Port(0, '', options.console, true, this));
    options.ports.forEach((p, i) => this.ports.push(new Port(i + 1, p.name, p.backend, false, this)));
    const maxPorts = options.ports.length + 1;
    const queueSize = options.queueSize ?? 128;
    this.queueSizes = new Array<number>(2 * maxPorts + 2).fill(queueSize);
    const dv = new DataView(this.config.buffer);
    dv.setUint16(0, 80, true);
    dv.setUint16(2, 25, true);
    dv.setUint32(4, maxPorts, true);
  }

  /** Start every backend (listening sockets appear now, before the guest boots). */
  async start(): Promise<void> {
    for (const p of this.ports) await p.backend.start(p);
  }

  async close(): Promise<void> {
    for (const p of this.ports) await p.backend.close();
  }

  /** Port state for diagnostics and tests. */
  portState(name: string): { guestReady: boolean; guestOpen: boolean; hostConnected: boolean; pendingBytes: number } | undefined {
    const p = this.ports.find((x) => x.name === name || (name === 'console' && x.isConsole));
    return p && { guestReady: p.guestReady, guestOpen: p.guestOpen, hostConnected: p.host, pendingBytes: p.pendingBytes };
  }

  readConfig(offset: number, data: Uint8Array): void {
    data.set(this.config.subarray(offset, offset + data.length));
  }

  writeConfig(): void {}

  activate(context: VirtioDeviceContext): void {
    this.context = context;
    if (!(context.features & bit(VIRTIO_CONSOLE_F_MULTIPORT))) {
      this.log(`${this.name}: driver did not accept MULTIPORT; only the console port works`);
      const console = this.ports.find((p) => p.isConsole);
      if (console) console.guestReady = console.guestOpen = true;
    }
    this.queueNotify(CONTROL_TX);
  }

  reset(): void {
    this.context = undefined;
    this.outbox = [];
    for (const p of this.ports) {
      p.guestReady = false;
      p.guestOpen = false;
      p.blocked = false;
    }
  }

  private portOfQueue(index: number): Port | undefined {
    if (index < 2) return this.ports.find((p) => p.id === 0);
    const id = index >> 1;
    return this.ports.find((p) => p.id === id - 1 && p.id !== 0);
  }

  queueNotify(index: number): void {
    const context = this.context;
    if (!context) return;
    if (index === CONTROL_TX) return this.readControl(context);
    if (index === CONTROL_RX) return this.flushControl(context);
    const port = this.portOfQueue(index);
    if (!port) {
      // A queue with no port behind it: hand buffers back empty so the driver is not stuck.
      drainQueue(context, index, (chain) => {
        complete(context, index, chain.head, 0);
        return true;
      });
      return;
    }
    if (index === port.rxQueue) this.flushToGuest(port);
    else this.readFromGuest(context, port);
  }

  // ---- data ----

  flushToGuest(port: Port): void {
    const context = this.context;
    if (context && port.guestOpen && port.pending.length > 0) {
      drainQueue(context, port.rxQueue, (chain) => {
        if (port.pending.length === 0) return false;
        let written = 0;
        while (port.pending.length > 0 && written < chain.writableBytes) {
          const head = port.pending[0]!;
          const n = scatter(context.memory, chain.writable, head, written);
          written += n;
          if (n < head.length) port.pending[0] = head.subarray(n);
          else port.pending.shift();
        }
        port.pendingBytes -= written;
        complete(context, port.rxQueue, chain.head, written);
        return true;
      });
    }
    if (port.pendingBytes > HIGH_WATER && !port.inputPaused) {
      port.inputPaused = true;
      port.backend.pauseInput();
    } else if (port.pendingBytes <= HIGH_WATER / 2 && port.inputPaused) {
      port.inputPaused = false;
      port.backend.resumeInput();
    }
  }

  private readFromGuest(context: VirtioDeviceContext, port: Port): void {
    drainQueue(context, port.txQueue, (chain) => {
      if (port.blocked) return false;
      const data = new Uint8Array(chain.readableBytes);
      gather(context.memory, chain.readable, data);
      // With no host peer the bytes have nowhere to go; drop them like a serial line would.
      if (port.host && !port.backend.write(data)) port.blocked = true;
      complete(context, port.txQueue, chain.head, 0);
      return true;
    });
  }

  hostConnectionChanged(port: Port): void {
    if (!port.isConsole && port.guestReady) this.sendControl(port.id, VIRTIO_CONSOLE_PORT_OPEN, port.host ? 1 : 0);
  }

  // ---- control ----

  private sendControl(id: number, event: number, value: number, extra?: Uint8Array): void {
    const context = this.context;
    if (!context) return;
    const msg = new Uint8Array(CONTROL_HEADER + (extra?.length ?? 0));
    const dv = new DataView(msg.buffer);
    dv.setUint32(0, id, true);
    dv.setUint16(4, event, true);
    dv.setUint16(6, value, true);
    if (extra) msg.set(extra, CONTROL_HEADER);
    if (this.outbox.length >= MAX_CONTROL_OUTBOX) {
      this.log(`${this.name}: control queue full (driver posts no buffers); dropping event ${event} for port ${id}`);
      return;
    }
    this.outbox.push(msg);
    this.flushControl(context);
  }

  private flushControl(context: VirtioDeviceContext): void {
    if (this.outbox.length === 0) return;
    drainQueue(context, CONTROL_RX, (chain) => {
      const msg = this.outbox[0];
      if (!msg) return false;
      this.outbox.shift();
      if (chain.writableBytes < msg.length) {
        this.log(`${this.name}: control buffer of ${chain.writableBytes} bytes is too small for a ${msg.length}-byte message`);
      }
      complete(context, CONTROL_RX, chain.head, scatter(context.memory, chain.writable, msg));
      return true;
    });
  }

  private readControl(context: VirtioDeviceContext): void {
    drainQueue(context, CONTROL_TX, (chain) => {
      const msg = new Uint8Array(Math.min(chain.readableBytes, CONTROL_HEADER));
      gather(context.memory, chain.readable, msg);
      complete(context, CONTROL_TX, chain.head, 0);
      if (msg.length < CONTROL_HEADER) {
        this.log(`${this.name}: control message of ${chain.readableBytes} bytes is shorter than ${CONTROL_HEADER}`);
        return true;
      }
      const dv = new DataView(msg.buffer);
      this.handleControl(dv.getUint32(0, true), dv.getUint16(4, true), dv.getUint16(6, true));
      return true;
    });
  }

  private handleControl(id: number, event: number, value: number): void {
    if (event === VIRTIO_CONSOLE_DEVICE_READY) {
      if (value !== 1) return this.log(`${this.name}: driver reports device setup failed`);
      for (const p of this.ports) this.sendControl(p.id, VIRTIO_CONSOLE_DEVICE_ADD, 1);
      return;
    }
    const port = this.ports.find((p) => p.id === id);
    if (!port) return this.log(`${this.name}: control event ${event} for unknown port ${id}`);
    switch (event) {
      case VIRTIO_CONSOLE_PORT_READY:
        if (value !== 1) return this.log(`${this.name}: driver failed to add port ${id}`);
        port.guestReady = true;
        if (port.isConsole) {
          this.sendControl(id, VIRTIO_CONSOLE_CONSOLE_PORT, 1);
          // A console port counts as open on both ends as soon as the guest has it.
          port.guestOpen = true;
          this.flushToGuest(port);
        } else {
          this.sendControl(id, VIRTIO_CONSOLE_PORT_NAME, 1, new TextEncoder().encode(`${port.name}\0`));
          if (port.host) this.sendControl(id, VIRTIO_CONSOLE_PORT_OPEN, 1);
        }
        return;
      case VIRTIO_CONSOLE_PORT_OPEN:
        port.guestOpen = value === 1;
        if (port.guestOpen) this.flushToGuest(port);
        return;
      default:
        this.log(`${this.name}: unexpected control event ${event} for port ${id}`);
    }
  }

  saveState(): unknown {
    return {
      version: 1,
      ports: this.ports.map((p) => ({ id: p.id, guestReady: p.guestReady, guestOpen: p.guestOpen })),
      outbox: this.outbox.map((m) => [...m]),
    };
  }

  loadState(state: unknown): void {
    const s = state as { version?: number; ports?: Array<{ id: number; guestReady: boolean; guestOpen: boolean }>; outbox?: number[][] };
    if (s?.version !== 1) throw new Error(`${this.name}: unsupported virtio-console state version ${String(s?.version)}`);
    for (const saved of s.ports ?? []) {
      const p = this.ports.find((x) => x.id === saved.id);
      if (!p) throw new Error(`${this.name}: saved state has port ${saved.id}, which this device lacks`);
      p.guestReady = saved.guestReady;
      p.guestOpen = saved.guestOpen;
    }
    this.outbox = (s.outbox ?? []).map((m) => Uint8Array.from(m));
  }
}
