// The machine: guest RAM, the KVM VM with its in-kernel irqchip and PIT, the legacy devices,
// one thread per vCPU, and the lifecycle around them (start, pause/resume, reset, power off,
// stop). It implements QMP's QmpTarget, so the monitor drives it without knowing it.
//
// Threads. Each vCPU runs in its own worker thread blocked in KVM_RUN. The serial console's
// registers live in shared memory, so its exits (two per printed character under Linux) are
// completed on the vCPU thread itself; every other device lives here on the main thread and
// gets its exits through a shared-memory mailbox per vCPU (vcpu-channel.ts). See
// docs/design.md for the measurements behind this split.
import { EventEmitter } from 'node:events';
import { closeSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
// Direct module imports, not the kvm index: the index also loads the micro-guest and
// loop-guest tools, which a Linux boot does not need (start-up time, docs/design.md).
import { KVM_MP_STATE, KVM_PIT_SPEAKER_DUMMY, KVM_SYSTEM_EVENT } from '../kvm/abi.js';
import { Kvm } from '../kvm/system.js';
import type { VcpuExit, VcpuFd } from '../kvm/vcpu.js';
import type { VmFd } from '../kvm/vm.js';
import { installKickHandler, kickThread } from '../kvm/kick.js';
import {
  ACPI_GPE0_LENGTH, ACPI_GPE0_PORT, ACPI_PM_BASE, ACPI_RESET_PORT, ACPI_S5_SLEEP_TYPE, ACPI_SCI_IRQ, COM1_IRQ, COM1_PORT,
  I8042_COMMAND_PORT, I8042_DATA_PORT, lowRamEnd, highRamSize, RTC_IRQ, RTC_PORT, RTC_PORT_COUNT, UART_PORT_COUNT,
} from '../arch/x86/layout.js';
import { isBzImage, loadLinux, KernelLoadError } from '../arch/x86/linux-loader.js';
import { elideLockPrefixes, kernelElidesLocks, lockPrefixSites } from '../arch/x86/smp-locks.js';
import { KernelPayloadError } from '../arch/x86/kernel-payload.js';
import { type UnpackedKernel, unpackedKernelFor } from './kernel-cache.js';
import { buildAcpiTables } from '../arch/x86/acpi/build-tables.js';
import { Bus } from '../devices/bus.js';
import { Uart16550, UART_STATE_BYTES } from '../devices/uart.js';
import { Mc146818Rtc, RTC_STATE_BYTES } from '../devices/rtc.js';
import { I8042, I8042_STATE_BYTES } from '../devices/i8042.js';
import { AcpiGpeBlock, AcpiPmBlock, PM_BLOCK_LENGTH, PM_STATE_BYTES } from '../devices/acpi-pm.js';
import { ResetControl } from '../devices/reset-control.js';
import type { QmpBlockInfo, QmpCpuInfo, QmpPciDevice, QmpTarget, RunState } from '../qmp/target.js';
import { waitAsync } from './atomics.js';
import { bootTrace, bootTraceEnabled } from './boot-trace.js';
import { MainThreadVcpu } from './main-thread-vcpu.js';
import { ByteRing } from './byte-ring.js';
import { ConfigError, MAX_VCPUS, memoryBytes, validateConfig, type MachineConfig } from './config.js';
import { ConsoleStream } from './console.js';
import { setupVcpu } from './cpu-setup.js';
import { resolveCpuModel, type ResolvedCpuModel } from './cpu-model.js';
import { GuestRam } from './guest-ram.js';
import { stopVcpuThread, takeVcpuThreads, type StartedVcpuThread } from './vcpu-threads.cjs';
import { takePreloadedFile } from './file-preload.js';
import { takePreloadedVm } from './vm-preload.js';
import { parseVirtioConfig, wantsVirtio } from './virtio-config.js';
// Types only: the device glue (and through it src/virtio, src/pci, src/block) is imported in
// create() when the config asks for a virtio device, so a legacy-only machine never loads it.
import type { MachineVirtio } from './virtio-devices.js';
import {
  CTL_COMMAND_SEQ, CTL_DONE_SEQ, CTL_EXIT_SEQ, CTL_FORWARDED_EXITS, CTL_LOCAL_EXITS, CTL_PARKED, CTL_RUN_STATE,
  CTL_THREAD_ID, describeExit, PARK, QUIT, RUN, type VcpuCommand, type VcpuReport,
} from './vcpu-channel.js';

/** Something to boot instead of Linux: raw real-mode code (tests, tiny guests). */
export interface RawBoot {
  /** Bytes placed at `address` and entered in real mode with CS base 0. */
  code: Uint8Array;
  /** Guest-physical load and entry address, below 64 KiB. */
  address: number;
}

export interface MachineOptions {
  /** Boot raw code instead of a Linux kernel (then `kernel` must be absent). */
  rawBoot?: RawBoot;
  /** Where the vCPU worker module is (defaults to the compiled vcpu-worker.js beside this file). */
  workerUrl?: URL;
  /**
   * A one-vCPU machine runs its vCPU on the main thread until the vCPU's thread is up
   * (main-thread-vcpu.ts); false waits for the thread before the first instruction, as a
   * machine with more vCPUs always does. Default true.
   */
  earlyVcpu?: boolean;
}

export interface MachineExit {
  /** Process-style exit code: 0 for a guest power-off or a host quit, 1 for a failure. */
  code: number;
  reason: string;
}

/** Default command line for a Linux guest on this machine (console on COM1). */
export const DEFAULT_APPEND = 'console=ttyS0 reboot=k panic=-1';

/** Errors with a machine-level cause (a file, a size, a model): one line, naming it. */
export class MachineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MachineError';
  }
}

