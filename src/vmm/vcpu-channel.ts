// The shared-memory protocol between the main thread and one vCPU thread.
//
// Each vCPU has a small Int32Array control block in a SharedArrayBuffer. The vCPU thread
// blocks in KVM_RUN; exits for devices that live on the main thread are handed over by
// bumping EXIT_SEQ (the main thread waits on it with Atomics.waitAsync, so no message is
// built or parsed) and the vCPU thread sleeps in Atomics.wait on DONE_SEQ until the main
// thread has written the answer straight into the vCPU's kvm_run page, which both threads
// have mapped. Commands that are rare (attach a vCPU fd, quit) travel as messages; the
// vCPU thread reads them synchronously while parked.

import type { VcpuExit } from '../kvm/vcpu.js';

// The control block's layout and run states live in a CommonJS module, so that the `tsvirt`
// launcher can start vCPU threads before any ES module loads (vcpu-threads.cts).
export {
  CTL_COMMAND_SEQ, CTL_DONE_SEQ, CTL_EXIT_SEQ, CTL_FORWARDED_EXITS, CTL_LOCAL_EXITS, CTL_PARKED, CTL_RUN_STATE,
  CTL_THREAD_ID, CTL_WORDS, PARK, QUIT, RUN,
} from './vcpu-control.cjs';

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

/**
 * Exits after which a vCPU simply runs again: a kick (pause, stop) or a spurious wake-up, an
 * open interrupt window, a halt KVM handed back. The run loop's head decides what comes next.
 */
export function runsOnAfter(exit: VcpuExit): boolean {
  return exit.reason === 'intr' || exit.reason === 'irq_window_open' || exit.reason === 'hlt';
}

/** A stopping exit as a 'stopped' report's detail: JSON, with addresses in hex. */
export function describeExit(exit: VcpuExit): string {
  return JSON.stringify(exit, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v instanceof Uint8Array ? [...v] : v));
}
