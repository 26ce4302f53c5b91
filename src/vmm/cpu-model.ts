// Resolving `--cpu MODEL[,+feature|-feature...]` against this host's KVM: the named models
// and their CPUID construction live in src/arch; this parses QEMU-style feature edits and
// decides whether the machine may start.
import type { CpuidEntry, Kvm } from '../kvm/index.js';
import { CPU_MODELS, checkModel, resolveCpuModel as archResolveCpuModel, type CpuModel } from '../arch/x86/cpu-models.js';

export class CpuModelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CpuModelError';
  }
}

export interface ResolvedCpuModel {
  /** What `--cpu` said. */
  name: string;
  /** "host", or the named model with the feature edits applied. */
  spec: 'host' | CpuModel;
  /** KVM_GET_SUPPORTED_CPUID of this host, what every vCPU's table is cut from. */
  supported: CpuidEntry[];
}

/**
 * Parse "MODEL[,+feat][,-feat]" (feat=on / feat=off work too). A model the host cannot fully
 * give is refused, listing the missing features: a guest must never see a feature that then
 * faults, and silently dropping features would change the guest ABI behind the user's back.
 */
export function parseCpuModel(text: string): 'host' | CpuModel {
  const [name, ...edits] = text.split(',');
  if (name === 'host') {
    if (edits.length) throw new CpuModelError(`--cpu host takes no feature edits (got "${edits.join(',')}"): use a named model`);
    return 'host';
  }
  const base = CPU_MODELS[name!];
  if (!base) throw new CpuModelError(`unknown CPU model "${name}" (known: host, ${Object.keys(CPU_MODELS).join(', ')})`);
  const features = new Set(base.features);
  for (const edit of edits) {
    const m = /^([+-])?([a-z0-9_.]+)(?:=(on|off))?$/i.exec(edit);
    if (!m || (m[1] && m[3])) throw new CpuModelError(`CPU model "${text}": "${edit}" is not +feature, -feature or feature=on|off`);
    const on = m[1] ? m[1] === '+' : m[3] !== 'off';
    if (on) features.add(m[2]!); else features.delete(m[2]!);
  }
  const model: CpuModel = { ...base, name: text, features: [...features] };
  try {
    archResolveCpuModel(model); // checks every feature name
  } catch (err) {
    throw new CpuModelError(`CPU model "${text}": ${(err as Error).message}`);
  }
  return model;
}

export function resolveCpuModel(kvm: Kvm, text: string): ResolvedCpuModel {
  const spec = parseCpuModel(text);
  const supported = kvm.supportedCpuid();
  const missing = checkModel(spec, supported);
  if (missing.length > 0) {
    throw new CpuModelError(`CPU model "${text}" needs features this host's KVM does not offer: ${missing.join(', ')}`);
  }
  return { name: text, spec, supported };
}
