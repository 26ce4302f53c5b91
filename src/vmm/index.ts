// Public surface of the VMM: the machine, its config and the errors it reports.
export { Machine, MachineError, DEFAULT_APPEND, type MachineOptions, type MachineExit, type RawBoot } from './machine.js';
export {
  ConfigError, MAX_VCPUS, DEFAULT_MEMORY, machineConfigSchema, validateConfig, loadConfigFile, memoryBytes,
  parseMemoryOption, type MachineConfig, type ConsoleSpec,
} from './config.js';
export { parseSize as parseMemorySize, formatSize as formatMemorySize, SizeError } from './size.js';
export { CpuModelError, parseCpuModel } from './cpu-model.js';
export { GuestRamError } from './guest-ram.js';
export { ConsoleStream, attachFile as attachConsoleFile, attachSocket as attachConsoleSocket, attachStdio as attachConsoleStdio } from './console.js';
