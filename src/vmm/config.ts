// The machine's configuration: one typed shape for the library (Machine.create), the JSON
// config file (`tsvirt run --config vm.json`) and the command line, validated by one JSON
// schema so that all three reject the same mistakes with the same one-line messages.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { Ajv as AjvClass, ErrorObject } from 'ajv';
import { parseSize } from './size.js';
import { MAX_VCPUS } from './vcpu-threads.cjs';
import { machineConfigSchema, SCHEMA_COMPILER_OPTIONS } from './config-schema.js';
import { parseVirtioConfig, type VirtioMachineConfig } from './virtio-config.js';

/** Where the serial console (COM1) goes. */
export type ConsoleSpec = 'stdio' | 'none' | `file:${string}` | `socket:${string}`;

/** A machine as the user describes it (every field optional but `kernel` for a Linux boot). */
export interface MachineConfig extends VirtioMachineConfig {
  /** Linux kernel: bzImage or ELF vmlinux. */
  kernel?: string;
  initrd?: string;
  /** Kernel command line. */
  append?: string;
  /** vCPU count, 1..MAX_VCPUS (default 1). */
  cpus?: number;
  /** Guest RAM: bytes, or a size string ("512M", "2G"; a bare number is MiB). Default 512M. */
  memory?: number | string;
  /** Advise guest RAM for transparent huge pages (default true). */
  thp?: boolean;
  /** Advise guest RAM for kernel same-page merging (default true). */
  ksm?: boolean;
  /** RAM backing: anonymous memory (memfd) or files on a hugetlbfs mount. */
  memoryBackend?: 'memfd' | `hugetlbfs:${string}`;
  /** CPU model: "host" (default) or a named model from src/arch's CPU tables. */
  cpu?: string;
  /** Serial console (default "stdio"). */
  console?: ConsoleSpec;
  /**
   * Unpack a bzImage's compressed kernel in the VMM, once, and keep it in the kernel cache
   * (vmm/kernel-cache.ts), instead of letting the guest decompress it at every boot. A kernel
   * placed from the cache on one CPU also has its lock prefixes elided by the VMM, as the
   * kernel would elide them itself (arch/x86/smp-locks.ts). Default true.
   */
  kernelCache?: boolean;
  /** Guest reboot ends the VM instead of restarting it (QEMU's -no-reboot). */
  noReboot?: boolean;
  /** VM name (QMP query-name, thread names). */
  name?: string;
  /** QMP server specs, e.g. "unix:/run/vm.qmp,server=on,wait=off", "tcp:127.0.0.1:4444,server=on". */
  qmp?: string[];
}

// Defined beside the thread starter, which needs it before this module (and its schema
// compiler) is loaded.
export { MAX_VCPUS, machineConfigSchema };
export const DEFAULT_MEMORY = '512M';


export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** A schema validator as ajv makes it: true or false, with the reasons in `errors`. */
export interface SchemaValidator {
  (value: unknown): boolean;
  errors?: ErrorObject[] | null;
}

/** What the build's generated validator module exports. */
interface GeneratedValidatorModule {
  validate: SchemaValidator;
  /** JSON.stringify of the schema it was compiled from: tells a stale build apart. */
  schemaJson: string;
}

/** The module the build writes beside this one (scripts/generate-config-validator.mjs). */
export const GENERATED_VALIDATOR_PATH = fileURLToPath(new URL('./config-validator.generated.cjs', import.meta.url));

/** The generated validator, or null when the build has not written one. */
function generatedValidator(): GeneratedValidatorModule | null {
  try {
    // CommonJS, so it loads synchronously, and from the run bundle too (vmm/bundles.cts).
    return createRequire(import.meta.url)(GENERATED_VALIDATOR_PATH) as GeneratedValidatorModule;
  } catch {
    return null;
  }
}

let validator: SchemaValidator | null = null;

/**
 * The schema validator: the one ajv generated at build time. Loading ajv itself and compiling
 * the schema costs more than a second under nested virtualization (docs/design.md), so that
 * happens only when the generated module is missing or was made from another schema (dist/
 * compiled with bare tsc after a schema change); the result is the same validator either way.
 */
