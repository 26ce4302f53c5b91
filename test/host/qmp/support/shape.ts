// The "shape" of a JSON value: its keys (recursively) and JSON types, without the values.
// Two monitors are compatible for a reply when its shapes match.
export type Shape = string | Shape[] | { [key: string]: Shape };

export function shapeOf(value: unknown): Shape {
  if (value === null) return 'null';
  if (Array.isArray(value)) {
    // The first element stands for all; an empty list only says "array".
    return value.length === 0 ? 'array' : [shapeOf(value[0])];
  }
  if (typeof value === 'object') {
    const out: { [key: string]: Shape } = {};
    for (const key of Object.keys(value).sort()) out[key] = shapeOf((value as Record<string, unknown>)[key]);
    return out;
  }
  return typeof value;
}

/** Compares two shapes; an empty array matches any array. Returns the first difference, or null. */
export function shapeDifference(a: Shape, b: Shape, path = '$'): string | null {
  if (a === 'array' && (b === 'array' || Array.isArray(b))) return null;
  if (b === 'array' && Array.isArray(a)) return null;
  if (typeof a === 'string' || typeof b === 'string') {
    return a === b ? null : `${path}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`;
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b)) return `${path}: array vs object`;
    return shapeDifference(a[0]!, b[0]!, `${path}[0]`);
  }
  const keysA = Object.keys(a);
  const keysB = Object.keys(b);
  const missing = keysA.filter((k) => !(k in b));
  const extra = keysB.filter((k) => !(k in a));
  if (missing.length || extra.length) {
    return `${path}: keys only in the first: [${missing.join(', ')}], only in the second: [${extra.join(', ')}]`;
  }
  for (const k of keysA) {
    const d = shapeDifference(a[k]!, b[k]!, `${path}.${k}`);
    if (d) return d;
  }
  return null;
}
