// Named CPU models and the per-vCPU CPUID table built from them. A model is a list of
// feature names (facts about real CPU generations, as QEMU also defines them) plus the
// identity a guest sees (vendor, family/model/stepping, brand string). cpuidFor() masks the
// model by what KVM supports and adds what belongs to the vCPU: its APIC ID and topology,
// cache topology, the hypervisor bit and the KVM paravirtual leaves.
import {
  CPUID_FEATURES, CpuidEntry, CpuidRegister, KVM_CPUID_FLAG_SIGNIFICANT_INDEX, cpuidFeature, findEntry,
  leafHasSubleaves, stringToRegs, vendorOf,
} from './cpuid.js';

export interface CpuModel {
  name: string;
  /** Vendor string; undefined keeps the host's. */
  vendor?: 'GenuineIntel' | 'AuthenticAMD';
  /** Family/model/stepping; undefined keeps the host's signature. */
  family?: number;
  model?: number;
  stepping?: number;
  /** Brand string (leaves 0x80000002..4); undefined keeps the host's. */
  brand?: string;
  features: readonly string[];
}

// The psABI baseline (cmov, cx8, fpu, fxsr, mmx, sse, sse2, syscall, lm) plus the base
// features every 64-bit x86 CPU and QEMU's generic qemu64 model have. No vme: qemu64 and
// some hypervisors leave it out, and 64-bit kernels never use it.
const X86_64_V1 = [
  'fpu', 'de', 'pse', 'tsc', 'msr', 'pae', 'mce', 'cx8', 'apic', 'sep', 'mtrr', 'pge', 'mca', 'cmov', 'pat',
  'pse36', 'clflush', 'mmx', 'fxsr', 'sse', 'sse2', 'syscall', 'nx', 'lm',
];
const X86_64_V2 = [...X86_64_V1, 'cx16', 'lahf_lm', 'popcnt', 'pni', 'sse4_1', 'sse4_2', 'ssse3'];
const X86_64_V3 = [...X86_64_V2, 'avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'abm', 'movbe', 'xsave'];
const X86_64_V4 = [...X86_64_V3, 'avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'];

// Skylake client parts without TSX (disabled by microcode on most of them), with the
// speculation-control bits later microcode added.
const SKYLAKE_CLIENT = [
  ...X86_64_V1, 'vme', 'rdtscp', 'pni', 'pclmulqdq', 'ssse3', 'fma', 'cx16', 'pcid', 'sse4_1', 'sse4_2', 'movbe', 'popcnt',
  'tsc_deadline_timer', 'aes', 'xsave', 'avx', 'f16c', 'rdrand', 'lahf_lm', 'abm', '3dnowprefetch', 'fsgsbase',
  'tsc_adjust', 'bmi1', 'avx2', 'smep', 'bmi2', 'erms', 'invpcid', 'rdseed', 'adx', 'smap', 'clflushopt',
  'xsaveopt', 'xsavec', 'xgetbv1', 'xsaves', 'arat', 'spec_ctrl', 'spec_ctrl_ssbd', 'x2apic',
];
const CASCADELAKE_SERVER = [
  ...SKYLAKE_CLIENT, 'pdpe1gb', 'clwb', 'avx512f', 'avx512dq', 'avx512cd', 'avx512bw', 'avx512vl', 'pku',
  'avx512_vnni', 'arch_capabilities',
];
const EPYC = [
  ...X86_64_V1, 'vme', 'mmxext', 'fxsr_opt', 'pdpe1gb', 'rdtscp', 'pni', 'pclmulqdq', 'ssse3', 'fma', 'cx16', 'sse4_1',
  'sse4_2', 'movbe', 'popcnt', 'aes', 'xsave', 'avx', 'f16c', 'rdrand', 'lahf_lm', 'abm', 'sse4a', 'misalignsse',
  '3dnowprefetch', 'osvw', 'topoext', 'fsgsbase', 'bmi1', 'avx2', 'smep', 'bmi2', 'rdseed', 'adx', 'smap',
  'clflushopt', 'sha_ni', 'xsaveopt', 'xsavec', 'xgetbv1', 'arat', 'x2apic',
];
const EPYC_ROME = [
  ...EPYC, 'clwb', 'umip', 'rdpid', 'wbnoinvd', 'clzero', 'xsaveerptr', 'perfctr_core', 'amd_ibpb', 'amd_stibp',
  'amd_ssbd', 'xsaves',
];

/** The named models, by the name `--cpu` accepts. */
export const CPU_MODELS: Readonly<Record<string, CpuModel>> = {
  'x86-64-v1': { name: 'x86-64-v1', features: X86_64_V1 },
  'x86-64-v2': { name: 'x86-64-v2', features: X86_64_V2 },
  'x86-64-v3': { name: 'x86-64-v3', features: X86_64_V3 },
  'x86-64-v4': { name: 'x86-64-v4', features: X86_64_V4 },
  'Skylake-Client': {
    name: 'Skylake-Client', vendor: 'GenuineIntel', family: 6, model: 94, stepping: 3,
    brand: 'Intel Core Processor (Skylake, IBRS, no TSX)', features: SKYLAKE_CLIENT,
  },
  'Cascadelake-Server': {
    name: 'Cascadelake-Server', vendor: 'GenuineIntel', family: 6, model: 85, stepping: 6,
    brand: 'Intel Xeon Processor (Cascadelake)', features: CASCADELAKE_SERVER,
  },
  EPYC: {
    name: 'EPYC', vendor: 'AuthenticAMD', family: 23, model: 1, stepping: 2,
    brand: 'AMD EPYC Processor', features: EPYC,
  },
  'EPYC-Rome': {
    name: 'EPYC-Rome', vendor: 'AuthenticAMD', family: 23, model: 49, stepping: 0,
    brand: 'AMD EPYC-Rome Processor', features: EPYC_ROME,
  },
};

export type CpuModelSpec = 'host' | string | CpuModel;

/** The model of that name ('host' passes KVM's supported CPUID through); throws on unknown names. */
export function resolveCpuModel(spec: CpuModelSpec): CpuModel | 'host' {
  if (typeof spec !== 'string') {
    for (const f of spec.features) cpuidFeature(f);
    return spec;
  }
  if (spec === 'host') return 'host';
  const m = CPU_MODELS[spec];
  if (!m) throw new Error(`unknown CPU model "${spec}" (known: host, ${Object.keys(CPU_MODELS).join(', ')})`);
  return m;
}

/**
 * Features KVM provides whatever KVM_GET_SUPPORTED_CPUID says: x2APIC and the TSC-deadline
 * timer are emulated by the in-kernel local APIC, and the hypervisor bit is ours to set.
 */
const EMULATED = new Set(['x2apic', 'tsc_deadline_timer', 'hypervisor']);
/** Bits the guest OS controls (they mirror CR4) or topology sets: never part of a model. */
const DYNAMIC = new Set(['osxsave', 'ospke', 'ht']);
/** Paravirtual features the VMM must handle itself before offering them. */
const PV_NEEDS_VMM = new Set(['msi_ext_dest_id', 'hc_map_gpa_range', 'migration_control']);

/**
 * Features the model asks for that the host's KVM cannot give; empty when the model fits.
 * The VMM refuses to start and lists them.
 */
export function checkModel(spec: CpuModelSpec, supported: readonly CpuidEntry[]): string[] {
  const model = resolveCpuModel(spec);
  if (model === 'host') return [];
  return model.features.filter((name) => {
    if (EMULATED.has(name) || DYNAMIC.has(name)) return false;
    const f = cpuidFeature(name);
    const e = findEntry(supported, f.leaf, f.subleaf);
    return e === undefined || ((e[f.register] >>> f.bit) & 1) === 0;
  });
}

export interface CpuidForOptions {
  model: CpuModelSpec;
  /** KVM_GET_SUPPORTED_CPUID of this host. */
  supported: readonly CpuidEntry[];
  vcpuIndex: number;
  /** This vCPU's APIC ID (defaults to vcpuIndex). */
  apicId?: number;
  cpuCount: number;
  /**
   * SMT threads per core (default 1); all vCPUs form one socket. An AMD-vendor guest sees the
   * threads only when topoext is offered (leaf 0x8000001E), as on real AMD parts; without it
   * Linux counts every vCPU as a core.
   */
  threadsPerCore?: number;
  /** Offer the TSC-deadline timer (needs KVM's in-kernel irqchip; default true). */
  tscDeadlineTimer?: boolean;
  /** Paravirtual features that need VMM support (e.g. 'msi_ext_dest_id'), offered only when listed. */
  extraKvmFeatures?: readonly string[];
}

function bitWidth(count: number): number {
  let w = 0;
  while (1 << w < count) w++;
  return w;
}

function setBit(e: CpuidEntry, reg: CpuidRegister, bit: number, on: boolean): void {
  const mask = (1 << bit) >>> 0;
  e[reg] = on ? (e[reg] | mask) >>> 0 : (e[reg] & ~mask) >>> 0;
}

function upsert(entries: CpuidEntry[], leaf: number, subleaf: number): CpuidEntry {
  let e = findEntry(entries, leaf, subleaf);
  if (!e) {
    e = {
      function: leaf, index: subleaf, flags: leafHasSubleaves(leaf) ? KVM_CPUID_FLAG_SIGNIFICANT_INDEX : 0,
      eax: 0, ebx: 0, ecx: 0, edx: 0,
    };
    entries.push(e);
  }
  return e;
}

function removeLeaf(entries: CpuidEntry[], leaf: number, keep?: (e: CpuidEntry) => boolean): void {
  for (let i = entries.length - 1; i >= 0; i--) {
    if (entries[i]!.function === leaf && !(keep && keep(entries[i]!))) entries.splice(i, 1);
  }
}

/** Family/model/stepping as leaf 1 EAX encodes them (extended fields for family >= 15 / model >= 16). */
export function encodeSignature(family: number, model: number, stepping: number): number {
  const baseFamily = family > 0xf ? 0xf : family;
  const extFamily = family > 0xf ? family - 0xf : 0;
  return ((extFamily & 0xff) << 20 | ((model >> 4) & 0xf) << 16 | baseFamily << 8 | (model & 0xf) << 4
    | (stepping & 0xf)) >>> 0;
}

/** XSAVE state components a model may use, by the feature that enables them. */
function allowedXsaveComponents(has: (name: string) => boolean): { xcr0: number; xss: number } {
  let xcr0 = 0b11; // x87 and SSE are always there
  if (has('avx')) xcr0 |= 1 << 2;
  if (has('mpx')) xcr0 |= (1 << 3) | (1 << 4);
  if (has('avx512f')) xcr0 |= (1 << 5) | (1 << 6) | (1 << 7);
  if (has('pku')) xcr0 |= 1 << 9;
  if (has('amx_tile')) xcr0 |= (1 << 17) | (1 << 18);
  let xss = 0;
  if (has('intel_pt')) xss |= 1 << 8;
  if (has('cet_ss') || has('ibt')) xss |= (1 << 11) | (1 << 12);
  return { xcr0: xcr0 >>> 0, xss };
}

interface CacheLevel { type: 1 | 2 | 3; level: number; size: number; ways: number; sharedBy: 'core' | 'package' }
/** The cache hierarchy guests see (a typical server core); sizes in bytes, 64-byte lines. */
const CACHES: readonly CacheLevel[] = [
  { type: 1, level: 1, size: 32 * 1024, ways: 8, sharedBy: 'core' },
  { type: 2, level: 1, size: 32 * 1024, ways: 8, sharedBy: 'core' },
  { type: 3, level: 2, size: 1024 * 1024, ways: 16, sharedBy: 'core' },
  { type: 3, level: 3, size: 16 * 1024 * 1024, ways: 16, sharedBy: 'package' },
];
const LINE = 64;

/** Deterministic cache parameters (leaf 4 / 0x8000001D format). */
function cacheLeaf(c: CacheLevel, smtWidth: number, coreWidth: number, withCoreCount: boolean):
  Pick<CpuidEntry, 'eax' | 'ebx' | 'ecx' | 'edx'> {
  const sharing = c.sharedBy === 'core' ? 1 << smtWidth : 1 << (smtWidth + coreWidth);
  let eax = c.type | (c.level << 5) | (1 << 8) | (((sharing - 1) & 0xfff) << 14);
  if (withCoreCount) eax |= (((1 << coreWidth) - 1) & 0x3f) << 26;
  const sets = c.size / (c.ways * LINE);
  return { eax: eax >>> 0, ebx: (((c.ways - 1) << 22) | (LINE - 1)) >>> 0, ecx: sets - 1, edx: 0 };
}

/** The CPUID table of one vCPU. */
export function cpuidFor(opts: CpuidForOptions): CpuidEntry[] {
  const model = resolveCpuModel(opts.model);
  const supported = opts.supported;
  if (!Number.isInteger(opts.cpuCount) || opts.cpuCount < 1) throw new Error(`CPU count ${opts.cpuCount} must be at least 1`);
  if (opts.vcpuIndex < 0 || opts.vcpuIndex >= opts.cpuCount) {
    throw new Error(`vCPU index ${opts.vcpuIndex} is outside 0..${opts.cpuCount - 1}`);
  }
  const threads = opts.threadsPerCore ?? 1;
  if (!Number.isInteger(threads) || threads < 1 || opts.cpuCount % threads !== 0) {
    throw new Error(`threads per core ${threads} must divide the CPU count ${opts.cpuCount}`);
  }
  const apicId = opts.apicId ?? opts.vcpuIndex;
  if (!findEntry(supported, 0) || !findEntry(supported, 1)) {
    throw new Error('the supported CPUID list lacks leaves 0 and 1: is it really KVM_GET_SUPPORTED_CPUID?');
  }
  const entries: CpuidEntry[] = supported.map((e) => ({ ...e }));
  const hostVendor = vendorOf(supported);

  let wanted: (name: string) => boolean;
  let vendor = hostVendor;
  if (model === 'host') {
    wanted = () => true;
  } else {
    const names = new Set(model.features);
    wanted = (name) => names.has(name);
    vendor = model.vendor ?? hostVendor;
    applyModel(entries, model, supported);
  }
  const intel = vendor === 'GenuineIntel';
  const amd = vendor === 'AuthenticAMD' || vendor === 'HygonGenuine';

  // Always: the hypervisor bit and x2APIC (KVM emulates it); the TSC-deadline timer unless refused.
  const leaf1 = upsert(entries, 1, 0);
  setBit(leaf1, 'ecx', 31, true);
  setBit(leaf1, 'ecx', 21, true);
  setBit(leaf1, 'ecx', 24, (opts.tscDeadlineTimer ?? true) && (model === 'host' || wanted('tsc_deadline_timer')));

  // Topology: one socket of cpuCount/threads cores, threads SMT threads each.
  const cores = opts.cpuCount / threads;
  const smtWidth = bitWidth(threads);
  const coreWidth = bitWidth(cores);
  const logicalIds = Math.min(1 << (smtWidth + coreWidth), 255);
  leaf1.ebx = (((apicId & 0xff) << 24) | (logicalIds << 16) | ((LINE / 8) << 8)) >>> 0;
  setBit(leaf1, 'edx', 28, opts.cpuCount > 1);

  const topology = (leaf: number) => {
    removeLeaf(entries, leaf);
    const levels = [
      { type: 1, shift: smtWidth, count: threads },
      { type: 2, shift: smtWidth + coreWidth, count: opts.cpuCount },
    ];
    levels.forEach((l, i) => entries.push({
      function: leaf, index: i, flags: KVM_CPUID_FLAG_SIGNIFICANT_INDEX,
      eax: l.shift, ebx: l.count, ecx: (l.type << 8) | i, edx: apicId >>> 0,
    }));
    entries.push({ function: leaf, index: 2, flags: KVM_CPUID_FLAG_SIGNIFICANT_INDEX, eax: 0, ebx: 0, ecx: 2, edx: apicId >>> 0 });
  };
  topology(0xb);
  if (findEntry(supported, 0x1f, 0)) topology(0x1f);

  if (intel || !amd) {
    removeLeaf(entries, 4);
    CACHES.forEach((c, i) => entries.push({
      function: 4, index: i, flags: KVM_CPUID_FLAG_SIGNIFICANT_INDEX, ...cacheLeaf(c, smtWidth, coreWidth, true),
    }));
    entries.push({ function: 4, index: CACHES.length, flags: KVM_CPUID_FLAG_SIGNIFICANT_INDEX, eax: 0, ebx: 0, ecx: 0, edx: 0 });
  }
  if (amd) {
    removeLeaf(entries, 4);
    // Legacy AMD cache descriptors: L1d/L1i in 0x80000005, L2/L3 in 0x80000006.
    const l1 = (c: CacheLevel) => (((c.size / 1024) << 24) | (c.ways << 16) | (1 << 8) | LINE) >>> 0;
    const l1d = upsert(entries, 0x80000005, 0);
    l1d.ecx = l1(CACHES[0]!);
    l1d.edx = l1(CACHES[1]!);
    const l2l3 = upsert(entries, 0x80000006, 0);
    const ASSOC_16_WAY = 0x8;
    l2l3.ecx = (((CACHES[2]!.size / 1024) << 16) | (ASSOC_16_WAY << 12) | (1 << 8) | LINE) >>> 0;
    l2l3.edx = (((CACHES[3]!.size / (512 * 1024)) << 18) | (ASSOC_16_WAY << 12) | (1 << 8) | LINE) >>> 0;
    const ext8 = upsert(entries, 0x80000008, 0);
    ext8.ecx = ((((smtWidth + coreWidth) & 0xf) << 12) | ((opts.cpuCount - 1) & 0xff)) >>> 0;
    if (model === 'host' ? hasBit(supported, 'topoext') : wanted('topoext') && hasBit(supported, 'topoext')) {
      removeLeaf(entries, 0x8000001d);
      CACHES.forEach((c, i) => entries.push({
        function: 0x8000001d, index: i, flags: KVM_CPUID_FLAG_SIGNIFICANT_INDEX,
        ...cacheLeaf(c, smtWidth, coreWidth, false),
      }));
      entries.push({ function: 0x8000001d, index: CACHES.length, flags: KVM_CPUID_FLAG_SIGNIFICANT_INDEX, eax: 0, ebx: 0, ecx: 0, edx: 0 });
      const topo = upsert(entries, 0x8000001e, 0);
      topo.eax = apicId >>> 0;
      topo.ebx = (((threads - 1) << 8) | ((apicId >>> smtWidth) & 0xff)) >>> 0;
      topo.ecx = 0; // one node per socket, node 0
      topo.edx = 0;
    }
  }

  // KVM paravirtual leaves.
  const sig = upsert(entries, 0x40000000, 0);
  const [b, c, d] = stringToRegs('KVMKVMKVM', 3) as [number, number, number];
  Object.assign(sig, { eax: 0x40000001, ebx: b, ecx: c, edx: d });
  const pvSupported = findEntry(supported, 0x40000001)?.eax ?? 0;
  let pv = 0;
  for (const f of CPUID_FEATURES.filter((x) => x.leaf === 0x40000001)) {
    if (PV_NEEDS_VMM.has(f.name) && !(opts.extraKvmFeatures ?? []).includes(f.name)) continue;
    if ((pvSupported >>> f.bit) & 1) pv |= 1 << f.bit;
  }
  const pvLeaf = upsert(entries, 0x40000001, 0);
  Object.assign(pvLeaf, { eax: pv >>> 0, ebx: 0, ecx: 0, edx: 0 });

  // Maximum leaves must cover what we emit.
  const maxBasic = Math.max(...entries.filter((e) => e.function < 0x40000000).map((e) => e.function));
  const leaf0 = upsert(entries, 0, 0);
  leaf0.eax = Math.max(leaf0.eax, maxBasic);
  const maxExt = Math.max(...entries.filter((e) => e.function >= 0x80000000).map((e) => e.function), 0x80000000);
  const ext0 = upsert(entries, 0x80000000, 0);
  ext0.eax = Math.max(ext0.eax, maxExt) >>> 0;
  return entries.sort((x, y) => x.function - y.function || x.index - y.index);
}

function hasBit(entries: readonly CpuidEntry[], name: string): boolean {
  const f = cpuidFeature(name);
  const e = findEntry(entries, f.leaf, f.subleaf);
  return e !== undefined && ((e[f.register] >>> f.bit) & 1) === 1;
}

/** Rewrites the feature registers, identity and XSAVE leaves of a copied table for a named model. */
function applyModel(entries: CpuidEntry[], model: CpuModel, supported: readonly CpuidEntry[]): void {
  const names = new Set(model.features);
  // Each register that carries features becomes: the model's bits that KVM supports (or emulates).
  const registers = new Map<string, { leaf: number; subleaf: number; register: CpuidRegister; value: number }>();
  for (const f of CPUID_FEATURES) {
    if (f.leaf === 0x40000001) continue; // paravirt leaf handled by cpuidFor
    const key = `${f.leaf}.${f.subleaf}.${f.register}`;
    if (!registers.has(key)) registers.set(key, { leaf: f.leaf, subleaf: f.subleaf, register: f.register, value: 0 });
    if (!names.has(f.name) || DYNAMIC.has(f.name)) continue;
    const e = findEntry(supported, f.leaf, f.subleaf);
    const supportedBit = e !== undefined && ((e[f.register] >>> f.bit) & 1) === 1;
    if (supportedBit || EMULATED.has(f.name)) registers.get(key)!.value |= 1 << f.bit;
  }
  for (const r of registers.values()) {
    const e = findEntry(entries, r.leaf, r.subleaf);
    if (e) e[r.register] = r.value >>> 0;
    else if (r.value !== 0) upsert(entries, r.leaf, r.subleaf)[r.register] = r.value >>> 0;
  }
  // Leaf 7: only subleaves 0 and 1 are modelled; later subleaves would leak host features.
  removeLeaf(entries, 7, (e) => e.index <= 1);
  const leaf7 = findEntry(entries, 7, 0);
  if (leaf7) leaf7.eax = Math.min(leaf7.eax, 1);
  const leaf71 = findEntry(entries, 7, 1);
  if (leaf71) Object.assign(leaf71, { ebx: 0, ecx: 0, edx: 0 });
  // Leaves that describe features the model lacks go away with them.
  if (!names.has('sgx')) removeLeaf(entries, 0x12);
  if (!names.has('intel_pt')) removeLeaf(entries, 0x14);
  if (!names.has('svm')) removeLeaf(entries, 0x8000000a);
  if (!names.has('topoext')) {
    removeLeaf(entries, 0x8000001d);
    removeLeaf(entries, 0x8000001e);
  }

  // XSAVE: only the state components of the model's features.
  const { xcr0, xss } = allowedXsaveComponents((n) => names.has(n) && hasBit(supported, n));
  removeLeaf(entries, 0xd, (e) => e.index <= 1 || (e.index < 32 && (((xcr0 | xss) >>> e.index) & 1) === 1));
  const xsave0 = findEntry(entries, 0xd, 0);
  if (xsave0) {
    xsave0.eax = (xsave0.eax & xcr0) >>> 0;
    xsave0.edx = 0;
    // Largest save area over the user (XCR0) components left; 576 = legacy area + header.
    let max = 576;
    for (const e of entries) {
      if (e.function === 0xd && e.index >= 2 && ((xcr0 >>> e.index) & 1)) max = Math.max(max, e.ebx + e.eax);
    }
    xsave0.ecx = max;
    xsave0.ebx = 576; // size for the XCR0 at reset; KVM updates it as the guest sets XCR0
  }
  const xsave1 = findEntry(entries, 0xd, 1);
  if (xsave1) {
    xsave1.ecx = (xsave1.ecx & xss) >>> 0;
    xsave1.edx = 0;
  }

  // Identity: vendor, signature, brand string.
  if (model.vendor) {
    const [b, d, c] = stringToRegs(model.vendor, 3) as [number, number, number];
    Object.assign(upsert(entries, 0, 0), { ebx: b, edx: d, ecx: c });
    const ext = upsert(entries, 0x80000000, 0);
    if (model.vendor === 'AuthenticAMD') Object.assign(ext, { ebx: b, edx: d, ecx: c });
    else Object.assign(ext, { ebx: 0, edx: 0, ecx: 0 });
  }
  if (model.family !== undefined) {
    const signature = encodeSignature(model.family, model.model ?? 0, model.stepping ?? 0);
    upsert(entries, 1, 0).eax = signature;
    if (model.vendor === 'AuthenticAMD') upsert(entries, 0x80000001, 0).eax = signature;
  }
  if (model.brand !== undefined) {
    const regs = stringToRegs(model.brand, 12);
    for (let i = 0; i < 3; i++) {
      Object.assign(upsert(entries, 0x80000002 + i, 0), {
        eax: regs[i * 4]!, ebx: regs[i * 4 + 1]!, ecx: regs[i * 4 + 2]!, edx: regs[i * 4 + 3]!,
      });
    }
  }
}
