// `tsvirt run`: boot a Linux guest. Flags and a JSON config file (--config) describe the same
// MachineConfig; flags given on the command line override the file. Without a kernel, the
// lab's guest image is booted with an interactive shell (the README's demo).
import type { Command } from 'commander';
import type { MachineConfig } from '../../vmm/config.js';

interface RunFlags {
  config?: string;
  kernel?: string;
  initrd?: string;
  append?: string;
  cpus?: string;
  memory?: string;
  memoryBackend?: string;
  cpu?: string;
  console?: string;
  reboot?: boolean;
  name?: string;
  qmp?: string[];
  disk?: string[];
  channel?: string[];
  consoleDevice?: string;
  rng?: string | boolean;
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/** Command-line flags as a config object (only what was given). */
async function flagsToConfig(flags: RunFlags): Promise<MachineConfig> {
  const { ConfigError, parseMemoryOption } = await import('../../vmm/config.js');
  const out: Record<string, unknown> = {};
  if (flags.kernel !== undefined) out.kernel = flags.kernel;
  if (flags.initrd !== undefined) out.initrd = flags.initrd;
  if (flags.append !== undefined) out.append = flags.append;
  if (flags.cpus !== undefined) {
    if (!/^\d+$/.test(flags.cpus)) throw new ConfigError(`--cpus: "${flags.cpus}" is not a whole number`);
    out.cpus = Number(flags.cpus);
  }
  if (flags.memory !== undefined) Object.assign(out, parseMemoryOption(flags.memory));
  if (flags.memoryBackend !== undefined) out.memoryBackend = flags.memoryBackend;
  if (flags.cpu !== undefined) out.cpu = flags.cpu;
  if (flags.console !== undefined) out.console = flags.console;
  if (flags.consoleDevice !== undefined) {
    if (flags.consoleDevice !== 'serial' && flags.consoleDevice !== 'virtio') {
      throw new ConfigError(`--console-device: "${flags.consoleDevice}" is not serial or virtio`);
    }
    out.consoleDevice = flags.consoleDevice;
  }
  if (flags.reboot === false) out.noReboot = true;
  if (flags.name !== undefined) out.name = flags.name;
  if (flags.qmp !== undefined) out.qmp = flags.qmp;
  if (flags.disk !== undefined || flags.channel !== undefined || flags.rng !== undefined) {
    // Parsed here too so that a bad flag is reported under its own name (--disk: ...).
    const { parseChannelOption, parseDiskOption, parseRngOption } = await import('../../virtio/config.js');
    flags.disk?.forEach(parseDiskOption);
    flags.channel?.forEach(parseChannelOption);
    if (typeof flags.rng === 'string') parseRngOption(flags.rng);
    if (flags.disk !== undefined) out.disks = flags.disk;
    if (flags.channel !== undefined) out.channels = flags.channel;
    if (flags.rng !== undefined) out.rng = flags.rng;
  }
  return out as MachineConfig;
}

async function run(flags: RunFlags): Promise<number> {
  const { loadConfigFile, validateConfig } = await import('../../vmm/config.js');
  const { Machine } = await import('../../vmm/machine.js');
  const { attachFile, attachSocket, attachStdio } = await import('../../vmm/console.js');

  const fromFile = flags.config ? loadConfigFile(flags.config) : {};
  const config = validateConfig({ ...fromFile, ...(await flagsToConfig(flags)) }, 'command line');
  if (!config.kernel) {
    // The demo: the lab's guest kernel and initramfs (an interactive busybox shell).
    const { guestInitrdPath, guestKernelPath } = await import('../../lab/paths.js');
    try {
      config.kernel = guestKernelPath();
      config.initrd ??= guestInitrdPath();
    } catch (err) {
      throw new Error(`no --kernel given, and ${(err as Error).message}`);
    }
    config.append ??= `console=ttyS0${config.consoleDevice === 'virtio' ? ' console=hvc0' : ''} reboot=k panic=-1`;
  }

  const machine = await Machine.create(config);
  const consoleSpec = config.console ?? 'stdio';
  let stopping = false;
  const quit = (): void => {
    if (stopping) return;
    stopping = true;
    void machine.quit();
  };
  machine.on('error-report', (message: string) => process.stderr.write(`tsvirt: ${message}\n`));

  let qmp: { close(): Promise<void> } | null = null;
  let attachment: { detach(): Promise<void> } | null = null;
  try {
    if (config.qmp?.length) {
      const { startQmpServers } = await import('../../qmp/server.js');
      qmp = await startQmpServers(machine, config.qmp);
    }
    if (consoleSpec === 'stdio') attachment = attachStdio(machine.console, quit);
    else if (consoleSpec.startsWith('file:')) attachment = await attachFile(machine.console, consoleSpec.slice(5));
    else if (consoleSpec.startsWith('socket:')) attachment = await attachSocket(machine.console, consoleSpec.slice(7));
    else machine.console.resume(); // "none": discard output
  } catch (err) {
    await machine.stop();
    await qmp?.close();
    throw err;
  }

  const onSignal = (): void => quit();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  await machine.start();
  const result = await machine.waitForExit();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  await attachment?.detach();
  await qmp?.close();
  return result.code;
}

export function register(program: Command): void {
  program
    .command('run')
    .description('boot a Linux guest (without --kernel: the lab guest image with a shell)')
    .option('--config <file>', 'JSON machine config (flags override its values)')
    .option('--kernel <file>', 'Linux kernel: bzImage or ELF vmlinux')
    .option('--initrd <file>', 'initial ramdisk')
    .option('--append <cmdline>', 'kernel command line')
    .option('--cpus <n>', 'vCPUs (1-255)')
    .option('--memory <size>', 'guest RAM, e.g. 512M or 2G[,thp=on|off][,ksm=on|off]')
    .option('--memory-backend <backend>', 'memfd (default) or hugetlbfs:PATH')
    .option('--cpu <model>', 'CPU model: host or a named model')
    .option('--console <spec>', 'stdio (default), none, file:PATH or socket:PATH')
    .option('--console-device <dev>', 'what carries the console: serial (COM1, default) or virtio (virtio-serial port 0, hvc0)')
    .option('--no-reboot', 'end the VM when the guest reboots')
    .option('--name <name>', 'VM name')
    .option('--qmp <spec>', 'QMP server, e.g. unix:PATH,server=on,wait=off (repeatable)', collect)
    .option('--disk <spec>', 'virtio-blk disk: path[,format=raw|qcow2][,readonly][,cache=none|writeback|writethrough][,serial=S][,logical_block_size=N][,physical_block_size=N] (repeatable)', collect)
    .option('--channel <spec>', 'virtio-serial port on a unix socket: name=NAME,path=SOCKET (repeatable)', collect)
    .option('--rng [spec]', 'virtio-rng device, optionally rate=BYTES/MS')
    .action(async (flags: RunFlags) => {
      process.exitCode = await run(flags);
    });
}
