// CPUID feature flags: the names Linux prints in /proc/cpuinfo mapped to where each lives
// (leaf, subleaf, register, bit), from the Intel SDM / AMD APM CPUID tables and Linux's
// arch/x86/include/asm/cpufeatures.h. Plus small helpers over KVM's CPUID entry lists.
import type { CpuidEntry } from '../../kvm/types.js';

export type { CpuidEntry };

export type CpuidRegister = 'eax' | 'ebx' | 'ecx' | 'edx';

export interface CpuidFeature {
  name: string;
  leaf: number;
  subleaf: number;
  register: CpuidRegister;
  bit: number;
}

/** KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the entry's subleaf (index) matters. */
export const KVM_CPUID_FLAG_SIGNIFICANT_INDEX = 1;

type Row = [name: string, bit: number];
function group(leaf: number, subleaf: number, register: CpuidRegister, rows: Row[]): CpuidFeature[] {
  return rows.map(([name, bit]) => ({ name, leaf, subleaf, register, bit }));
}

/** Every feature flag this project knows, by /proc/cpuinfo name. */
export const CPUID_FEATURES: readonly CpuidFeature[] = [
  ...group(1, 0, 'edx', [
    ['fpu', 0], ['vme', 1], ['de', 2], ['pse', 3], ['tsc', 4], ['msr', 5], ['pae', 6], ['mce', 7], ['cx8', 8],
    ['apic', 9], ['sep', 11], ['mtrr', 12], ['pge', 13], ['mca', 14], ['cmov', 15], ['pat', 16], ['pse36', 17],
    ['pn', 18], ['clflush', 19], ['dts', 21], ['acpi', 22], ['mmx', 23], ['fxsr', 24], ['sse', 25], ['sse2', 26],
    ['ss', 27], ['ht', 28], ['tm', 29], ['ia64', 30], ['pbe', 31],
  ]),
  ...group(1, 0, 'ecx', [
    ['pni', 0], ['pclmulqdq', 1], ['dtes64', 2], ['monitor', 3], ['ds_cpl', 4], ['vmx', 5], ['smx', 6], ['est', 7],
    ['tm2', 8], ['ssse3', 9], ['cid', 10], ['sdbg', 11], ['fma', 12], ['cx16', 13], ['xtpr', 14], ['pdcm', 15],
    ['pcid', 17], ['dca', 18], ['sse4_1', 19], ['sse4_2', 20], ['x2apic', 21], ['movbe', 22], ['popcnt', 23],
    ['tsc_deadline_timer', 24], ['aes', 25], ['xsave', 26], ['osxsave', 27], ['avx', 28], ['f16c', 29],
    ['rdrand', 30], ['hypervisor', 31],
  ]),
  ...group(6, 0, 'eax', [['dtherm', 0], ['ida', 1], ['arat', 2], ['pln', 4], ['pts', 6]]),
  ...group(7, 0, 'ebx', [
    ['fsgsbase', 0], ['tsc_adjust', 1], ['sgx', 2], ['bmi1', 3], ['hle', 4], ['avx2', 5], ['fdp_excptn_only', 6],
    ['smep', 7], ['bmi2', 8], ['erms', 9], ['invpcid', 10], ['rtm', 11], ['cqm', 12], ['zero_fcs_fds', 13],
    ['mpx', 14], ['rdt_a', 15], ['avx512f', 16], ['avx512dq', 17], ['rdseed', 18], ['adx', 19], ['smap', 20],
    ['avx512ifma', 21], ['clflushopt', 23], ['clwb', 24], ['intel_pt', 25], ['avx512pf', 26], ['avx512er', 27],
    ['avx512cd', 28], ['sha_ni', 29], ['avx512bw', 30], ['avx512vl', 31],
  ]),
  ...group(7, 0, 'ecx', [
    ['prefetchwt1', 0], ['avx512vbmi', 1], ['umip', 2], ['pku', 3], ['ospke', 4], ['waitpkg', 5],
    ['avx512_vbmi2', 6], ['cet_ss', 7], ['gfni', 8], ['vaes', 9], ['vpclmulqdq', 10], ['avx512_vnni', 11],
    ['avx512_bitalg', 12], ['tme', 13], ['avx512_vpopcntdq', 14], ['la57', 16], ['rdpid', 22],
    ['bus_lock_detect', 24], ['cldemote', 25], ['movdiri', 27], ['movdir64b', 28], ['enqcmd', 29], ['sgx_lc', 30],
    ['pks', 31],
  ]),
  ...group(7, 0, 'edx', [
    ['avx512_4vnniw', 2], ['avx512_4fmaps', 3], ['fsrm', 4], ['avx512_vp2intersect', 8], ['srbds_ctrl', 9],
    ['md_clear', 10], ['serialize', 14], ['tsxldtrk', 16], ['pconfig', 18], ['arch_lbr', 19], ['ibt', 20],
    ['amx_bf16', 22], ['avx512_fp16', 23], ['amx_tile', 24], ['amx_int8', 25], ['spec_ctrl', 26],
    ['intel_stibp', 27], ['flush_l1d', 28], ['arch_capabilities', 29], ['core_capabilities', 30],
    ['spec_ctrl_ssbd', 31],
  ]),
  ...group(7, 1, 'eax', [['avx_vnni', 4], ['avx512_bf16', 5], ['fzrm', 10], ['fsrs', 11], ['fsrc', 12]]),
  ...group(0xd, 1, 'eax', [['xsaveopt', 0], ['xsavec', 1], ['xgetbv1', 2], ['xsaves', 3]]),
  ...group(0x80000001, 0, 'ecx', [
    ['lahf_lm', 0], ['cmp_legacy', 1], ['svm', 2], ['extapic', 3], ['cr8_legacy', 4], ['abm', 5], ['sse4a', 6],
    ['misalignsse', 7], ['3dnowprefetch', 8], ['osvw', 9], ['ibs', 10], ['xop', 11], ['skinit', 12], ['wdt', 13],
    ['lwp', 15], ['fma4', 16], ['tce', 17], ['nodeid_msr', 19], ['tbm', 21], ['topoext', 22], ['perfctr_core', 23],
    ['perfctr_nb', 24], ['bpext', 26], ['ptsc', 27], ['perfctr_llc', 28], ['mwaitx', 29],
  ]),
  ...group(0x80000001, 0, 'edx', [
    ['syscall', 11], ['nx', 20], ['mmxext', 22], ['fxsr_opt', 25], ['pdpe1gb', 26], ['rdtscp', 27], ['lm', 29],
    ['3dnowext', 30], ['3dnow', 31],
  ]),
  ...group(0x80000007, 0, 'edx', [['invtsc', 8]]),
  ...group(0x80000008, 0, 'ebx', [
    ['clzero', 0], ['irperf', 1], ['xsaveerptr', 2], ['rdpru', 4], ['wbnoinvd', 9], ['amd_ibpb', 12],
    ['amd_ibrs', 14], ['amd_stibp', 15], ['amd_stibp_always_on', 17], ['amd_ppin', 23], ['amd_ssbd', 24],
    ['virt_ssbd', 25], ['amd_ssb_no', 26],
  ]),
  // KVM paravirtual features (leaf 0x40000001 EAX), named as in Linux's kvm_para.h.
  ...group(0x40000001, 0, 'eax', [
    ['kvmclock', 0], ['nopiodelay', 1], ['mmu_op', 2], ['kvmclock2', 3], ['async_pf', 4], ['steal_time', 5],
    ['pv_eoi', 6], ['pv_unhalt', 7], ['pv_tlb_flush', 9], ['async_pf_vmexit', 10], ['pv_send_ipi', 11],
    ['poll_control', 12], ['pv_sched_yield', 13], ['async_pf_int', 14], ['msi_ext_dest_id', 15],
    ['hc_map_gpa_range', 16], ['migration_control', 17], ['clocksource_stable', 24],
  ]),
];