interface VcpuThread extends StartedVcpuThread {
  thread: bigint;
  threadId: number;
  /** The thread is up and has the vCPU; until then vCPU 0 may run on the main thread (earlyVcpu). */
  adopted: boolean;
}

/**
 * Whether vCPU 0 of a one-vCPU machine runs on the main thread until its thread is up
 * (main-thread-vcpu.ts). With more vCPUs the machine waits for every thread first: the guest
 * gives an application processor a few seconds to answer its start-up IPI, and a thread that
 * boots late under load must not miss that. TSVIRT_EARLY_VCPU=0 turns it off (comparisons).
 */
const EARLY_VCPU = process.env.TSVIRT_EARLY_VCPU !== '0';

interface Boot {
  kernel?: Uint8Array;
  /** The bzImage's payload, unpacked by the VMM (kernel-cache.ts); released once loaded. */
  unpacked?: UnpackedKernel;
  initrd?: Uint8Array;
  cmdline: string;
  raw?: RawBoot;
  /** For a raw boot: puts the boot vCPU in real mode at the code (loaded only then). */
  enterRealMode?: (vcpu: VcpuFd, address: number) => void;
}

const PARK_TIMEOUT_MS = 5000;

/** TSVIRT_EXIT_STATS=1 counts main-thread exits by port/address and prints them at the end. */
const exitCounts: Map<string, number> | null = process.env.TSVIRT_EXIT_STATS ? new Map() : null;
/** With TSVIRT_BOOT_TRACE: main-thread exit sources already traced (the first of each shows guest progress). */
const firstExits: Set<string> | null = bootTraceEnabled ? new Set() : null;

/** What an exit went to, for the exit statistics and the boot trace: `io 0x3f8 [out]`, `mmio 0x...`. */
function exitSource(exit: VcpuExit, withDirection: boolean): string {
  if (exit.reason === 'io') return `io 0x${exit.port.toString(16)}${withDirection ? ` ${exit.direction}` : ''}`;
  if (exit.reason === 'mmio') return `mmio 0x${exit.address.toString(16)}`;
  return exit.reason;
}

// node:crypto is loaded only when a UUID is asked for: on the way to the first KVM_RUN it
// cost 1.3-1.5 ms on the development host, and start-up steps take 15-20 times as long
// under nested virtualization.
const requireBuiltin = createRequire(import.meta.url);

export class Machine extends EventEmitter implements QmpTarget {
  private madeUuid: string | undefined;
  readonly console = new ConsoleStream();
  readonly cpuCount: number;
  /**
   * How far KASLR moved the kernel's virtual base at the last boot, when the VMM unpacked and
   * placed the kernel itself (MachineConfig.kernelCache); undefined when the kernel's own
   * decompressor did it, or with nokaslr.
   */
  kaslrOffset: bigint | undefined;
  readonly memorySize: bigint;
  /**
   * How many lock prefixes of the kernel the VMM turned into DS prefixes at the last boot,
   * as a kernel on one CPU does itself (smp-locks.ts); 0 when the kernel was left to do it.
   */
  lockPrefixesElided = 0;

  /** The machine's UUID (QMP query-uuid), made on first use. */
  get uuid(): string {
    return this.madeUuid ??= (requireBuiltin('node:crypto') as typeof import('node:crypto')).randomUUID();
  }

  private state: RunState = 'prelaunch';
  private kvm: Kvm;
  private vm!: VmFd;
  private vcpus: VcpuFd[] = [];
  private threads: VcpuThread[] = [];
  private readonly ram: GuestRam;
  private readonly pio = new Bus('pio');
  private readonly mmio = new Bus('mmio');
  private readonly uartState = new SharedArrayBuffer(UART_STATE_BYTES);
  /** The RTC's registers, which vCPU threads read too (RtcRegisters). */
  private readonly rtcState = new SharedArrayBuffer(RTC_STATE_BYTES);
  private readonly ring = ByteRing.create();
  private uart!: Uart16550;
  private readonly rtc: Mc146818Rtc;
  private readonly i8042: I8042;
  private readonly pm: AcpiPmBlock;
  /** Registers vCPU threads serve reads (or, for GPE0, all accesses) from themselves. */
  private readonly pmState = new SharedArrayBuffer(PM_STATE_BYTES);
  private readonly gpeState = new SharedArrayBuffer(ACPI_GPE0_LENGTH);
  private readonly i8042State = new SharedArrayBuffer(I8042_STATE_BYTES);
  private readonly gpe = new AcpiGpeBlock(ACPI_GPE0_LENGTH, this.gpeState);
  private readonly resetControl: ResetControl;
  private ended = false;
  private exitResult: MachineExit | null = null;
  private readonly exited: Promise<MachineExit>;
  private resolveExited!: (e: MachineExit) => void;
  /** Serialises lifecycle operations (pause, reset, stop) so they never interleave. */
  private lifecycle: Promise<unknown> = Promise.resolve();
  private inputTimer: NodeJS.Timeout | null = null;
  /** PCI host bridge and virtio devices, when the config asks for any (virtio-devices.ts). */
  private virtio: MachineVirtio | null = null;
  /** vCPU 0 running on the main thread while its thread starts (adoptWhenReady). */
  private earlyVcpu: MainThreadVcpu | null = null;
  /** That vCPU stopped on an exit (reset, power-off, error): the thread must not run it on. */
  private earlyVcpuStopped = false;
  /** Exits taken on the main thread by earlyVcpu (exitStats). */
  private mainThreadExits = 0;

