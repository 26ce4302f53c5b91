// The machine-side interface of QMP: what the monitor needs from a running VM. The VMM's
// Machine implements it structurally, so src/qmp never imports src/vmm (control plane sits
// above the VMM) and tests can serve a real VM or any other object of this shape.

/** QEMU's RunState enumeration, spelled as on the wire (query-status "status"). */
export type RunState = 'prelaunch' | 'running' | 'paused' | 'shutdown' | 'internal-error' | 'io-error' | 'suspended'
  | 'inmigrate' | 'postmigrate' | 'finish-migrate' | 'restore-vm' | 'save-vm' | 'guest-panicked' | 'watchdog' | 'debug';

export interface QmpCpuInfo {
  cpuIndex: number;
  /** Host thread id running the vCPU (QEMU's "thread-id"). */
  threadId: number;
  qomPath: string;
  socketId: number;
  coreId: number;
  /** Topology thread id within the core (QEMU's props."thread-id"). */
  threadId_: number;
  target: 'x86_64';
}

export interface QmpBlockInfo {
  device: string;
  qdev: string;
  removable: boolean;
  locked: boolean;
  readOnly: boolean;
  filename: string;
  format: string;
  virtualSize: number;
  cache: { writeback: boolean; direct: boolean; noFlush: boolean };
}

export interface QmpPciDevice {
  bus: number;
  slot: number;
  function: number;
  vendorId: number;
  deviceId: number;
  /** The 24-bit class code of config space (class, subclass, programming interface). */
  classCode: number;
  subsystemVendorId: number;
  subsystemId: number;
  qdevId: string;
  /** Legacy interrupt line, when the device uses INTx. */
  irq?: number;
  bars: Array<{ bar: number; type: 'memory' | 'io'; address: number; size: number; prefetch?: boolean; memType64?: boolean }>;
}

export interface QmpTarget {
  /** --name, for query-name. */
  readonly name: string | undefined;
  /** For query-uuid. */
  readonly uuid: string;
  runState(): RunState;
  /** Emits 'stop'. */
  pause(): Promise<void>;
  /** Emits 'resume'. */
  resume(): Promise<void>;
  /** Host-initiated; emits 'reset' {guest:false, reason:'host-qmp-system-reset'}. */
  reset(): Promise<void>;
  /** ACPI power button; emits 'powerdown'. */
  powerdown(): Promise<void>;
  /** Emits 'shutdown' {guest:false, reason:'host-qmp-quit'} and ends the VM. */
  quit(): Promise<void>;
  cpus(): QmpCpuInfo[];
  blockDevices(): QmpBlockInfo[];
  pciDevices(): QmpPciDevice[];
  on(event: 'stop' | 'resume' | 'powerdown', listener: () => void): unknown;
  on(event: 'reset' | 'shutdown', listener: (info: { guest: boolean; reason: string }) => void): unknown;
  // Overloads like on()'s, so that a class extending EventEmitter satisfies the interface.
  off(event: 'stop' | 'resume' | 'powerdown', listener: () => void): unknown;
  off(event: 'reset' | 'shutdown', listener: (info: { guest: boolean; reason: string }) => void): unknown;
}
