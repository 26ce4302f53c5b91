// The core QMP commands (run control and queries) and the events they relate to. Reply shapes
// follow QEMU 7.2's qapi schema so existing management tools can read them.
import { statSync } from 'node:fs';
import type { JsonValue } from './json-stream.js';
import { QEMU_COMPAT_VERSION, QMP_PACKAGE, QmpError } from './protocol.js';
import type { CommandContext, QmpArgs, QmpRegistry } from './registry.js';
import { QmpRegistry as Registry } from './registry.js';
import { arg } from './schema.js';
import { runHumanCommand } from './hmp.js';
import type { QmpBlockInfo, QmpPciDevice, RunState } from './target.js';

/** Events the core emits; features that emit others (DEVICE_DELETED, MIGRATION, ...) register their own. */
export const CORE_EVENTS = ['STOP', 'RESUME', 'RESET', 'POWERDOWN', 'SHUTDOWN'] as const;

/** Run states from which `cont` cannot continue without a reset (as in QEMU). */
const NEEDS_RESET: readonly RunState[] = ['internal-error', 'shutdown', 'guest-panicked'];

const PCI_CLASS_NAMES: Record<number, string> = {
  0x0100: 'SCSI controller', 0x0101: 'IDE controller', 0x0106: 'SATA controller', 0x0108: 'NVMe controller',
  0x0200: 'Ethernet controller', 0x0300: 'VGA controller', 0x0600: 'Host bridge', 0x0601: 'ISA bridge',
  0x0604: 'PCI bridge', 0x0680: 'Bridge', 0x0780: 'Communication controller', 0x00ff: 'RAM controller',
  0x0880: 'System peripheral', 0x0c03: 'USB controller',
};

function pciDeviceInfo(device: QmpPciDevice): JsonValue {
  const pciClass = device.classCode >>> 8;
  const classInfo: { [k: string]: JsonValue } = { class: pciClass };
  const desc = PCI_CLASS_NAMES[pciClass];
  if (desc !== undefined) classInfo.desc = desc;
  const info: { [k: string]: JsonValue } = {
    bus: device.bus,
    slot: device.slot,
    function: device.function,
    class_info: classInfo,
    id: {
      device: device.deviceId, vendor: device.vendorId,
      subsystem: device.subsystemId, 'subsystem-vendor': device.subsystemVendorId,
    },
    irq_pin: device.irq === undefined ? 0 : 1,
    qdev_id: device.qdevId,
    regions: device.bars.map((bar) => {
      const region: { [k: string]: JsonValue } = { bar: bar.bar, type: bar.type, address: bar.address, size: bar.size };
      if (bar.type === 'memory') {
        region.prefetch = bar.prefetch ?? false;
        region.mem_type_64 = bar.memType64 ?? false;
      }
      return region;
    }),
  };
  if (device.irq !== undefined) info.irq = device.irq;
  return info;
}

function imageInfo(block: QmpBlockInfo): JsonValue {
  const image: { [k: string]: JsonValue } = {
    filename: block.filename, format: block.format, 'virtual-size': block.virtualSize, 'dirty-flag': false,
  };
  // Space the image takes on the host, when it is a file we can see (QEMU reports it too).
  try {
    image['actual-size'] = statSync(block.filename).blocks * 512;
  } catch { /* not a local file: leave it out, as QEMU does when it cannot tell */ }
  return image;
}

function blockInfo(block: QmpBlockInfo): JsonValue {
  return {
    device: block.device,
    qdev: block.qdev,
    type: 'unknown',
    removable: block.removable,
    locked: block.locked,
    'io-status': 'ok',
    inserted: {
      file: block.filename,
      'node-name': `#block-${block.device}`,
      ro: block.readOnly,
      drv: block.format,
      backing_file_depth: 0,
      encrypted: false,
      detect_zeroes: 'off',
      bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 0,
      write_threshold: 0,
      cache: { writeback: block.cache.writeback, direct: block.cache.direct, 'no-flush': block.cache.noFlush },
      image: imageInfo(block),
    },
  };
}

const noArgs = {};

/** Registers the core commands and events on `registry`. */
export function registerCoreCommands(registry: QmpRegistry): QmpRegistry {
  for (const event of CORE_EVENTS) registry.registerEvent(event);
  const simple = (name: string, handler: (ctx: CommandContext, args: QmpArgs) => JsonValue | Promise<JsonValue>): void => {
    registry.register({ name, args: noArgs, handler: (args, ctx) => handler(ctx, args) });
  };

  // The session answers qmp_capabilities itself (it changes the session's mode); it is
  // registered so that it is validated and listed like any other command.
  registry.register({
    name: 'qmp_capabilities',
    args: { enable: arg.optional(arg.array(arg.enum(['oob']))) },
    handler: () => {
      throw new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
    },
  });
  simple('query-version', () => ({ qemu: { ...QEMU_COMPAT_VERSION }, package: QMP_PACKAGE }));
  simple('query-status', ({ target }) => {
    const status = target.runState();
    return { status, singlestep: false, running: status === 'running' };
  });
  simple('query-name', ({ target }) => (target.name === undefined ? {} : { name: target.name }) as JsonValue);
  simple('query-uuid', ({ target }) => ({ UUID: target.uuid }));
  simple('query-kvm', () => ({ enabled: true, present: true }));
  simple('query-cpus-fast', ({ target }) => target.cpus().map((cpu) => ({
    'thread-id': cpu.threadId,
    props: { 'core-id': cpu.coreId, 'thread-id': cpu.threadId_, 'socket-id': cpu.socketId },
    'qom-path': cpu.qomPath,
    'cpu-index': cpu.cpuIndex,
    target: cpu.target,
  })));
  simple('query-block', ({ target }) => target.blockDevices().map(blockInfo));
  simple('query-pci', ({ target }) => {
    const byBus = new Map<number, JsonValue[]>();
    for (const device of target.pciDevices()) {
      const list = byBus.get(device.bus) ?? [];
      list.push(pciDeviceInfo(device));
      byBus.set(device.bus, list);
    }
    return [...byBus.entries()].sort(([a], [b]) => a - b).map(([bus, devices]) => ({ bus, devices }));
  });
  simple('query-commands', ({ registry: r }) => r.commandNames().map((name) => ({ name })));
  simple('query-events', ({ registry: r }) => r.eventNames().map((name) => ({ name })));

  simple('stop', async ({ target }) => {
    // Stopping a VM that is not running changes nothing and emits no STOP (as in QEMU).
    if (target.runState() === 'running') await target.pause();
    return {};
  });
  simple('cont', async ({ target }) => {
    const state = target.runState();
    if (NEEDS_RESET.includes(state)) throw new QmpError('GenericError', 'Resetting the Virtual Machine is required');
    if (state !== 'running') await target.resume();
    return {};
  });
  simple('system_reset', async ({ target }) => { await target.reset(); return {}; });
  simple('system_powerdown', async ({ target }) => { await target.powerdown(); return {}; });
  simple('quit', async (ctx) => {
    ctx.closeAfterReply();
    await ctx.target.quit();
    return {};
  });
  registry.register({
    name: 'human-monitor-command',
    args: { 'command-line': arg.str(), 'cpu-index': arg.optional(arg.int()) },
    handler: (args, ctx) => runHumanCommand(ctx.target, args['command-line'] as string, args['cpu-index'] as number | undefined),
  });
  return registry;
}

/** A registry holding the core commands, ready for features to extend. */
export function createCoreRegistry(): QmpRegistry {
  return registerCoreCommands(new Registry());
}