  private constructor(
    readonly config: MachineConfig,
    private readonly boot: Boot,
    private readonly cpuModel: ResolvedCpuModel,
    ram: GuestRam,
    kvm: Kvm,
  ) {
    super();
    this.cpuCount = config.cpus ?? 1;
    this.memorySize = ram.size;
    this.ram = ram;
    this.kvm = kvm;
    this.exited = new Promise((resolve) => { this.resolveExited = resolve; });
    this.i8042 = new I8042({ reset: () => this.guestReset('guest-reset'), statusState: this.i8042State });
    // The RTC's interrupt timers fire on the main thread: IRQ 8 through the current VM.
    this.rtc = new Mc146818Rtc(undefined, { trigger: (level) => this.vm.irqLine(RTC_IRQ, level), state: this.rtcState });
    this.resetControl = new ResetControl(() => this.guestReset('guest-reset'));
    this.pm = new AcpiPmBlock({
      s5SleepType: ACPI_S5_SLEEP_TYPE,
      powerOff: () => this.guestPowerOff(),
      sci: (level) => this.vm.irqLine(ACPI_SCI_IRQ, level),
    }, this.pmState);
    this.rtc.setMemorySize(Number(lowRamEnd(ram.size)), Number(highRamSize(ram.size)));
    this.rtc.setCpuCount(this.cpuCount);
    this.pio.insert(BigInt(COM1_PORT), BigInt(UART_PORT_COUNT), { read: (o, d) => this.uart.read(o, d), write: (o, d) => this.uart.write(o, d) }, 'serial0');
    this.pio.insert(BigInt(I8042_DATA_PORT), 1n, { read: (_o, d) => this.i8042.read(0, d), write: (_o, d) => this.i8042.write(0, d) }, 'i8042-data');
    this.pio.insert(BigInt(I8042_COMMAND_PORT), 1n, { read: (_o, d) => this.i8042.read(4, d), write: (_o, d) => this.i8042.write(4, d) }, 'i8042-command');
    this.pio.insert(BigInt(RTC_PORT), BigInt(RTC_PORT_COUNT), this.rtc, 'rtc');
    this.pio.insert(BigInt(ACPI_PM_BASE), BigInt(PM_BLOCK_LENGTH), this.pm, 'acpi-pm');
    this.pio.insert(BigInt(ACPI_GPE0_PORT), BigInt(ACPI_GPE0_LENGTH), this.gpe, 'acpi-gpe0');
    this.pio.insert(BigInt(ACPI_RESET_PORT), 1n, this.resetControl, 'reset-control');
    this.console.onInput(() => this.feedConsoleInput());
  }

  /**
   * Validate the config, read the kernel, check the host can give the memory and the CPU
   * model, build the VM and its vCPU threads. Nothing runs until start().
   */
  static async create(config: MachineConfig, options: MachineOptions = {}): Promise<Machine> {
    const valid = validateConfig(config);
    const cpus = valid.cpus ?? 1;
    const kvm = Kvm.open();
    let started: StartedVcpuThread[] = [];
    let ram: GuestRam | undefined;
    let unpacked: UnpackedKernel | undefined;
    // A VM `tsvirt run` began to create (vm-preload.ts): closed here unless the machine adopts it.
    let vmAhead = takePreloadedVm();
    try {
      const maxVcpus = kvm.checkExtension('MAX_VCPUS') || kvm.checkExtension('NR_VCPUS') || 4;
      if (cpus > Math.min(maxVcpus, MAX_VCPUS)) {
        throw new MachineError(`${cpus} vCPUs requested, this host's KVM allows at most ${Math.min(maxVcpus, MAX_VCPUS)}`);
      }
      // Before the rest, so that the threads' isolates boot while the kernel is read and the
      // VM is built.
      started = takeVcpuThreads(cpus, options.workerUrl);
      // One wait for both: a VM `tsvirt run` began to create, and the kernel and initrd reads.
      const [boot, preloadedVm] = await Promise.all([readBoot(valid, options), vmAhead]);
      if (boot.raw) boot.enterRealMode = (await import('../kvm/microguest.js')).setupRealMode;
      unpacked = boot.unpacked = unpackKernel(valid, boot);
      if (unpacked) bootTrace(`create: kernel payload ${unpacked.fresh ? 'unpacked (its cache entry is written meanwhile)' : 'read from the kernel cache'}`);
      const size = memoryBytes(valid);
      bootTrace('create: kernel and initrd read');
      const model = resolveCpuModel(kvm, valid.cpu ?? 'host');
      bootTrace('create: CPU model resolved');
      const backend = valid.memoryBackend ?? 'memfd';
      ram = GuestRam.allocate({
        size, thp: valid.thp ?? true, ksm: valid.ksm ?? true,
        ...(backend.startsWith('hugetlbfs:') ? { hugetlbfsPath: backend.slice('hugetlbfs:'.length) } : {}),
      });
      bootTrace('create: guest RAM allocated');
      // The kernel's segments are read on the thread pool while the VM is built.
      unpacked?.prefetch(ram.memory);
      const machine = new Machine(valid, boot, model, ram, kvm);
      machine.threads = started.map((t) => Object.assign(t, { thread: 0n, threadId: 0, adopted: false }));
      try {
        if (wantsVirtio(valid)) {
          const { consoleStreamPort, MachineVirtio } = await import('./virtio-devices.js');
          bootTrace('create: virtio device modules loaded');
          machine.virtio = await MachineVirtio.attach({
            memory: ram.memory, pioBus: machine.pio, mmioBus: machine.mmio, vm: () => machine.vm,
            vcpuCount: cpus, pauseVm: () => void machine.pause(),
            ...(valid.consoleDevice === 'virtio' ? { console: consoleStreamPort(machine.console) } : {}),
          }, parseVirtioConfig(valid));
        }
        vmAhead = undefined;
        machine.buildVm(preloadedVm);
        bootTrace('create: VM built (irqchip, RAM slots, ACPI, kernel, vCPUs)');
        if (cpus === 1 && EARLY_VCPU && options.earlyVcpu !== false) {
          await machine.kernelLoaded();
          machine.adoptWhenReady(machine.threads[0]!);
          bootTrace('create: kernel in place (vCPU 0 runs on the main thread until its thread is up)');
        } else {
          await Promise.all([machine.adoptThreads(), machine.kernelLoaded()]);
          bootTrace('create: vCPU threads ready, kernel in place');
        }
      } catch (err) {
        machine.disposePartial();
        throw err;
      }
      return machine;
    } catch (err) {
      // Asked to quit, not terminated: a thread may still be loading its modules.
      await Promise.all(started.map(stopVcpuThread));
      const unadopted = await vmAhead?.catch(() => undefined);
      if (unadopted !== undefined) closeSync(unadopted);
      // Prefetched kernel reads write into guest RAM: they finish before it is unmapped.
      await unpacked?.settled().catch(() => undefined);
      unpacked?.release();
      ram?.close();
      kvm.close();
      throw err;
    }
  }

