// The machine config's virtio part: its fields, their schema properties, the option-string
// parser and wantsVirtio. Kept apart from the device glue (virtio-devices.ts) so that
// validating a config, and building a machine without virtio devices, never loads the
// virtio/PCI/block modules: under nested virtualization that is 0.4-0.6 s of start-up.
import type { VirtioConfig } from '../virtio/attach.js';
import { ConfigError as VirtioOptionError, parseChannelOption, parseDiskOption, parseRngOption } from '../virtio/config.js';

/** The machine config's virtio fields: the same option strings as `tsvirt run`'s flags. */
export interface VirtioMachineConfig {
  /** `--disk` strings: `path[,format=raw|qcow2][,readonly][,cache=..][,serial=..][,logical_block_size=..]...` */
  disks?: string[];
  /** `--channel` strings: `name=NAME,path=SOCKET` (a unix socket server per port). */
  channels?: string[];
  /** `--rng`: true or an option string (`rate=BYTES/MS`) for a virtio-rng; absent/false for none. */
  rng?: boolean | string;
  /**
   * Which device carries the guest console (the `console` field's stdio/file/socket):
   * "serial" (default) is COM1; "virtio" is port 0 of a virtio-serial device, the guest's
   * hvc0 (boot it with console=hvc0). The UART stays in the machine either way, and its
   * output still reaches the console stream; input goes to the chosen device only.
   * `console=hvc0` alone works (test/guest/virtio/console-only.test.ts boots it several
   * times): the kernel log written before the virtio_console module loads is replayed once
   * hvc0 registers. (Such boots once stalled; that was the vCPU thread's lost wake-up.)
   */
  consoleDevice?: 'serial' | 'virtio';
}

/** JSON schema properties for the fields above (merged into the machine schema). */
export const virtioConfigSchemaProperties = {
  disks: { type: 'array', items: { type: 'string', minLength: 1 } },
  channels: { type: 'array', items: { type: 'string', minLength: 1 } },
  // anyOf rather than a type list: the schema compiler runs in strict mode.
  rng: { anyOf: [{ type: 'boolean' }, { type: 'string' }] },
  consoleDevice: { type: 'string', enum: ['serial', 'virtio'] },
} as const;

/** A one-line error in a virtio option; `name` matches the machine config's ConfigError. */
export class VirtioConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/**
 * Parse the config's option strings. Errors read `SOURCE: disks[1]: format=vmdk is not raw or
 * qcow2`, naming the entry; `source` is a file name or "config".
 */
export function parseVirtioConfig(config: VirtioMachineConfig, source = 'config'): VirtioConfig {
  const parse = <T>(field: string, text: string, parser: (t: string) => T): T => {
    try {
      return parser(text);
    } catch (err) {
      if (!(err instanceof VirtioOptionError)) throw err;
      throw new VirtioConfigError(`${source}: ${field}: ${err.message.replace(/^--[a-z]+: /, '')}`);
    }
  };
  const disks = (config.disks ?? []).map((d, i) => parse(`disks[${i}]`, d, parseDiskOption));
  const channels = (config.channels ?? []).map((c, i) => parse(`channels[${i}]`, c, parseChannelOption));
  const names = new Set<string>();
  channels.forEach((c, i) => {
    if (names.has(c.name)) throw new VirtioConfigError(`${source}: channels[${i}]: name=${c.name} is used by an earlier channel`);
    names.add(c.name);
  });
  const out: VirtioConfig = { disks, channels };
  if (config.rng !== undefined && config.rng !== false) {
    out.rng = parse('rng', config.rng === true ? '' : config.rng, parseRngOption);
  }
  return out;
}

/** Whether the config asks for any virtio device (and so for the PCI host bridge). */
export function wantsVirtio(config: VirtioMachineConfig): boolean {
  return (config.disks?.length ?? 0) > 0 || (config.channels?.length ?? 0) > 0
    || (config.rng !== undefined && config.rng !== false) || config.consoleDevice === 'virtio';
}
