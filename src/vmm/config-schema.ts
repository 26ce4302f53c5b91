// The machine config's JSON schema, alone in a module with no schema compiler behind it: the
// build compiles it with ajv into a standalone validator (scripts/generate-config-validator.mjs),
// and config.ts loads only that at run time.
import { MAX_VCPUS } from './vcpu-threads.cjs';
import { virtioConfigSchemaProperties } from './virtio-config.js';

/** How the schema is compiled, at build time (the generated validator) and at run time (its fallback). */
export const SCHEMA_COMPILER_OPTIONS = { allErrors: true, strict: true } as const;

export const machineConfigSchema = {
  $id: 'https://tsvirt.dev/schemas/machine.json',
  type: 'object',
  additionalProperties: false,
  properties: {
    kernel: { type: 'string', minLength: 1 },
    initrd: { type: 'string', minLength: 1 },
    append: { type: 'string' },
    cpus: { type: 'integer', minimum: 1, maximum: MAX_VCPUS },
    memory: {
      anyOf: [
        { type: 'integer', minimum: 1 },
        { type: 'string', pattern: '^\\s*\\d+(\\.\\d+)?\\s*([bBkKmMgGtT]([iI]?[bB])?)?\\s*$' },
      ],
    },
    thp: { type: 'boolean' },
    ksm: { type: 'boolean' },
    memoryBackend: { type: 'string', pattern: '^(memfd|hugetlbfs:.+)$' },
    cpu: { type: 'string', minLength: 1 },
    console: { type: 'string', pattern: '^(stdio|none|file:.+|socket:.+)$' },
    kernelCache: { type: 'boolean' },
    noReboot: { type: 'boolean' },
    name: { type: 'string', minLength: 1, pattern: '^[^\\x00-\\x1f]+$' },
    qmp: { type: 'array', items: { type: 'string', minLength: 1 } },
    ...virtioConfigSchemaProperties,
  },
} as const;
