// The body of one vCPU thread: KVM_RUN in a loop. Exits of the serial console are served
// here, on the thread that took them, through the UART's shared register state; all other
// device exits are handed to the main thread through the control block (vcpu-channel.ts).
// Exits that end or reset the machine are reported and the thread parks until told what to do.
import { readlinkSync, writeFileSync } from 'node:fs';
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
// Direct module imports, not the kvm index: every vCPU thread is a fresh isolate that must
// load and compile what it imports, so the graph is kept to what KVM_RUN needs.
import { VcpuFd, type VcpuExit } from '../kvm/vcpu.js';
import { VmFd } from '../kvm/vm.js';
import { munmap, pthreadSelf } from '../kvm/libc.js';
import { Uart16550 } from '../devices/uart.js';
import { AcpiGpeBlock, monotonicMs, pm1Registers, PM_TMR_OFFSET, pmTimerValue, readPm1Registers } from '../devices/acpi-pm.js';
import { i8042StatusFrom } from '../devices/i8042.js';
import { PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_DATA_PORT, PciConfigMirror } from '../pci/config-mirror.js';
import { RtcRegisters } from '../devices/rtc.js';
import { ByteRing } from './byte-ring.js';
import {
  CTL_COMMAND_SEQ, CTL_DONE_SEQ, CTL_EXIT_SEQ, CTL_FORWARDED_EXITS, CTL_LOCAL_EXITS, CTL_PARKED, CTL_RUN_STATE,
  CTL_THREAD_ID, describeExit, PARK, QUIT, RUN, runsOnAfter, type VcpuCommand, type VcpuReport, type VcpuWorkerData,
} from './vcpu-channel.js';
import { bootTrace } from './boot-trace.js';
import { codeWarmedUp } from './bundles.cjs';

const data = workerData as VcpuWorkerData;
bootTrace(`vcpu${data.index}: modules loaded`);
let firstRun = true;
let firstUartExit = true;
const port = parentPort!;
const ctl = new Int32Array(data.control);
let vcpu: VcpuFd | null = null;
// The console UART, bound by `attach` (a thread may start before its machine exists).
let uart: Uart16550 | null = null;
let uartPort = -1;
let uartEnd = -1;
// Ports answered here besides the console (see VcpuLocalPorts).
let portClaims: Uint8Array | null = null;
let pmTimerPort = -1;
let pmTimer32 = false;
let rtc: RtcRegisters | null = null;
let rtcPort = -1;
let pm1Port = -1;
let pm1: Uint16Array | null = null;
let gpe: AcpiGpeBlock | null = null;
let gpePort = -1;
let i8042StatusPort = -1;
let i8042Status: Uint8Array | null = null;
let pciConfig: PciConfigMirror | null = null;

function report(r: VcpuReport): void {
  port.postMessage(r);
}

/** The kernel thread id of this thread ("/proc/thread-self" names it). */
function threadId(): number {
  try {
    return Number(readlinkSync('/proc/thread-self').split('/').pop());
  } catch {
    return 0;
  }
}

/**
 * Names the thread as QEMU names its vCPU threads ("CPU 0/KVM"), so `top -H`, /proc and the
 * virtio-blk trace tell it apart from Node's own threads, which are all called "node".
 */
function nameThread(index: number): void {
  try {
    writeFileSync('/proc/thread-self/comm', `CPU ${index}/KVM`);
  } catch {
    // No /proc: the name is only a diagnostic.
  }
}

