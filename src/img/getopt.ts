// A getopt_long work-alike: qemu-img's argument style (clustered short options, options after
// operands, `--` to stop) is what users type, so we parse it the way glibc does rather than the
// way an option library would.
import { UsageError } from './errors.js';

export interface OptionSpec {
  /** getopt short string: a letter followed by ':' takes an argument, e.g. "hf:o:q". */
  short: string;
  /** long option name -> takes an argument; `alias` maps it to a short letter. */
  long?: Record<string, { arg: boolean; alias?: string }>;
}

export interface ParsedOption { name: string; value: string | undefined }
export interface ParsedArgs { options: ParsedOption[]; operands: string[] }

function shortTable(spec: string): Map<string, boolean> {
  const table = new Map<string, boolean>();
  for (let i = 0; i < spec.length; i++) {
    const letter = spec[i]!;
    const takesArg = spec[i + 1] === ':';
    table.set(letter, takesArg);
    if (takesArg) i++;
  }
  return table;
}

/** Parses argv like getopt_long with permutation: operands may come before or after options. */
export function getopt(argv: readonly string[], spec: OptionSpec): ParsedArgs {
  const shorts = shortTable(spec.short);
  const longs = spec.long ?? {};
  const options: ParsedOption[] = [];
  const operands: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = arg.slice(2, eq < 0 ? undefined : eq);
      const candidates = Object.keys(longs).filter((l) => l === name || l.startsWith(name));
      const exact = candidates.includes(name) ? name : candidates.length === 1 ? candidates[0] : undefined;
      if (exact === undefined || name === '') throw new UsageError(`unrecognized option '--${name}'`);
      const def = longs[exact]!;
      let value: string | undefined;
      if (def.arg) {
        if (eq >= 0) value = arg.slice(eq + 1);
        else if (i + 1 < argv.length) value = argv[++i];
        else throw new UsageError(`missing argument for option '--${exact}'`);
      } else if (eq >= 0) {
        throw new UsageError(`option '--${exact}' doesn't allow an argument`);
      }
      options.push({ name: def.alias ?? exact, value });
      continue;
    }
    if (arg.startsWith('-') && arg.length > 1) {
      for (let j = 1; j < arg.length; j++) {
        const letter = arg[j]!;
        const takesArg = shorts.get(letter);
        if (takesArg === undefined) throw new UsageError(`unrecognized option '-${letter}'`);
        if (!takesArg) {
          options.push({ name: letter, value: undefined });
          continue;
        }
        let value: string;
        if (j + 1 < arg.length) value = arg.slice(j + 1);
        else if (i + 1 < argv.length) value = argv[++i]!;
        else throw new UsageError(`missing argument for option '-${letter}'`);
        options.push({ name: letter, value });
        break;
      }
      continue;
    }
    operands.push(arg);
  }
  return { options, operands };
}

/** Convenience view over parsed options: last value wins, flags are booleans. */
export class Options {
  constructor(private readonly parsed: ParsedOption[]) {}
  has(name: string): boolean {
    return this.parsed.some((o) => o.name === name);
  }
  get(name: string): string | undefined {
    let value: string | undefined;
    for (const o of this.parsed) if (o.name === name) value = o.value;
    return value;
  }
  all(name: string): string[] {
    return this.parsed.filter((o) => o.name === name).map((o) => o.value ?? '');
  }
}
