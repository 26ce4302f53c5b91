// `tsvirt run`: boot a Linux guest. Flags and a JSON config file (--config) describe the same
// MachineConfig; flags given on the command line override the file. Without a kernel, the
// lab's guest image is booted with an interactive shell (the README's demo).
import { parseArgs } from 'node:util';
import type { Command } from 'commander';
import type { MachineConfig } from '../../vmm/config.js';
import { codeWarmedUp } from '../../vmm/bundles.cjs';
import { prestartVcpuThreads, stopPrestartedVcpuThreads, vcpuCountHint } from '../../vmm/vcpu-threads.cjs';

export interface RunFlags {
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

type VmmModule = typeof import('../../vmm/startup.js');

/**
 * The VMM's main-thread modules. In the build's run bundle (vmm/bundles.cts) they are part
 * of the same file, initialised here on first use; unbundled, they load as modules.
 */
const loadVmm = (): Promise<VmmModule> => import('../../vmm/startup.js');

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/** Command-line flags as a config object (only what was given). */
async function flagsToConfig(flags: RunFlags): Promise<MachineConfig> {
  const { ConfigError, parseMemoryOption } = await loadVmm();
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

/** How `tsvirt run` was loaded: the launcher says whether the bundle's code cache was used. */
export interface RunLoad {
  codeCache?: string;
}

async function run(flags: RunFlags, load: RunLoad = {}): Promise<number> {
  const { bootTrace } = await import('../../vmm/boot-trace.js');
  bootTrace(`run: flags parsed${load.codeCache ? ` (run bundle, code cache ${load.codeCache})` : ''}`);
  // The vCPU threads boot on another host CPU while this thread loads the VMM and builds the VM.
  prestartVcpuThreads(vcpuCountHint(flags.cpus, flags.config));
  // The kernel and initrd are read on the thread pool meanwhile (taken by Machine.create).
  const { preloadFile } = await import('../../vmm/file-preload.js');
  if (flags.kernel !== undefined) preloadFile(flags.kernel);
  if (flags.initrd !== undefined) preloadFile(flags.initrd);
  // So is KVM_CREATE_VM, the slowest ioctl of a nested start-up.
  const { preloadVm, discardPreloadedVm } = await import('../../vmm/vm-preload.js');
  preloadVm();
  try {
    return await runMachine(flags);
  } finally {
    // Threads and a VM no machine took (the config was bad, say): ended before the process exits.
    await stopPrestartedVcpuThreads();
    await discardPreloadedVm();
  }
}

async function runMachine(flags: RunFlags): Promise<number> {
  const { bootTrace } = await import('../../vmm/boot-trace.js');
  const { loadConfigFile, validateConfig, Machine, attachFile, attachSocket, attachStdio } = await loadVmm();
  bootTrace('run: vmm modules loaded');

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

  bootTrace('run: config validated');
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
  bootTrace('run: vCPUs released');
  // What start-up compiles is compiled now: the run bundle's code cache can take it in.
  codeWarmedUp();
  const result = await machine.waitForExit();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  await attachment?.detach();
  await qmp?.close();
  return result.code;
}

/**
 * `tsvirt run`'s options, in commander's notation: `<v>` takes a value, `[v]` an optional
 * one, `--no-x` negates x. Both commander (help, errors) and the quick parser below read them.
 */
const RUN_OPTIONS: ReadonlyArray<{ flags: string; description: string; repeatable?: true }> = [
  { flags: '--config <file>', description: 'JSON machine config (flags override its values)' },
  { flags: '--kernel <file>', description: 'Linux kernel: bzImage or ELF vmlinux' },
  { flags: '--initrd <file>', description: 'initial ramdisk' },
  { flags: '--append <cmdline>', description: 'kernel command line' },
  { flags: '--cpus <n>', description: 'vCPUs (1-255)' },
  { flags: '--memory <size>', description: 'guest RAM, e.g. 512M or 2G[,thp=on|off][,ksm=on|off]' },
  { flags: '--memory-backend <backend>', description: 'memfd (default) or hugetlbfs:PATH' },
  { flags: '--cpu <model>', description: 'CPU model: host or a named model' },
  { flags: '--console <spec>', description: 'stdio (default), none, file:PATH or socket:PATH' },
  { flags: '--console-device <dev>', description: 'what carries the console: serial (COM1, default) or virtio (virtio-serial port 0, hvc0)' },
  { flags: '--no-reboot', description: 'end the VM when the guest reboots' },
  { flags: '--name <name>', description: 'VM name' },
  { flags: '--qmp <spec>', description: 'QMP server, e.g. unix:PATH,server=on,wait=off (repeatable)', repeatable: true },
  { flags: '--disk <spec>', description: 'virtio-blk disk: path[,format=raw|qcow2][,readonly][,cache=none|writeback|writethrough][,serial=S][,logical_block_size=N][,physical_block_size=N] (repeatable)', repeatable: true },
  { flags: '--channel <spec>', description: 'virtio-serial port on a unix socket: name=NAME,path=SOCKET (repeatable)', repeatable: true },
  { flags: '--rng [spec]', description: 'virtio-rng device, optionally rate=BYTES/MS' },
];

const camelCase = (name: string): string => name.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());

/**
 * `tsvirt run ARGS` without commander: loading commander and every subcommand's module is a
 * visible part of the boot time under nested virtualization, and `run` is the command whose
 * start-up is measured. Node's own parseArgs reads the same option table; options whose
 * value is optional (`--rng [spec]`) are picked out first by commander's rule. Anything it
 * does not take plainly (help, an unknown or malformed option, an argument) returns
 * undefined, and the caller goes through commander, which has the final word and the error
 * messages.
 */
export async function runFast(args: string[], load: RunLoad = {}): Promise<number | undefined> {
  const flags = await parseRunFlagsQuickly(args);
  return flags === undefined ? undefined : run(flags, load);
}

/** The quick parser behind runFast: the flags, or undefined when commander must decide. */
export async function parseRunFlagsQuickly(args: string[]): Promise<RunFlags | undefined> {
  type Spec = { type: 'string' | 'boolean'; multiple?: boolean };
  const options: Record<string, Spec> = {};
  const optional = new Set<string>();
  for (const o of RUN_OPTIONS) {
    const m = /^--([a-z-]+)(?: ([<[])\w+[>\]])?$/.exec(o.flags)!;
    if (m[2] === '[') optional.add(m[1]!);
    else options[m[1]!] = m[2] ? { type: 'string', ...(o.repeatable ? { multiple: true } : {}) } : { type: 'boolean' };
  }
  const { rest, values: optionalValues } = takeOptionalValues(args, optional, options);
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: rest, options, strict: true, allowPositionals: false });
  } catch {
    return undefined;
  }
  const flags: Record<string, unknown> = {};
  for (const [name, value] of [...Object.entries(parsed.values), ...optionalValues]) {
    if (name.startsWith('no-')) flags[camelCase(name.slice(3))] = false;
    else flags[camelCase(name)] = value;
  }
  return flags as RunFlags;
}

