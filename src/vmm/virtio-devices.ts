// The machine's PCI host bridge and virtio devices (disks, virtio-serial channels, virtio-rng):
// the glue between the machine's config strings, the block layer that opens the images and
// src/virtio's attachVirtioDevices. The Machine owns one of these only when the config asks
// for a device, so machines without virtio keep their legacy-only layout. The config side
// (fields, schema, option parser) is in virtio-config.ts; the machine imports this module
// only when the config asks for a device.
import { openImage, type BlockDriver } from '../block/driver.js';
import { createEventfdWatcher, type EventfdWatcher } from '../kvm/eventfd-watcher.js';
import type { VmFd } from '../kvm/vm.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { Bus } from '../devices/bus.js';
import { defaultPciHostConfig, type DsdtPart, type PciHostConfig } from '../arch/x86/acpi/dsdt.js';
import { PCI_MMIO32_SIZE, PCI_MMIO32_START, PCIE_ECAM_START, pciMmio64Window } from '../arch/x86/layout.js';
import { pciRoutingDsdtPart } from '../pci/acpi.js';
import { KvmInterruptSink } from '../pci/kvm-interrupts.js';
import type { LogLine } from '../pci/interrupt.js';
import {
  attachVirtioDevices, type AttachedVirtio, type VirtioConfig,
} from '../virtio/attach.js';
import type { DiskConfig } from '../virtio/config.js';
import { KvmNotifyRegistrar } from '../virtio/kvm-notify.js';
import type { PortBackend, PortEndpoint } from '../virtio/console.js';
import type { ConsoleStream } from './console.js';
import type { QmpBlockInfo, QmpPciDevice } from '../qmp/target.js';

export interface VirtioMachineHooks {
  memory: GuestMemory;
  pioBus: Bus;
  mmioBus: Bus;
  /** The current VM (the machine builds a new one on reset). */
  vm(): VmFd;
  vcpuCount: number;
  /** werror=stop: pause the VM; the machine calls resumeAfterIoError() once resumed. */
  pauseVm(reason: string): void;
  log?: LogLine;
  /** The guest console as virtio-console port 0 (see consoleDevice); consoleStreamPort() makes one. */
  console?: PortBackend;
}

/**
 * The machine's console stream as a virtio-console port: guest output is delivered to the
 * stream's readers, and input written to the stream goes to the guest. The stream has a single
 * input waiter, so once started this port (not the UART) takes the console input.
 */
export function consoleStreamPort(stream: ConsoleStream): PortBackend {
  let port: PortEndpoint | undefined;
  let paused = false;
  const feed = (): void => {
    // The port queues what the guest has no buffer for yet; pauseInput() stops the flow.
    if (!paused && port) stream.takeInput((bytes) => { port!.fromHost(bytes.slice()); return bytes.length; });
  };
  return {
    async start(p: PortEndpoint): Promise<void> {
      port = p;
      stream.onInput(feed);
      p.hostConnected(true);
      feed();
    },
    write(data: Uint8Array): boolean {
      stream.deliverOutput(data.slice());
      return true;
    },
    pauseInput(): void { paused = true; },
    resumeInput(): void { paused = false; feed(); },
    async close(): Promise<void> {
      port = undefined;
    },
  };
}

/**
 * Only bus 0 exists, and the ECAM window, MCFG and PCI0's bus range say so. With the full
 * 0..255 range Linux probes every device slot of all 256 buses through port 0xCF8/0xCFC
 * at boot (pcibios_fixup_peer_bridges): some 16 000 exits, which took minutes in the lab.
 */
const ECAM_BUS0 = { base: PCIE_ECAM_START, size: 1n << 20n };

interface OpenDisk {
  config: DiskConfig;
  driver: BlockDriver;
}