function applyCommand(cmd: VcpuCommand): void {
  if (cmd.type === 'attach') {
    const vmFd = new VmFd(cmd.vmFd, cmd.mmapSize);
    // A second mapping of the same kvm_run page: the main thread keeps its own.
    vcpu = new VcpuFd(cmd.vcpuFd, cmd.id, cmd.mmapSize);
    const ring = new ByteRing(cmd.consoleRing);
    const irq = cmd.uartIrq;
    uart = new Uart16550(cmd.uartState, {
      transmit: (byte) => { ring.push(byte); },
      // The vCPU thread raises the console interrupt itself: KVM_IRQ_LINE on the VM fd is
      // valid in every thread.
      trigger: (level) => vmFd.irqLine(irq, level),
    });
    uartPort = cmd.uartPort;
    uartEnd = cmd.uartPort + 8;
    portClaims = new Uint8Array(cmd.portClaims);
    pmTimer32 = cmd.pmTimer32;
    rtc = new RtcRegisters(cmd.rtcState);
    rtcPort = cmd.rtcPort;
    pm1Port = cmd.pm1Port;
    pmTimerPort = cmd.pm1Port + PM_TMR_OFFSET;
    pm1 = pm1Registers(cmd.pmState);
    gpe = new AcpiGpeBlock(cmd.gpeLength, cmd.gpeState);
    gpePort = cmd.gpePort;
    i8042StatusPort = cmd.i8042StatusPort;
    i8042Status = new Uint8Array(cmd.i8042State);
    pciConfig = cmd.pciConfig ? new PciConfigMirror(cmd.pciConfig) : null;
  } else if (cmd.type === 'detach' && vcpu) {
    munmap(vcpu.runAddress, vcpu.mmapSize);
    vcpu = null;
  }
}

/** Sleep until the main thread wants this vCPU running (returns false to quit). */
function park(): boolean {
  if (vcpu) vcpu.immediateExit = false;
  Atomics.store(ctl, CTL_PARKED, 1);
  Atomics.notify(ctl, CTL_PARKED);
  for (;;) {
    const seen = Atomics.load(ctl, CTL_COMMAND_SEQ);
    for (let m = receiveMessageOnPort(port as never); m; m = receiveMessageOnPort(port as never)) {
      applyCommand(m.message as VcpuCommand);
    }
    const state = Atomics.load(ctl, CTL_RUN_STATE);
    if (state === QUIT) return false;
    if (state === RUN && vcpu) {
      // Clear a kick that arrived while parked, so the first KVM_RUN really runs.
      vcpu.immediateExit = false;
      Atomics.store(ctl, CTL_PARKED, 0);
      Atomics.notify(ctl, CTL_PARKED);
      return true;
    }
    Atomics.wait(ctl, CTL_COMMAND_SEQ, seen);
  }
}

function serveUart(uart: Uart16550, exit: Extract<VcpuExit, { reason: 'io' }>): void {
  const offset = exit.port - uartPort;
  for (let i = 0; i < exit.count; i++) {
    const bytes = exit.data.subarray(i * exit.size, (i + 1) * exit.size);
    if (exit.direction === 'in') uart.read(offset, bytes);
    else uart.write(offset, bytes);
  }
}

/**
 * Answer a port exit that needs no main thread: the PM timer (a count of the host's
 * monotonic clock, the same the main thread's ACPI block reads), registers the main thread
 * keeps in shared memory (RTC, ACPI PM1 and GPE0, the i8042's status, PCI config space)
 * where the access has no side effect, and ports no device claims (reads float to all ones,
 * writes are dropped, as on the port bus). False: forward it.
 */
function serveLocalPort(exit: Extract<VcpuExit, { reason: 'io' }>): boolean {
  if (exit.port === pmTimerPort && exit.direction === 'in' && exit.size === 4) {
    for (let i = 0; i < exit.count; i++) {
      new DataView(exit.data.buffer, exit.data.byteOffset + i * 4, 4).setUint32(0, pmTimerValue(monotonicMs(), pmTimer32), true);
    }
    return true;
  }
  if (rtc && exit.count === 1 && (exit.port === rtcPort || exit.port === rtcPort + 1)) return serveRtc(rtc, exit);
  // ACPI's start-up reads the PM1 registers and programs GPE0, the i8042 driver polls the
  // controller's status: none of these reads (nor GPE0's writes) changes anything else.
  if (exit.count === 1) {
    if (pm1 && exit.direction === 'in' && exit.port >= pm1Port && exit.port < pmTimerPort) {
      return readPm1Registers(pm1, exit.port - pm1Port, exit.data);
    }
    if (gpe && exit.port >= gpePort && exit.port < gpePort + gpe.length) {
      if (exit.direction === 'in') gpe.read(exit.port - gpePort, exit.data);
      else gpe.write(exit.port - gpePort, exit.data);
      return true;
    }
    // PCI config reads and the address latch (Linux uses the ports for the first 256 bytes).
    if (pciConfig && exit.port >= PCI_CONFIG_ADDRESS_PORT && exit.port <= PCI_CONFIG_DATA_PORT + 3
      && pciConfig.servePort(exit.port, exit.direction === 'in', exit.data)) {
      return true;
    }
    if (i8042Status && exit.direction === 'in' && exit.port === i8042StatusPort) {
      exit.data.fill(0);
      exit.data[0] = i8042StatusFrom(i8042Status);
      return true;
    }
  }
  // The port bus routes an access by its first port alone (a dword at 0xcf8 is not the reset
  // register at 0xcf9): so does this.
  if (!portClaims || portClaims[exit.port] !== 0) return false;
  if (exit.direction === 'in') exit.data.fill(0xff);
  return true;
}