const BY_NAME = new Map(CPUID_FEATURES.map((f) => [f.name, f]));

/** The feature of that /proc/cpuinfo name; throws naming it when unknown. */
export function cpuidFeature(name: string): CpuidFeature {
  const f = BY_NAME.get(name);
  if (!f) throw new Error(`unknown CPUID feature "${name}"`);
  return f;
}

/** Leaves whose subleaf selects different data: KVM wants the significant-index flag on them. */
export function leafHasSubleaves(leaf: number): boolean {
  return [0x4, 0x7, 0xb, 0xd, 0xf, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1d, 0x1e, 0x1f, 0x24, 0x8000001d, 0x80000020]
    .includes(leaf);
}

/** The entry for (leaf, subleaf): subleaf only counts for leaves that have subleaves. */
export function findEntry(entries: readonly CpuidEntry[], leaf: number, subleaf = 0): CpuidEntry | undefined {
  const indexed = leafHasSubleaves(leaf);
  return entries.find((e) => e.function === leaf && (!indexed || e.index === subleaf));
}

/** Whether a feature's bit is set in a CPUID table. */
export function hasFeature(entries: readonly CpuidEntry[], name: string): boolean {
  const f = cpuidFeature(name);
  const e = findEntry(entries, f.leaf, f.subleaf);
  return e !== undefined && ((e[f.register] >>> f.bit) & 1) === 1;
}

/** Every known feature set in a CPUID table, by name. */
export function featureNames(entries: readonly CpuidEntry[]): string[] {
  return CPUID_FEATURES.filter((f) => {
    const e = findEntry(entries, f.leaf, f.subleaf);
    return e !== undefined && ((e[f.register] >>> f.bit) & 1) === 1;
  }).map((f) => f.name);
}

/** The 12-character vendor string of leaf 0 (EBX, EDX, ECX order). */
export function vendorOf(entries: readonly CpuidEntry[]): string {
  const e = findEntry(entries, 0);
  if (!e) return '';
  return regsToString([e.ebx, e.edx, e.ecx]);
}

/** Packs ASCII into little-endian 32-bit register values, 4 characters each, NUL padded. */
export function stringToRegs(text: string, count: number): number[] {
  const bytes = new Uint8Array(count * 4);
  for (let i = 0; i < Math.min(text.length, bytes.length); i++) bytes[i] = text.charCodeAt(i) & 0x7f;
  const dv = new DataView(bytes.buffer);
  return Array.from({ length: count }, (_, i) => dv.getUint32(i * 4, true));
}

export function regsToString(regs: readonly number[]): string {
  const bytes = new Uint8Array(regs.length * 4);
  const dv = new DataView(bytes.buffer);
  regs.forEach((r, i) => dv.setUint32(i * 4, r >>> 0, true));
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}