  get name(): string | undefined {
    return this.config.name;
  }

  runState(): RunState {
    return this.state;
  }

  /** Resolves when the machine has ended (guest power-off, quit, stop or a fatal error). */
  waitForExit(): Promise<MachineExit> {
    return this.exited;
  }

  /**
   * Exit counts, for diagnostics and benchmarks: served on vCPU threads (local), handed from
   * them to the main thread (forwarded), and taken on the main thread while vCPU 0 ran there.
   */
  exitStats(): { local: number; forwarded: number; mainThread: number } {
    let local = 0;
    let forwarded = 0;
    for (const t of this.threads) {
      local += Atomics.load(t.control, CTL_LOCAL_EXITS);
      forwarded += Atomics.load(t.control, CTL_FORWARDED_EXITS);
    }
    return { local, forwarded, mainThread: this.mainThreadExits };
  }

  /** Let the vCPUs run. */
  async start(): Promise<void> {
    // Ended before it started (a kernel found corrupt in the meantime): waitForExit() says why.
    if (this.ended) return;
    if (this.state !== 'prelaunch') throw new MachineError(`cannot start a machine that is ${this.state}`);
    this.startOutputPump();
    this.setRunState('running');
    this.releaseVcpus();
  }

  pause(): Promise<void> {
    return this.serialise(async () => {
      if (this.state !== 'running') return;
      await this.parkVcpus();
      this.setRunState('paused');
      this.emit('stop');
    });
  }

  resume(): Promise<void> {
    return this.serialise(async () => {
      if (this.state !== 'paused') return;
      this.setRunState('running');
      this.releaseVcpus();
      this.emit('resume');
      this.virtio?.resumeAfterIoError();
    });
  }

  /** Host-initiated reset (QMP system_reset). */
  reset(): Promise<void> {
    return this.serialise(() => this.doReset({ guest: false, reason: 'host-qmp-system-reset' }));
  }

  /** Press the ACPI power button; a guest with ACPI support shuts down and powers off. */
  powerdown(): Promise<void> {
    return this.serialise(async () => {
      this.pm.pressPowerButton();
      this.emit('powerdown');
    });
  }

  /** QMP quit: end the VM now. */
  quit(): Promise<void> {
    return this.end({ code: 0, reason: 'host-qmp-quit' }, { guest: false, reason: 'host-qmp-quit' });
  }

  /** Stop the VM and free everything (the library's way to end a machine). */
  stop(): Promise<void> {
    return this.end({ code: 0, reason: 'host-stop' }, { guest: false, reason: 'host-signal' });
  }

  cpus(): QmpCpuInfo[] {
    return this.threads.map((t) => ({
      cpuIndex: t.index,
      // While vCPU 0 runs on the main thread (earlyVcpu), that thread's id is the process's.
      threadId: Atomics.load(t.control, CTL_THREAD_ID) || t.threadId || (!t.adopted && this.earlyVcpu ? process.pid : 0),
      qomPath: `/machine/unattached/device[${t.index}]`,
      socketId: 0,
      coreId: t.index,
      threadId_: 0,
      target: 'x86_64',
    }));
  }

  blockDevices(): QmpBlockInfo[] {
    return this.virtio?.blockDevices() ?? [];
  }

  pciDevices(): QmpPciDevice[] {
    return this.virtio?.pciDevices() ?? [];
  }

  /** The port I/O bus: where later device managers (PCI host bridge) attach ranges. */
  get ioBus(): Bus {
    return this.pio;
  }

  /** The MMIO bus. */
  get mmioBus(): Bus {
    return this.mmio;
  }

  /** The KVM VM (for irqfd/ioeventfd wiring by device managers). */
  get vmFd(): VmFd {
    return this.vm;
  }

  // ---- construction -------------------------------------------------------------------

  /**
   * Waits for the kernel reads still under way (a cached kernel's segments, prefetched), then
   * closes the cached copy: a reset opens it again (doReset).
   */
  private async kernelLoaded(): Promise<void> {
    const unpacked = this.boot.unpacked;
    if (!unpacked) return;
    try {
      await unpacked.settled();
      // The kernel placed by the VMM on one CPU has its lock prefixes elided before it runs,
      // as it would elide them itself at a high price under shadow paging (smp-locks.ts).
      // Only now: the prefetch may still have been reading its text into RAM.
      const sites = kernelElidesLocks(this.cpuCount, this.boot.cmdline) ? lockPrefixSites(unpacked.image) : undefined;
      this.lockPrefixesElided = sites ? elideLockPrefixes(this.ram.memory, sites) : 0;
      if (sites) bootTrace(`create: ${this.lockPrefixesElided} lock prefixes of the kernel elided for one CPU`);
    } catch (err) {
      throw new MachineError(`kernel ${this.config.kernel}: ${(err as Error).message}`);
    } finally {
      unpacked.release();
      delete this.boot.unpacked;
    }
  }