export function schemaValidator(): SchemaValidator {
  if (!validator) {
    const generated = generatedValidator();
    if (generated && generated.schemaJson === JSON.stringify(machineConfigSchema)) {
      validator = generated.validate;
    } else {
      // ajv is CommonJS, so it loads synchronously here.
      const { Ajv } = createRequire(import.meta.url)('ajv') as { Ajv: typeof AjvClass };
      validator = new Ajv(SCHEMA_COMPILER_OPTIONS).compile(machineConfigSchema);
    }
  }
  return validator;
}

/** One line for the first schema error: `unknown key "foo"`, `cpus: must be <= 255`. */
function describe(error: ErrorObject): string {
  const path = error.instancePath.replace(/^\//, '').replace(/\//g, '.');
  if (error.keyword === 'additionalProperties') {
    const key = (error.params as { additionalProperty: string }).additionalProperty;
    return `unknown key "${key}"${path ? ` in ${path}` : ''}`;
  }
  if (error.keyword === 'pattern' || error.keyword === 'anyOf') {
    const hints: Record<string, string> = {
      memory: 'a size such as 512M or 2G',
      memoryBackend: '"memfd" or "hugetlbfs:PATH"',
      console: '"stdio", "none", "file:PATH" or "socket:PATH"',
      name: 'printable text',
    };
    const key = path.split('.')[0] ?? '';
    return `${path}: must be ${hints[key] ?? 'valid'}`;
  }
  return `${path || 'config'}: ${error.message ?? 'is invalid'}`;
}

/**
 * Check a config object against the schema (and the cross-field rules the schema cannot
 * express); `source` prefixes messages (a file name, "config"). Returns the same object typed.
 */
export function validateConfig(value: unknown, source = 'config'): MachineConfig {
  const validateSchema = schemaValidator();
  if (!validateSchema(value)) {
    // With allErrors, an anyOf failure also lists each branch's complaint; the anyOf error
    // itself says what the value should have been, so it (and unknown keys) win.
    const errors = validateSchema.errors ?? [];
    const first = errors.find((e) => e.keyword === 'additionalProperties')
      ?? errors.find((e) => e.keyword === 'anyOf') ?? errors[0];
    throw new ConfigError(`${source}: ${first ? describe(first) : 'is invalid'}`);
  }
  const config = value as MachineConfig;
  if (config.memory !== undefined) {
    try {
      memoryBytes(config);
    } catch (err) {
      throw new ConfigError(`${source}: memory: ${(err as Error).message}`);
    }
  }
  // The disk/channel/rng option strings: each mistake named by its entry.
  parseVirtioConfig(config, source);
  return config;
}

/** Read and validate a JSON config file; errors name the file. */
export function loadConfigFile(path: string): MachineConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`${path}: cannot read config file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${path}: not valid JSON: ${(err as Error).message.split('\n')[0]}`);
  }
  return validateConfig(parsed, path);
}

/** Guest RAM size in bytes (page-aligned), from the config or the default. */
export function memoryBytes(config: MachineConfig): bigint {
  const m = config.memory ?? DEFAULT_MEMORY;
  const bytes = typeof m === 'number' ? BigInt(m) : parseSize(m, 'memory size');
  if (bytes % 4096n !== 0n) throw new ConfigError(`memory size ${bytes} is not a multiple of the 4 KiB page size`);
  if (bytes < 16n * 1024n * 1024n) throw new ConfigError(`memory size ${m} is below the 16 MiB minimum`);
  return bytes;
}

/**
 * The `--memory` option's value: "2G" or "2G,thp=off,ksm=off". Options are on|off; unknown
 * options are errors.
 */
export function parseMemoryOption(text: string): Pick<MachineConfig, 'memory' | 'thp' | 'ksm'> {
  const [size, ...options] = text.split(',');
  const out: Pick<MachineConfig, 'memory' | 'thp' | 'ksm'> = { memory: size!.trim() };
  for (const opt of options) {
    const [key, value] = opt.split('=');
    if (key !== 'thp' && key !== 'ksm') throw new ConfigError(`--memory: unknown option "${key}" (thp, ksm)`);
    if (value !== 'on' && value !== 'off') throw new ConfigError(`--memory: ${key} must be on or off, not "${value ?? ''}"`);
    out[key] = value === 'on';
  }
  return out;
}
