// Argument schemas for QMP commands, and the validator that checks a command's "arguments"
// against one. Error texts are QEMU's (its QObject input visitor), because management tools
// match on them: "Parameter 'x' is missing", "Parameter 'x' is unexpected",
// "Invalid parameter type for 'x', expected: integer", "Parameter 'x' does not accept value 'y'".
import type { JsonValue } from './json-stream.js';
import { QmpError } from './protocol.js';

export type ArgType =
  | { kind: 'str' }
  | { kind: 'int' }
  | { kind: 'number' }
  | { kind: 'bool' }
  | { kind: 'any' }
  | { kind: 'enum'; values: readonly string[] }
  | { kind: 'array'; of: ArgType }
  | { kind: 'object'; fields: ArgSchema };

export interface ArgField { type: ArgType; optional: boolean }
export type ArgSchema = { readonly [name: string]: ArgField };

/** Schema builders: `{ 'command-line': arg.str(), 'cpu-index': arg.optional(arg.int()) }`. */
export const arg = {
  str: (): ArgField => ({ type: { kind: 'str' }, optional: false }),
  int: (): ArgField => ({ type: { kind: 'int' }, optional: false }),
  number: (): ArgField => ({ type: { kind: 'number' }, optional: false }),
  bool: (): ArgField => ({ type: { kind: 'bool' }, optional: false }),
  any: (): ArgField => ({ type: { kind: 'any' }, optional: false }),
  enum: (values: readonly string[]): ArgField => ({ type: { kind: 'enum', values }, optional: false }),
  array: (of: ArgField): ArgField => ({ type: { kind: 'array', of: of.type }, optional: false }),
  object: (fields: ArgSchema): ArgField => ({ type: { kind: 'object', fields }, optional: false }),
  optional: (field: ArgField): ArgField => ({ ...field, optional: true }),
};

const TYPE_NAMES: Record<ArgType['kind'], string> = {
  str: 'string', int: 'integer', number: 'number', bool: 'boolean', any: 'any', enum: 'string', array: 'array',
  object: 'object',
};

function invalidType(path: string, type: ArgType): QmpError {
  return new QmpError('GenericError', `Invalid parameter type for '${path}', expected: ${TYPE_NAMES[type.kind]}`);
}

function checkValue(path: string, type: ArgType, value: JsonValue): void {
  switch (type.kind) {
    case 'any': return;
    case 'str': if (typeof value !== 'string') throw invalidType(path, type); return;
    case 'bool': if (typeof value !== 'boolean') throw invalidType(path, type); return;
    case 'number': if (typeof value !== 'number') throw invalidType(path, type); return;
    case 'int': if (typeof value !== 'number' || !Number.isInteger(value)) throw invalidType(path, type); return;
    case 'enum':
      if (typeof value !== 'string') throw invalidType(path, type);
      if (!type.values.includes(value)) {
        throw new QmpError('GenericError', `Parameter '${path}' does not accept value '${value}'`);
      }
      return;
    case 'array':
      if (!Array.isArray(value)) throw invalidType(path, type);
      value.forEach((element, i) => checkValue(`${path}[${i}]`, type.of, element));
      return;
    case 'object':
      if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalidType(path, type);
      checkObject(type.fields, value, `${path}.`);
      return;
  }
}

function checkObject(schema: ArgSchema, value: { [key: string]: JsonValue }, prefix: string): void {
  // QEMU reports missing members before unexpected ones, each in declaration order.
  for (const [name, field] of Object.entries(schema)) {
    if (!Object.hasOwn(value, name)) {
      if (!field.optional) throw new QmpError('GenericError', `Parameter '${prefix}${name}' is missing`);
      continue;
    }
    checkValue(`${prefix}${name}`, field.type, value[name]!);
  }
  for (const name of Object.keys(value)) {
    if (!Object.hasOwn(schema, name)) throw new QmpError('GenericError', `Parameter '${prefix}${name}' is unexpected`);
  }
}

/** Throws a QmpError (GenericError) unless `args` matches `schema`. */
export function validateArguments(schema: ArgSchema, args: { [key: string]: JsonValue }): void {
  checkObject(schema, args, '');
}