  /**
   * A fresh VM: irqchip, PIT, RAM slots, firmware tables, kernel, vCPUs in boot state. The
   * first build may adopt a VM `tsvirt run` created ahead (vm-preload.ts).
   */
  private buildVm(preloadedVm?: number): void {
    const vm = preloadedVm !== undefined ? this.kvm.adoptVm(preloadedVm) : this.kvm.createVm();
    this.vm = vm;
    try {
      // Intel VMX needs these three pages for real-mode emulation; they sit just below the
      // 4 GiB boundary, in the hole above the LAPIC where nothing else lives.
      vm.setIdentityMapAddr(0xfffbc000n);
      vm.setTssAddr(0xfffbd000);
    } catch { /* AMD and PVM do not need them */ }
    vm.createIrqchip();
    vm.createPit2(KVM_PIT_SPEAKER_DUMMY);
    this.ram.registerWith(vm);
    bootTrace('buildVm: VM, irqchip, PIT and RAM slots');
    this.uart = new Uart16550(this.uartState, {
      transmit: (byte) => { this.ring.push(byte); },
      trigger: (level) => this.vm.irqLine(COM1_IRQ, level),
    });

    const mem = this.ram.memory;
    let entry: Pick<ReturnType<typeof loadLinux>, 'regs' | 'sregs'> | null = null;
    if (this.boot.raw) {
      mem.write(BigInt(this.boot.raw.address), this.boot.raw.code);
    } else {
      const acpi = buildAcpiTables(mem, {
        cpus: this.cpuCount, memorySize: this.memorySize,
        // With virtio devices: a PCI host (PCI0, MCFG) plus its interrupt routing.
        ...(this.virtio ? this.virtio.acpiOptions(this.memorySize) : { pci: false as const }),
      });
      bootTrace('buildVm: ACPI tables');
      try {
        const loaded = loadLinux(mem, {
          kernel: this.boot.kernel!,
          ...(this.boot.initrd ? { initrd: this.boot.initrd } : {}),
          ...(this.boot.unpacked ? { unpackedKernel: this.boot.unpacked.image } : {}),
          cmdline: this.boot.cmdline,
          memorySize: this.memorySize,
          rsdpAddress: acpi.rsdp,
        });
        entry = loaded;
        this.kaslrOffset = loaded.kaslrOffset;
      } catch (err) {
        if (err instanceof KernelLoadError) throw new MachineError(`kernel ${this.config.kernel}: ${err.message}`);
        throw err;
      }
    }

    bootTrace('buildVm: kernel loaded');
    this.vcpus = [];
    for (let i = 0; i < this.cpuCount; i++) {
      const vcpu = vm.createVcpu(i);
      this.vcpus.push(vcpu);
      setupVcpu(vcpu, this.cpuModel, i, this.cpuCount);
      if (i === 0) {
        if (this.boot.raw) {
          this.boot.enterRealMode!(vcpu, this.boot.raw.address);
        } else if (entry) {
          const current = vcpu.getSregs();
          vcpu.setSregs({
            ...current,
            ...entry.sregs,
            cs: { ...entry.sregs.cs, padding: 0 }, ds: { ...entry.sregs.ds, padding: 0 },
            es: { ...entry.sregs.es, padding: 0 }, fs: { ...entry.sregs.fs, padding: 0 },
            gs: { ...entry.sregs.gs, padding: 0 }, ss: { ...entry.sregs.ss, padding: 0 },
            tr: { ...entry.sregs.tr, padding: 0 }, ldt: { ...entry.sregs.ldt, padding: 0 },
            gdt: { ...entry.sregs.gdt, padding: [0, 0, 0] }, idt: { ...entry.sregs.idt, padding: [0, 0, 0] },
          });
          vcpu.setRegs(entry.regs);
        }
        vcpu.setMpState(KVM_MP_STATE.RUNNABLE);
      } else {
        // Application processors wait for the boot CPU's INIT/SIPI, which the in-kernel
        // LAPIC delivers: they start in wait-for-SIPI, exactly like real hardware.
        vcpu.setMpState(KVM_MP_STATE.UNINITIALIZED);
      }
    }
  }

  /** Wait for the vCPU threads started in create() and give each its vCPU. */
  private async adoptThreads(): Promise<void> {
    for (const t of this.threads) this.listenTo(t);
    await Promise.all(this.threads.map(async (t) => {
      let up: { thread: bigint; threadId: number };
      try {
        up = await t.ready;
      } catch (err) {
        throw new MachineError(`vCPU ${t.index} thread failed to start: ${(err as Error).message}`);
      }
      this.adopt(t, up);
    }));
    this.attachVcpus();
  }

  /** Takes a thread's reports and serves the exits it hands over (from before it is up). */
  private listenTo(t: VcpuThread): void {
    installKickHandler();
    t.onReport = (m) => this.onVcpuReport(m);
    this.serveExits(t);
  }

  /** A thread that is up becomes the machine's: attachVcpus() then gives it its vCPU. */
  private adopt(t: VcpuThread, up: { thread: bigint; threadId: number }): void {
    t.thread = up.thread;
    t.threadId = up.threadId;
    t.adopted = true;
    t.worker.on('error', (err) => this.fatal(`vCPU ${t.index} thread crashed: ${err.message}`));
  }