/** The machine's PCI bus with its virtio devices. */
export class MachineVirtio {
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly attached: AttachedVirtio,
    private readonly disks: OpenDisk[],
    private readonly registrar: KvmNotifyRegistrar,
    private readonly watcher: EventfdWatcher,
    private readonly interrupts: KvmInterruptSink,
  ) {}

  /** Open the disks and sockets and plug every device into a new host bridge. */
  static async attach(hooks: VirtioMachineHooks, config: VirtioConfig): Promise<MachineVirtio> {
    const watcher = createEventfdWatcher();
    const registrar = new KvmNotifyRegistrar(hooks.vm, watcher);
    const interrupts = new KvmInterruptSink(hooks.vm, hooks.log);
    const disks: OpenDisk[] = [];
    try {
      const attached = await attachVirtioDevices({
        memory: hooks.memory,
        pioBus: hooks.pioBus,
        mmioBus: hooks.mmioBus,
        interrupts,
        layout: { ecam: ECAM_BUS0, mmio32: { base: PCI_MMIO32_START, size: PCI_MMIO32_SIZE } },
        ioeventfds: registrar,
        vcpuCount: hooks.vcpuCount,
        openDisk: async (d) => {
          // I/O on a memory file system is a copy: done in place rather than through the pool.
          const driver = await openImage(d.path, {
            readOnly: d.readOnly, ...(d.format ? { format: d.format } : {}), ...(d.cache ? { cache: d.cache } : {}), memoryIoInline: true,
          });
          disks.push({ config: d, driver });
          return driver;
        },
        pauseVm: hooks.pauseVm,
        ...(hooks.log ? { log: hooks.log } : {}),
        ...(hooks.console ? { console: hooks.console } : {}),
      }, config);
      return new MachineVirtio(attached, disks, registrar, watcher, interrupts);
    } catch (err) {
      // attachVirtioDevices closed what it opened; only the watcher is left.
      await watcher.close();
      throw err;
    }
  }

  /** The ACPI tables' PCI part: PCI0 and MCFG for bus 0 only, plus the interrupt routing (_PRT). */
  acpiOptions(memorySize: bigint): { pci: PciHostConfig; extraDsdt: DsdtPart[] } {
    return {
      pci: { ...defaultPciHostConfig(pciMmio64Window(memorySize)), ecamSize: ECAM_BUS0.size, busStart: 0, busEnd: 0 },
      extraDsdt: [pciRoutingDsdtPart()],
    };
  }

  /** The host bridge's shared config space, for vCPU threads to serve config reads (PciConfigMirror). */
  get pciConfigMirror(): SharedArrayBuffer {
    return this.attached.bridge.configMirror;
  }

  /** Machine reset: devices back to power-on state, doorbells and irqfds off the old VM. Call before it closes. */
  reset(): void {
    this.attached.bridge.reset();
    this.interrupts.release();
  }

  /** After a werror=stop pause is resumed: retry the parked requests. */
  resumeAfterIoError(): void {
    this.attached.resumeAfterIoError();
  }

  /** Close images and sockets, drop the ioeventfds and irqfds (before the VM closes) and stop the eventfd watcher. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.registrar.closeAll();
      this.interrupts.release();
      try {
        await this.attached.close();
      } finally {
        await this.watcher.close();
      }
    })();
    return this.closing;
  }

  /** QMP query-pci: the host bridge and every plugged function. */
  pciDevices(): QmpPciDevice[] {
    return this.attached.bridge.list().map((d) => ({
      bus: d.bus, slot: d.slot, function: d.function,
      vendorId: d.vendorId, deviceId: d.deviceId, classCode: d.classCode,
      subsystemVendorId: d.subsystemVendorId, subsystemId: d.subsystemId,
      qdevId: d.qdevId,
      ...(d.irq !== undefined ? { irq: d.irq } : {}),
      bars: d.bars.map((b) => ({
        bar: b.bar, type: b.type, address: Number(b.address), size: Number(b.size),
        prefetch: b.prefetch, memType64: b.memType64,
      })),
    }));
  }

  /** QMP query-block: one entry per disk, named like its virtio-blk device. */
  blockDevices(): QmpBlockInfo[] {
    return this.disks.map(({ config, driver }, i) => ({
      device: `virtio-blk${i}`,
      qdev: `virtio-blk${i}`,
      removable: false,
      locked: false,
      readOnly: driver.readOnly,
      filename: driver.filename,
      format: driver.format,
      virtualSize: Number(driver.size()),
      cache: { writeback: config.cache !== 'writethrough', direct: config.cache === 'none', noFlush: false },
    }));
  }
}