/**
 * Takes the options whose value is optional out of `args`, by commander's rule: `--opt=V`
 * and `--opt V` (V not starting with '-') give V, a bare `--opt` gives true, the last one
 * counts. The value of an option that requires one is never mistaken for an option, and
 * nothing after `--` is looked at.
 */
function takeOptionalValues(args: string[], optional: Set<string>, options: Record<string, { type: string }>):
  { rest: string[]; values: Array<[string, string | true]> } {
  const rest: string[] = [];
  const values = new Map<string, string | true>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') {
      rest.push(...args.slice(i));
      break;
    }
    const eq = arg.indexOf('=');
    const name = arg.startsWith('--') ? arg.slice(2, eq < 0 ? undefined : eq) : '';
    if (!optional.has(name)) {
      rest.push(arg);
      // A required value is the next argument whatever it looks like: keep them together.
      if (eq < 0 && options[name]?.type === 'string' && i + 1 < args.length) rest.push(args[++i]!);
      continue;
    }
    values.delete(name);
    if (eq >= 0) values.set(name, arg.slice(eq + 1));
    else if (i + 1 < args.length && !args[i + 1]!.startsWith('-')) values.set(name, args[++i]!);
    else values.set(name, true);
  }
  return { rest, values: [...values] };
}

/** Adds `run` to the program; `action` is what runs with the parsed flags (tests replace it). */
export function register(program: Command, action: (flags: RunFlags) => Promise<number> = run): void {
  const command = program
    .command('run')
    .description('boot a Linux guest (without --kernel: the lab guest image with a shell)');
  for (const o of RUN_OPTIONS) {
    if (o.repeatable) command.option(o.flags, o.description, collect);
    else command.option(o.flags, o.description);
  }
  command.action(async (flags: RunFlags) => {
    process.exitCode = await action(flags);
  });
}