  /**
   * The one-vCPU machine's way: vCPU 0 runs on the main thread (releaseVcpus) until its
   * thread is up; then, between two lifecycle operations, the main thread lets go of it and
   * the thread takes it, running or parked as the machine is.
   */
  private adoptWhenReady(t: VcpuThread): void {
    this.listenTo(t);
    t.ready.then((up) => this.serialise(async () => {
      if (this.ended) return;
      await this.earlyVcpu?.stop();
      this.earlyVcpu = null;
      if (this.ended) return;
      this.adopt(t, up);
      this.attachVcpus();
      bootTrace(`vcpu${t.index}: thread took over from the main thread`);
      if (this.state === 'running' && !this.earlyVcpuStopped) this.setDesired(t, RUN);
    }), (err: Error) => this.fatal(`vCPU ${t.index} thread failed to start: ${err.message}`));
  }

  /** Undo a half-built machine (create failed): threads, vCPU and VM descriptors. */
  private disposePartial(): void {
    this.ended = true;
    // The threads are ended by create(), which started them.
    for (const v of this.vcpus) { try { v.close(); } catch { /* gone */ } }
    try { this.vm?.close(); } catch { /* gone */ }
    void this.virtio?.close().catch(() => undefined);
  }

  private attachVcpus(): void {
    this.threads.forEach((t, i) => {
      if (!t.adopted) return; // it gets the vCPU of the moment when it is up (adoptWhenReady)
      const vcpu = this.vcpus[i]!;
      this.command(t, {
        type: 'attach', vmFd: this.vm.fd, vcpuFd: vcpu.fd, id: i, mmapSize: vcpu.mmapSize,
        uartState: this.uartState, consoleRing: this.ring.buffer, uartPort: COM1_PORT, uartIrq: COM1_IRQ,
        portClaims: this.pio.claimsMap(), pmTimer32: false,
        rtcState: this.rtcState, rtcPort: RTC_PORT,
        pm1Port: ACPI_PM_BASE, pmState: this.pmState, gpePort: ACPI_GPE0_PORT, gpeLength: ACPI_GPE0_LENGTH, gpeState: this.gpeState,
        i8042StatusPort: I8042_COMMAND_PORT, i8042State: this.i8042State,
        ...(this.virtio ? { pciConfig: this.virtio.pciConfigMirror } : {}),
      });
    });
  }

  private command(t: VcpuThread, cmd: VcpuCommand): void {
    t.worker.postMessage(cmd);
    Atomics.add(t.control, CTL_COMMAND_SEQ, 1);
    Atomics.notify(t.control, CTL_COMMAND_SEQ);
  }

  private setDesired(t: VcpuThread, state: number): void {
    Atomics.store(t.control, CTL_RUN_STATE, state);
    Atomics.add(t.control, CTL_COMMAND_SEQ, 1);
    Atomics.notify(t.control, CTL_COMMAND_SEQ);
  }

  // ---- exits served on the main thread ----------------------------------------------------

  /** Complete forwarded exits of one vCPU for as long as the machine lives. */
  private serveExits(t: VcpuThread): void {
    let seen = 0;
    const loop = async (): Promise<void> => {
      while (!this.ended) {
        await waitAsync(t.control, CTL_EXIT_SEQ, seen);
        const seq = Atomics.load(t.control, CTL_EXIT_SEQ);
        if (seq === seen) continue;
        seen = seq;
        try {
          this.completeExit(t.index);
        } catch (err) {
          this.fatal(`vCPU ${t.index}: device emulation failed: ${(err as Error).message}`);
        }
        Atomics.store(t.control, CTL_DONE_SEQ, seq);
        Atomics.notify(t.control, CTL_DONE_SEQ);
      }
    };
    void loop();
  }

  private completeExit(index: number): void {
    const vcpu = this.vcpus[index];
    if (!vcpu) return;
    this.serveExit(vcpu.decodeExit());
  }

  /** Completes a port or MMIO exit through the devices (forwarded, or taken on the main thread). */
  private serveExit(exit: VcpuExit): void {
    if (firstExits && firstExits.size < 64) {
      const key = exitSource(exit, true);
      if (!firstExits.has(key)) {
        firstExits.add(key);
        bootTrace(`exit: first ${key}`);
      }
    }
    if (exitCounts) {
      const key = exitSource(exit, false);
      exitCounts.set(key, (exitCounts.get(key) ?? 0) + 1);
    }
    if (exit.reason === 'io') {
      for (let i = 0; i < exit.count; i++) {
        const bytes = exit.data.subarray(i * exit.size, (i + 1) * exit.size);
        if (exit.direction === 'in') this.pio.read(BigInt(exit.port), bytes);
        else this.pio.write(BigInt(exit.port), bytes);
      }
    } else if (exit.reason === 'mmio') {
      if (exit.isWrite) this.mmio.write(exit.address, exit.data);
      else this.mmio.read(exit.address, exit.data);
    }
  }

  private onVcpuReport(m: VcpuReport): void {
    if (m.type === 'error') {
      this.fatal(`vCPU ${m.index}: ${m.message}`);
      return;
    }
    if (m.type !== 'stopped') return;
    const detail = m.detail;
    if (m.reason === 'shutdown') {
      // A triple fault: what a PC does then is reset.
      this.guestReset('guest-reset');
      return;
    }
    if (m.reason === 'system_event') {
      const type = (JSON.parse(detail) as { type: number }).type;
      if (type === KVM_SYSTEM_EVENT.SHUTDOWN) { this.guestPowerOff(); return; }
      if (type === KVM_SYSTEM_EVENT.RESET) { this.guestReset('guest-reset'); return; }
      if (type === KVM_SYSTEM_EVENT.CRASH) {
        this.setRunState('guest-panicked');
        this.finish({ code: 1, reason: 'guest-panicked' }, { guest: true, reason: 'guest-panic' });
        return;
      }
    }
    this.fatal(`vCPU ${m.index} stopped: KVM exit ${m.reason} ${detail}`, 'internal-error');
  }

