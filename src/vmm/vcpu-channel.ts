// The shared-memory protocol between the main thread and one vCPU thread.
//
// Each vCPU has a small Int32Array control block in a SharedArrayBuffer. The vCPU thread
// blocks in KVM_RUN; exits for devices that live on the main thread are handed over by
// bumping EXIT_SEQ (the main thread waits on it with Atomics.waitAsync, so no message is
// built or parsed) and the vCPU thread sleeps in Atomics.wait on DONE_SEQ until the main
// thread has written the answer straight into the vCPU's kvm_run page, which both threads
// have mapped. Commands that are rare (attach a vCPU fd, quit) travel as messages; the
// vCPU thread reads them synchronously while parked.

/** Desired state, written by the main thread. */
export const CTL_RUN_STATE = 0;
/** 1 while the vCPU thread is parked (not in KVM_RUN), written by the vCPU thread. */
export const CTL_PARKED = 1;
/** Incremented by the vCPU thread for each exit it hands to the main thread. */
export const CTL_EXIT_SEQ = 2;
/** Set to EXIT_SEQ by the main thread when that exit is complete. */
export const CTL_DONE_SEQ = 3;
/** Incremented by the main thread whenever RUN_STATE changes or a command is posted. */
export const CTL_COMMAND_SEQ = 4;
/** Statistics: exits handled on the vCPU thread / handed to the main thread. */
export const CTL_LOCAL_EXITS = 5;
export const CTL_FORWARDED_EXITS = 6;
/** The vCPU thread's Linux thread id (for QMP query-cpus-fast). */
export const CTL_THREAD_ID = 7;
export const CTL_WORDS = 8;

export const RUN = 0;
export const PARK = 1;
export const QUIT = 2;

/** Signal that kicks a vCPU thread out of KVM_RUN (see Machine for why a handler exists). */
export const KICK_SIGNAL = 'SIGUSR2';
export const KICK_SIGNAL_NUMBER = 12;

/**
 * What a vCPU thread is started with. Nothing machine-specific: a thread can be started
 * before its machine exists (so its isolate boots while the main thread loads modules and
 * builds the VM) and gets everything else with `attach`.
 */
export interface VcpuWorkerData {
  index: number;
  control: SharedArrayBuffer;
  /** The process's start (the main thread's performance.timeOrigin), for boot-trace.ts. */
  traceOrigin: number;
}

/** The machine's console UART as the vCPU thread serves it: shared registers and output ring. */
export interface VcpuUartBinding {
  uartState: SharedArrayBuffer;
  consoleRing: SharedArrayBuffer;
  /** Port range start and ISA IRQ of the UART the vCPU thread serves itself. */
  uartPort: number;
  uartIrq: number;
}

/** Port exits the vCPU thread answers without the main thread besides the console's. */
export interface VcpuLocalPorts {
  /** The port bus's claims map (Bus.claimsMap): a port marked 0 has no device. */
  portClaims: SharedArrayBuffer;
  /** Whether the ACPI PM timer (in the PM1 block below) counts 32 bits rather than 24. */
  pmTimer32: boolean;
  /** The RTC's shared registers (RtcRegisters) and its index port (the data port follows). */
  rtcState: SharedArrayBuffer;
  rtcPort: number;
  /**
   * The ACPI PM1 block's first port and its shared registers: reads of its event and control
   * registers, and of its timer (a count of the host's monotonic clock).
   */
  pm1Port: number;
  pmState: SharedArrayBuffer;
  /** The ACPI GPE0 block, served whole (it has no side effects beyond its bytes). */
  gpePort: number;
  gpeLength: number;
  gpeState: SharedArrayBuffer;
  /** The i8042's status port and the status register it publishes (I8042). */
  i8042StatusPort: number;
  i8042State: SharedArrayBuffer;
  /** With a PCI host bridge: its shared config space and 0xCF8 latch (PciConfigMirror). */
  pciConfig?: SharedArrayBuffer;
}

export type VcpuCommand =
  | ({ type: 'attach'; vmFd: number; vcpuFd: number; id: number; mmapSize: number } & VcpuUartBinding & VcpuLocalPorts)
  | { type: 'detach' };

/** What a vCPU thread reports to the main thread (rare events only). */
export type VcpuReport =
  | { type: 'ready'; index: number; thread: bigint; threadId: number }
  | { type: 'stopped'; index: number; reason: string; detail: string }
  | { type: 'error'; index: number; message: string };
