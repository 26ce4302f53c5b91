// One call that gives a machine its PCI host bridge and virtio devices, so the VMM wires
// virtio in a few lines: it passes guest memory, its buses, an InterruptSink, optionally
// ioeventfd registration, and a way to open disk images (the block layer sits above this
// module, so the VMM supplies openImage).
import { PCIE_ECAM_SIZE, PCIE_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START } from '../arch/x86/layout.js';
import type { Bus } from '../devices/bus.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { type AddressWindow, PciHostBridge, pciInterruptRoutes, type PciRoute } from '../pci/host-bridge.js';
import { type InterruptSink, type LogLine, logToStderr } from '../pci/interrupt.js';
import { buildMcfgTable } from '../pci/mcfg.js';
import { type BlockBackend, VirtioBlk } from './blk.js';
import type { ChannelConfig, DiskConfig, RngConfig } from './config.js';
import { type PortBackend, VirtioConsole } from './console.js';
import type { VirtioDevice } from './device.js';
import { type NotifyRegistrar, VirtioPciDevice } from './pci-transport.js';
import { UnixSocketPortBackend } from './port-backends.js';
import { VirtioRng } from './rng.js';

export interface VirtioMachineHooks {
  memory: GuestMemory;
  pioBus: Bus;
  mmioBus: Bus;
  interrupts: InterruptSink;
  /** ioeventfd registration; without it doorbells arrive as MMIO exits (slower, still correct). */
  ioeventfds?: NotifyRegistrar;
  /**
   * PCI windows; default: the x86 layout's ECAM and 32-bit MMIO window, with 64-bit BARs
   * placed in the 32-bit window too (always inside the host bridge's _CRS).
   */
  layout?: { ecam: AddressWindow; mmio32: AddressWindow; mmio64?: AddressWindow };
  /** Default virtio-blk queue count (one per vCPU). */
  vcpuCount: number;
  /** Open a disk image, e.g. `(d) => openImage(d.path, { format: d.format, readOnly: d.readOnly, cache: d.cache })`. */
  openDisk(disk: DiskConfig): Promise<BlockBackend>;
  /** The guest console as virtio-console port 0 (hvc0), if wanted. */
  console?: PortBackend;
  /** Pause the VM (werror=stop); resume with AttachedVirtio.resumeAfterIoError(). */
  pauseVm?(reason: string): void;
  log?: LogLine;
}

export interface VirtioConfig {
  disks: DiskConfig[];
  channels: ChannelConfig[];
  /** undefined = no virtio-rng. */
  rng?: RngConfig;
}

export interface AttachedDevice {
  name: string;
  slot: number;
  transport: VirtioPciDevice;
}

export interface AttachedVirtio {
  bridge: PciHostBridge;
  devices: AttachedDevice[];
  /** The MCFG table for the arch layer's ACPI tables. */
  mcfg: Uint8Array;
  /** _PRT entries for the DSDT's PCI0 device. */
  routes: PciRoute[];
  /** Retry requests parked by werror=stop (call after the VM is resumed). */
  resumeAfterIoError(): void;
  /** Close disks and channel sockets. */
  close(): Promise<void>;
}

export const DEFAULT_PCI_LAYOUT: { ecam: AddressWindow; mmio32: AddressWindow; mmio64?: AddressWindow } = {
  ecam: { base: PCIE_ECAM_START, size: PCIE_ECAM_SIZE },
  mmio32: { base: PCI_MMIO32_START, size: PCI_MMIO32_SIZE },
};

export async function attachVirtioDevices(hooks: VirtioMachineHooks, config: VirtioConfig): Promise<AttachedVirtio> {
  const log = hooks.log ?? logToStderr;
  const layout = hooks.layout ?? DEFAULT_PCI_LAYOUT;
  const disks: BlockBackend[] = [];
  const blks: VirtioBlk[] = [];
  let serial: VirtioConsole | undefined;
  const close = async (): Promise<void> => {
    await serial?.close();
    for (const d of disks) await d.close?.();
  };
  try {
    const planned: Array<{ device: VirtioDevice; addr?: number }> = [];
    for (const [i, disk] of config.disks.entries()) {
      const backend = await hooks.openDisk(disk);
      disks.push(backend);
      const blk = new VirtioBlk(backend, {
        name: `virtio-blk${i}`,
        readOnly: disk.readOnly,
        numQueues: disk.numQueues ?? Math.max(1, Math.min(hooks.vcpuCount, 64)),
        log,
        ...(disk.serial !== undefined ? { serial: disk.serial } : {}),
        ...(disk.logicalBlockSize !== undefined ? { logicalBlockSize: disk.logicalBlockSize } : {}),
        ...(disk.physicalBlockSize !== undefined ? { physicalBlockSize: disk.physicalBlockSize } : {}),
        ...(disk.errorPolicy !== undefined ? { errorPolicy: disk.errorPolicy } : {}),
        onIoError: (device, error) => hooks.pauseVm?.(`${device}: ${error.message}`),
      });
      blks.push(blk);
      planned.push({ device: blk, ...(disk.addr !== undefined ? { addr: disk.addr } : {}) });
    }
    if (config.channels.length > 0 || hooks.console) {
      serial = new VirtioConsole({
        name: 'virtio-serial0',
        ports: config.channels.map((c) => ({ name: c.name, backend: new UnixSocketPortBackend(c.path) })),
        ...(hooks.console ? { console: hooks.console } : {}),
        log,
      });
      await serial.start();
      planned.push({ device: serial });
    }
    if (config.rng) {
      planned.push({
        device: new VirtioRng({ name: 'virtio-rng0', ...(config.rng.rateLimit ? { rateLimit: config.rng.rateLimit } : {}) }),
        ...(config.rng.addr !== undefined ? { addr: config.rng.addr } : {}),
      });
    }

    const bridge = new PciHostBridge({
      mmioBus: hooks.mmioBus, pioBus: hooks.pioBus, interrupts: hooks.interrupts, ecam: layout.ecam,
      mmio32: layout.mmio32, ...(layout.mmio64 ? { mmio64: layout.mmio64 } : {}), log,
    });
    const transports = planned.map((p) => new VirtioPciDevice(p.device, {
      memory: hooks.memory, interrupts: hooks.interrupts, log, ...(hooks.ioeventfds ? { notifyRegistrar: hooks.ioeventfds } : {}),
    }));
    // Fixed slots first, then the rest in configuration order: numbering is stable across runs.
    const slots = new Array<number>(planned.length);
    planned.forEach((p, i) => {
      if (p.addr !== undefined) slots[i] = bridge.addDevice(transports[i]!, p.addr);
    });
    planned.forEach((p, i) => {
      if (p.addr === undefined) slots[i] = bridge.addDevice(transports[i]!);
    });
    bridge.assignBars();
    const endBus = Number((layout.ecam.size >> 20n) - 1n);
    return {
      bridge,
      devices: transports.map((t, i) => ({ name: t.name, slot: slots[i]!, transport: t })),
      mcfg: buildMcfgTable({ ecamBase: layout.ecam.base, endBus: Math.max(0, Math.min(255, endBus)) }),
      routes: pciInterruptRoutes(),
      resumeAfterIoError: () => blks.forEach((b) => b.resume()),
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}