  // ---- guest-initiated transitions ---------------------------------------------------------

  private guestPowerOff(): void {
    // Called from inside an exit the main thread is completing: end asynchronously, after
    // the vCPU got its answer.
    setImmediate(() => void this.end({ code: 0, reason: 'guest-shutdown' }, { guest: true, reason: 'guest-shutdown' }));
  }

  private guestReset(reason: string): void {
    setImmediate(() => {
      if (this.ended) return;
      if (this.config.noReboot) {
        void this.end({ code: 0, reason: 'guest-reset' }, { guest: true, reason: 'guest-reset' });
        return;
      }
      void this.serialise(() => this.doReset({ guest: true, reason }));
    });
  }

  private fatal(message: string, state: RunState = 'internal-error'): void {
    if (this.ended) return;
    this.setRunState(state);
    this.emit('error-report', message);
    void this.end({ code: 1, reason: message }, { guest: false, reason: 'host-error' });
  }

  // ---- lifecycle mechanics -------------------------------------------------------------------

  private serialise<T>(op: () => Promise<T>): Promise<T> {
    const next = this.lifecycle.then(op, op);
    this.lifecycle = next.catch(() => undefined);
    return next;
  }

  private setRunState(state: RunState): void {
    this.state = state;
  }

  private releaseVcpus(): void {
    for (const t of this.threads) {
      if (t.adopted) this.setDesired(t, RUN);
      else this.runVcpuOnMainThread(t.index);
    }
  }

  /** vCPU `index` runs on the main thread until its thread is up (main-thread-vcpu.ts). */
  private runVcpuOnMainThread(index: number): void {
    const vcpu = this.vcpus[index];
    if (this.earlyVcpu || !vcpu) return;
    this.earlyVcpuStopped = false;
    this.earlyVcpu = new MainThreadVcpu(vcpu, {
      serve: (exit) => {
        this.mainThreadExits++;
        try {
          this.serveExit(exit);
        } catch (err) {
          this.fatal(`vCPU ${index}: device emulation failed: ${(err as Error).message}`);
        }
      },
      stopped: (exit) => {
        this.earlyVcpuStopped = true;
        this.onVcpuReport({ type: 'stopped', index, reason: exit.reason, detail: describeExit(exit) });
      },
      failed: (err) => {
        this.earlyVcpuStopped = true;
        this.onVcpuReport({ type: 'error', index, message: err.message });
      },
    });
  }

  /** Bring every vCPU out of KVM_RUN and wait until all are parked. */
  private async parkVcpus(): Promise<void> {
    await this.earlyVcpu?.stop();
    this.earlyVcpu = null;
    for (const t of this.threads) this.setDesired(t, PARK);
    const deadline = Date.now() + PARK_TIMEOUT_MS;
    for (const t of this.threads) {
      if (!t.adopted) continue; // still starting: it has no vCPU to run
      const vcpu = this.vcpus[t.index];
      while (Atomics.load(t.control, CTL_PARKED) !== 1) {
        if (vcpu) vcpu.immediateExit = true;
        if (t.thread) kickThread(t.thread);
        await waitAsync(t.control, CTL_PARKED, 0, 20);
        if (Date.now() > deadline) throw new MachineError(`vCPU ${t.index} did not stop within ${PARK_TIMEOUT_MS} ms`);
      }
    }
  }

  private async doReset(info: { guest: boolean; reason: string }): Promise<void> {
    if (this.ended) return;
    const wasPaused = this.state === 'paused';
    await this.parkVcpus();
    for (const t of this.threads) if (t.adopted) this.command(t, { type: 'detach' });
    // Detach is applied by each parked thread before it runs again; wait for it to be taken.
    await new Promise((resolve) => setTimeout(resolve, 0));
    const oldVm = this.vm;
    const oldVcpus = this.vcpus;
    this.vcpus = [];
    this.ram.clear();
    this.uart.reset();
    this.rtc.reset();
    this.i8042.reset();
    this.pm.reset();
    this.gpe.reset();
    this.resetControl.reset();
    // Before the old VM goes: the PCI reset takes the queue doorbells off it.
    this.virtio?.reset();
    // The kernel is placed anew, with a new KASLR base: read from the cache again.
    this.boot.unpacked = unpackKernel(this.config, this.boot);
    try {
      this.buildVm();
    } catch (err) {
      await this.kernelLoaded().catch(() => undefined); // the cached copy is closed all the same
      throw err;
    }
    await this.kernelLoaded();
    this.attachVcpus();
    // The old vCPU and VM descriptors go once the threads took the new ones.
    setTimeout(() => {
      for (const v of oldVcpus) { try { v.close(); } catch { /* already gone */ } }
      try { oldVm.close(); } catch { /* already gone */ }
    }, 1000);
    this.emit('reset', info);
    if (!wasPaused && this.state !== 'prelaunch') {
      this.setRunState('running');
      this.releaseVcpus();
    }
  }

