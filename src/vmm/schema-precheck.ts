// A conservative JSON-schema check that never loads a schema compiler. It answers one
// question: can this value be shown valid against the schema with simple checks? It knows
// the keywords the machine config schema uses; at any other keyword, or any doubt, it says
// no. The caller then asks the real validator (ajv), which stays the authority on every
// value and writes the error messages. So a config that is fine, which is what `tsvirt run`
// gets almost every time, is accepted without paying for loading ajv and compiling the
// schema: under nested virtualization that is more than a second of boot time
// (docs/design.md).
//
// The rule it must keep: never accept what ajv rejects. test/unit/vmm/schema-precheck.test.ts
// holds it to that against ajv itself.

type Schema = { readonly [keyword: string]: unknown };

/** Keywords that do not constrain the value. */
const ANNOTATIONS = new Set(['$id', '$schema', '$comment', 'title', 'description']);

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function typeMatches(type: unknown, value: unknown): boolean {
  switch (type) {
    case 'object': return isObject(value);
    case 'array': return Array.isArray(value);
    case 'string': return typeof value === 'string';
    case 'boolean': return typeof value === 'boolean';
    case 'integer': return Number.isInteger(value);
    case 'number': return typeof value === 'number' && Number.isFinite(value);
    default: return false; // a type list or an unknown type: not decided here
  }
}

/** True only when `value` is certainly valid against `schema`. */
export function surelyValid(schema: Schema, value: unknown): boolean {
  for (const [keyword, arg] of Object.entries(schema)) {
    if (ANNOTATIONS.has(keyword)) continue;
    switch (keyword) {
      case 'type':
        if (!typeMatches(arg, value)) return false;
        break;
      case 'enum':
        // Only primitive members: ajv compares objects structurally.
        if (!Array.isArray(arg) || !arg.some((m) => (m === null || typeof m !== 'object') && m === value)) return false;
        break;
      case 'minLength':
      case 'maxLength': {
        if (typeof value !== 'string') break;
        // JSON schema counts code points, as ajv does (not UTF-16 units).
        const length = [...value].length;
        if (typeof arg !== 'number' || (keyword === 'minLength' ? length < arg : length > arg)) return false;
        break;
      }
      case 'pattern':
        // ajv compiles patterns with the "u" flag.
        if (typeof value === 'string' && (typeof arg !== 'string' || !new RegExp(arg, 'u').test(value))) return false;
        break;
      case 'minimum':
      case 'maximum':
        if (typeof value !== 'number') break;
        if (typeof arg !== 'number' || (keyword === 'minimum' ? value < arg : value > arg)) return false;
        break;
      case 'anyOf':
        if (!Array.isArray(arg) || !arg.some((s) => isObject(s) && surelyValid(s, value))) return false;
        break;
      case 'items':
        if (!Array.isArray(value)) break;
        if (!isObject(arg) || !value.every((item) => surelyValid(arg, item))) return false;
        break;
      case 'properties':
        if (!isObject(value)) break;
        if (!isObject(arg)) return false;
        for (const [key, sub] of Object.entries(arg)) {
          if (!Object.hasOwn(value, key)) continue;
          if (!isObject(sub) || !surelyValid(sub, value[key])) return false;
        }
        break;
      case 'additionalProperties':
        if (!isObject(value)) break;
        if (arg === true) break;
        // Only `false` is decided here: every key must be a declared property.
        if (arg !== false) return false;
        {
          const declared = isObject(schema.properties) ? schema.properties : {};
          if (!Object.keys(value).every((key) => Object.hasOwn(declared, key))) return false;
        }
        break;
      default:
        return false; // a keyword this check does not know: let the real validator decide
    }
  }
  return true;
}