/**
 * The RTC's index port, and reads of its data port without side effects (RtcRegisters);
 * data writes and reads of register C go to the main thread's chip.
 */
function serveRtc(registers: RtcRegisters, exit: Extract<VcpuExit, { reason: 'io' }>): boolean {
  if (exit.port === rtcPort) {
    if (exit.direction === 'out') registers.index = exit.data[0]!;
    else {
      exit.data.fill(0);
      exit.data[0] = registers.index;
    }
    return true;
  }
  if (exit.direction === 'out') return false;
  const value = registers.peekRegister(registers.index);
  if (value === undefined) return false;
  exit.data.fill(0);
  exit.data[0] = value;
  return true;
}

/** Hand the current exit to the main thread and wait until it has been completed. */
function forward(): void {
  const seq = (Atomics.load(ctl, CTL_EXIT_SEQ) + 1) | 0;
  Atomics.store(ctl, CTL_EXIT_SEQ, seq);
  Atomics.notify(ctl, CTL_EXIT_SEQ);
  // Wait on the very value that was checked: loading it afresh for Atomics.wait would lose a
  // completion that lands between the check and the wait, and sleep on it for ever.
  for (let done = Atomics.load(ctl, CTL_DONE_SEQ); done !== seq; done = Atomics.load(ctl, CTL_DONE_SEQ)) {
    Atomics.wait(ctl, CTL_DONE_SEQ, done);
  }
  Atomics.add(ctl, CTL_FORWARDED_EXITS, 1);
}

function loop(): void {
  nameThread(data.index);
  report({ type: 'ready', index: data.index, thread: pthreadSelf(), threadId: threadId() });
  Atomics.store(ctl, CTL_THREAD_ID, threadId());
  for (;;) {
    if (Atomics.load(ctl, CTL_RUN_STATE) !== RUN || !vcpu) {
      if (!park()) return;
      continue;
    }
    let exit: VcpuExit;
    if (firstRun) {
      firstRun = false;
      bootTrace(`vcpu${data.index}: first KVM_RUN`);
    }
    try {
      exit = vcpu.runOnce();
    } catch (err) {
      // An application processor still waiting for its SIPI returns EAGAIN from KVM_RUN
      // after the in-kernel LAPIC woke it (INIT received): just run it again.
      if ((err as { code?: string }).code === 'EAGAIN') continue;
      report({ type: 'error', index: data.index, message: (err as Error).message });
      Atomics.store(ctl, CTL_RUN_STATE, PARK);
      continue;
    }
    switch (exit.reason) {
      case 'io':
        if (uart && exit.port >= uartPort && exit.port < uartEnd) {
          if (firstUartExit) {
            firstUartExit = false;
            bootTrace(`vcpu${data.index}: first UART exit`);
            // The exit path has run: the thread's code cache can take it in (bundles.cts).
            codeWarmedUp();
          }
          serveUart(uart, exit);
          Atomics.add(ctl, CTL_LOCAL_EXITS, 1);
        } else if (serveLocalPort(exit)) {
          Atomics.add(ctl, CTL_LOCAL_EXITS, 1);
        } else {
          forward();
        }
        break;
      case 'mmio':
        forward();
        break;
      default:
        if (runsOnAfter(exit)) break;
        report({ type: 'stopped', index: data.index, reason: exit.reason, detail: describeExit(exit) });
        Atomics.store(ctl, CTL_RUN_STATE, PARK);
    }
  }
}

loop();
if (vcpu) munmap((vcpu as VcpuFd).runAddress, (vcpu as VcpuFd).mmapSize);
port.close();