  private end(result: MachineExit, shutdown: { guest: boolean; reason: string }): Promise<void> {
    return this.serialise(async () => {
      if (this.ended) return;
      try {
        await this.parkVcpus();
      } catch { /* a stuck vCPU must not keep the machine alive: terminate below */ }
      // Disks flushed and closed while guest RAM is still mapped (requests in flight use it).
      await this.virtio?.close().catch((err: Error) => this.emit('error-report', `closing virtio devices: ${err.message}`));
      if (this.state !== 'internal-error' && this.state !== 'guest-panicked') this.setRunState('shutdown');
      this.emit('shutdown', shutdown);
      this.finish(result);
    });
  }

  private finish(result: MachineExit, shutdown?: { guest: boolean; reason: string }): void {
    if (this.ended) return;
    if (shutdown) this.emit('shutdown', shutdown);
    this.ended = true;
    this.exitResult = result;
    // Not waited for: on the main thread, it is between two KVM_RUN calls now.
    void this.earlyVcpu?.stop();
    this.earlyVcpu = null;
    if (this.inputTimer) clearInterval(this.inputTimer);
    this.rtc.stop();
    this.console.deliverOutput(this.ring.drain());
    for (const t of this.threads) {
      this.setDesired(t, QUIT);
      // An exit handed over that nobody will serve now: release it, so the thread sees QUIT.
      Atomics.store(t.control, CTL_DONE_SEQ, Atomics.load(t.control, CTL_EXIT_SEQ));
      Atomics.notify(t.control, CTL_DONE_SEQ);
      // Wake the exit server so it sees `ended`.
      Atomics.add(t.control, CTL_EXIT_SEQ, 0);
      Atomics.notify(t.control, CTL_EXIT_SEQ);
      // Out of KVM_RUN (a panic ends the machine without parking the vCPUs first).
      const vcpu = this.vcpus[t.index];
      if (vcpu) vcpu.immediateExit = true;
      if (t.thread) kickThread(t.thread);
      // Asked to quit, not terminated: terminating a thread inside one of koffi's native
      // calls (its own munmap on the way out, say) can abort the whole process.
      void stopVcpuThread(t);
    }
    for (const v of this.vcpus) { try { v.close(); } catch { /* gone */ } }
    // Usually closed by end() already; a panic ends here directly (doorbells go synchronously).
    void this.virtio?.close().catch(() => undefined);
    try { this.vm.close(); } catch { /* gone */ }
    this.ram.close();
    this.kvm.close();
    this.console.finish();
    if (exitCounts) {
      const top = [...exitCounts].sort((a, b) => b[1] - a[1]).slice(0, 12);
      process.stderr.write(`tsvirt: exits: ${JSON.stringify(this.exitStats())} main-thread by source: ${JSON.stringify(top)}\n`);
    }
    this.emit('exit', result);
    this.resolveExited(result);
  }

  /** The result once ended, else null. */
  get result(): MachineExit | null {
    return this.exitResult;
  }

  private startOutputPump(): void {
    let first = true;
    const pump = async (): Promise<void> => {
      while (!this.ended) {
        await this.ring.waitForData(250);
        const bytes = this.ring.drain();
        if (bytes.length && first) {
          first = false;
          bootTrace('console: first guest output');
        }
        if (bytes.length) this.console.deliverOutput(bytes);
      }
    };
    void pump();
  }

  private feedConsoleInput(): void {
    if (this.ended) return;
    this.console.takeInput((bytes) => this.uart.receive(bytes));
    // The UART buffer was full: retry as the guest reads (a few ms is below typing speed).
    if (this.console.hasInput && !this.inputTimer) {
      this.inputTimer = setInterval(() => {
        this.console.takeInput((bytes) => this.uart.receive(bytes));
        if (!this.console.hasInput && this.inputTimer) { clearInterval(this.inputTimer); this.inputTimer = null; }
      }, 5);
    }
  }
}

/** The whole file, from a read `tsvirt run` started early (file-preload.ts) or read now. */
async function readFile(path: string, what: string): Promise<Uint8Array> {
  try {
    return await (takePreloadedFile(path) ?? new Uint8Array(readFileSync(path)));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new MachineError(`${what} ${path}: cannot read (${code ?? (err as Error).message})`);
  }
}

/**
 * The bzImage's payload unpacked by the VMM (kernel-cache.ts), unless the config turns that
 * off or the kernel is not a bzImage this VMM unpacks. A kernel's first boot unpacks it here
 * and waits: that costs it less than the guest's own decompression and lock patching would
 * (smp-locks.ts). A payload that does not decode is an error naming the kernel file.
 */
function unpackKernel(config: MachineConfig, boot: Boot): UnpackedKernel | undefined {
  if (!boot.kernel || !config.kernel || config.kernelCache === false || !isBzImage(boot.kernel)) return undefined;
  try {
    return unpackedKernelFor(config.kernel, boot.kernel);
  } catch (err) {
    if (err instanceof KernelPayloadError) throw new MachineError(`kernel ${config.kernel}: ${err.message}`);
    throw err;
  }
}

async function readBoot(config: MachineConfig, options: MachineOptions): Promise<Boot> {
  if (options.rawBoot) {
    if (config.kernel) throw new ConfigError('config: kernel and a raw boot image cannot both be given');
    if (options.rawBoot.address + options.rawBoot.code.length > 0x10000) {
      throw new ConfigError(`raw boot image at 0x${options.rawBoot.address.toString(16)} must fit below 64 KiB`);
    }
    return { raw: options.rawBoot, cmdline: '' };
  }
  if (!config.kernel) throw new ConfigError('config: no kernel given');
  return {
    kernel: await readFile(config.kernel, 'kernel'),
    ...(config.initrd ? { initrd: await readFile(config.initrd, 'initrd') } : {}),
    cmdline: config.append ?? DEFAULT_APPEND,
  };
}
