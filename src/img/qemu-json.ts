// JSON printed the way qemu-img prints it. qemu keeps objects in a 512-bucket hash table and
// walks the buckets in order, so its key order looks random but is a pure function of the key
// names; scripts and people diffing our output against qemu-img's see the same text only if we
// reproduce that order, hence the hash below.
const BUCKETS = 512;

/** qemu's qdict hash (the classic tdb hash), computed in 32-bit unsigned arithmetic. */
function qdictHash(name: string): number {
  const bytes = Buffer.from(name, 'utf8');
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    value = (value + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  }
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/** Keys in the order qemu would print them, given the order it inserted them. */
export function qdictOrder(keys: string[]): string[] {
  // Within one bucket the newest entry comes first (qemu inserts at the list head).
  const indexed = keys.map((key, insertion) => ({ key, insertion, bucket: qdictHash(key) % BUCKETS }));
  indexed.sort((a, b) => a.bucket - b.bucket || b.insertion - a.insertion);
  return indexed.map((e) => e.key);
}

export type JsonValue = string | number | bigint | boolean | null | JsonValue[] | { [key: string]: JsonValue | undefined };

function quote(text: string): string {
  // qemu escapes control characters and everything outside ASCII as \uXXXX.
  let out = '"';
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (code < 0x20 || code >= 0x7f) {
      if (code > 0xffff) {
        const v = code - 0x10000;
        out += `\\u${(0xd800 + (v >> 10)).toString(16).padStart(4, '0')}\\u${(0xdc00 + (v & 0x3ff)).toString(16).padStart(4, '0')}`;
      } else out += `\\u${code.toString(16).padStart(4, '0')}`;
    } else out += ch;
  }
  return out + '"';
}

/** Pretty JSON like qemu's qobject_to_json_pretty: 4-space indent, qdict key order. */
export function qemuJson(value: JsonValue, indent = 0): string {
  const pad = (n: number): string => ' '.repeat(4 * n);
  if (value === null) return 'null';
  if (typeof value === 'string') return quote(value);
  if (typeof value === 'number' || typeof value === 'bigint') return String(value);
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (Array.isArray(value)) {
    if (value.length === 0) return '[\n' + pad(indent) + ']';
    return '[\n' + value.map((v) => pad(indent + 1) + qemuJson(v, indent + 1)).join(',\n') + '\n' + pad(indent) + ']';
  }
  const keys = qdictOrder(Object.keys(value).filter((k) => value[k] !== undefined));
  if (keys.length === 0) return '{\n' + pad(indent) + '}';
  return '{\n' + keys.map((k) => `${pad(indent + 1)}${quote(k)}: ${qemuJson(value[k]!, indent + 1)}`).join(',\n')
    + '\n' + pad(indent) + '}';
}
