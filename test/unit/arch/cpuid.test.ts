import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CPUID_FEATURES, CpuidEntry, cpuidFeature, featureNames, findEntry, hasFeature, regsToString, stringToRegs, vendorOf,
} from '../../../src/arch/x86/cpuid.js';
import { CPU_MODELS, checkModel, cpuidFor, encodeSignature } from '../../../src/arch/x86/cpu-models.js';

/** A KVM_GET_SUPPORTED_CPUID-like table of a host with exactly `features`. */
function syntheticHost(vendor: string, features: readonly string[], signature = 0x000906ea): CpuidEntry[] {
  const entries: CpuidEntry[] = [];
  const add = (fn: number, index: number, regs: Partial<CpuidEntry> = {}) => {
    const e: CpuidEntry = { function: fn, index, flags: [4, 7, 0xb, 0xd, 0x1f].includes(fn) ? 1 : 0, eax: 0, ebx: 0, ecx: 0, edx: 0, ...regs };
    entries.push(e);
    return e;
  };
  const [b, d, c] = stringToRegs(vendor, 3);
  add(0, 0, { eax: 0x1f, ebx: b, edx: d, ecx: c });
  add(1, 0, { eax: signature });
  add(4, 0, { eax: 0x121 }); // host cache leaves that the guest must not inherit
  add(6, 0);
  add(7, 0, { eax: 2 });
  add(7, 1);
  add(7, 2, { edx: 0xf }); // later subleaf with host-only bits
  add(0xb, 0);
  add(0xd, 0, { eax: 0x2e7, ebx: 576, ecx: 2696 });
  add(0xd, 1, { ecx: 0x1900 });
  add(0xd, 2, { eax: 256, ebx: 576 });
  add(0xd, 5, { eax: 64, ebx: 1088 });
  add(0xd, 6, { eax: 512, ebx: 1152 });
  add(0xd, 7, { eax: 1024, ebx: 1664 });
  add(0xd, 9, { eax: 8, ebx: 2688 });
  add(0x14, 0, { eax: 1 });
  add(0x1f, 0);
  add(0x40000000, 0, { eax: 0x40000001 });
  add(0x40000001, 0);
  add(0x80000000, 0, { eax: 0x80000008 });
  add(0x80000001, 0);
  add(0x80000007, 0);
  add(0x80000008, 0, { eax: 0x3030 });
  for (const name of features) {
    const f = cpuidFeature(name);
    const e = findEntry(entries, f.leaf, f.subleaf) ?? add(f.leaf, f.subleaf);
    e[f.register] = (e[f.register] | (1 << f.bit)) >>> 0;
  }
  return entries;
}

const ALL_BUT_PV_NEEDING_VMM = CPUID_FEATURES.map((f) => f.name)
  .filter((n) => !['osxsave', 'ospke', 'hypervisor', 'tsc_deadline_timer'].includes(n));
const richIntel = syntheticHost('GenuineIntel', ALL_BUT_PV_NEEDING_VMM);
const richAmd = syntheticHost('AuthenticAMD', ALL_BUT_PV_NEEDING_VMM, 0x00a00f11);

function signatureOf(entries: CpuidEntry[]): { family: number; model: number; stepping: number } {
  const eax = findEntry(entries, 1)!.eax;
  const base = (eax >> 8) & 0xf;
  const family = base === 0xf ? base + ((eax >> 20) & 0xff) : base;
  const model = base === 6 || base === 0xf ? (((eax >> 16) & 0xf) << 4) | ((eax >> 4) & 0xf) : (eax >> 4) & 0xf;
  return { family, model, stepping: eax & 0xf };
}

function brandOf(entries: CpuidEntry[]): string {
  const regs: number[] = [];
  for (let i = 0; i < 3; i++) {
    const e = findEntry(entries, 0x80000002 + i)!;
    regs.push(e.eax, e.ebx, e.ecx, e.edx);
  }
  return regsToString(regs);
}

test('feature names are unique and resolve to their bits', () => {
  const names = CPUID_FEATURES.map((f) => f.name);
  assert.equal(new Set(names).size, names.length);
  const keys = CPUID_FEATURES.map((f) => `${f.leaf}.${f.subleaf}.${f.register}.${f.bit}`);
  assert.equal(new Set(keys).size, keys.length, 'no two names share a bit');
  assert.deepEqual(cpuidFeature('avx2'), { name: 'avx2', leaf: 7, subleaf: 0, register: 'ebx', bit: 5 });
  assert.throws(() => cpuidFeature('avx1024'), /unknown CPUID feature "avx1024"/);
});

test('checkModel lists exactly the model features the host lacks', () => {
  const v2Host = syntheticHost('GenuineIntel', CPU_MODELS['x86-64-v2']!.features);
  assert.deepEqual(checkModel('x86-64-v2', v2Host), []);
  const expected = CPU_MODELS['x86-64-v3']!.features.filter((f) => !CPU_MODELS['x86-64-v2']!.features.includes(f));
  assert.deepEqual(checkModel('x86-64-v3', v2Host), expected);
  for (const name of Object.keys(CPU_MODELS)) assert.deepEqual(checkModel(name, richIntel), [], name);
  assert.deepEqual(checkModel('host', v2Host), []);
  // x2APIC and the TSC-deadline timer are emulated by KVM: never missing.
  assert.ok(!checkModel('Skylake-Client', syntheticHost('GenuineIntel', [])).includes('x2apic'));
  assert.throws(() => checkModel('Pentium-Pro', richIntel), /unknown CPU model "Pentium-Pro" \(known: host, x86-64-v1/);
});

test('a named model gets its identity and exactly its features (plus what the VMM always sets)', () => {
  for (const [name, model] of Object.entries(CPU_MODELS)) {
    const host = model.vendor === 'AuthenticAMD' ? richAmd : richIntel;
    const t = cpuidFor({ model: name, supported: host, vcpuIndex: 0, cpuCount: 1 });
    const got = new Set(featureNames(t).filter((n) => cpuidFeature(n).leaf !== 0x40000001));
    const expected = new Set([...model.features, 'hypervisor', 'x2apic']);
    assert.deepEqual([...got].filter((f) => !expected.has(f)), [], `${name}: unexpected features`);
    assert.deepEqual([...expected].filter((f) => !got.has(f)), [], `${name}: missing features`);
    if (model.vendor) assert.equal(vendorOf(t), model.vendor);
    else assert.equal(vendorOf(t), 'GenuineIntel', 'psABI levels keep the host vendor');
    if (model.family !== undefined) {
      assert.deepEqual(signatureOf(t), { family: model.family, model: model.model, stepping: model.stepping });
      assert.equal(brandOf(t), model.brand);
    }
    assert.equal(findEntry(t, 7, 2), undefined, `${name}: leaf 7.2 would leak host bits`);
    assert.equal(findEntry(t, 0x14), undefined, `${name}: no Intel PT leaf without intel_pt`);
  }
});

test('model features the host lacks are masked out, and XSAVE components follow', () => {
  const noAvx512 = syntheticHost('GenuineIntel', ALL_BUT_PV_NEEDING_VMM.filter((f) => !f.startsWith('avx512')));
  const t = cpuidFor({ model: 'Cascadelake-Server', supported: noAvx512, vcpuIndex: 0, cpuCount: 1 });
  assert.equal(hasFeature(t, 'avx512f'), false);
  assert.equal(hasFeature(t, 'avx2'), true);
  const xsave0 = findEntry(t, 0xd, 0)!;
  assert.equal(xsave0.eax, 0x207, 'x87, SSE, AVX and PKRU state only');
  assert.deepEqual(t.filter((e) => e.function === 0xd).map((e) => e.index), [0, 1, 2, 9]);
  assert.equal(xsave0.ecx, 2688 + 8, 'maximum size covers the PKRU component at the end');

  const full = cpuidFor({ model: 'Cascadelake-Server', supported: richIntel, vcpuIndex: 0, cpuCount: 1 });
  assert.deepEqual(full.filter((e) => e.function === 0xd).map((e) => e.index), [0, 1, 2, 5, 6, 7, 9]);
  const v1 = cpuidFor({ model: 'x86-64-v1', supported: richIntel, vcpuIndex: 0, cpuCount: 1 });
  assert.equal(findEntry(v1, 0xd, 0)!.eax, 0x3);
  assert.equal(findEntry(v1, 0xd, 1)!.ecx, 0, 'no supervisor state without the features');
});

test('host passes KVM\'s table through and still adds hypervisor, x2APIC and topology', () => {
  const host = syntheticHost('GenuineIntel', ['fpu', 'sse2', 'lm', 'avx512f']);
  const t = cpuidFor({ model: 'host', supported: host, vcpuIndex: 0, cpuCount: 1 });
  for (const f of ['fpu', 'sse2', 'lm', 'avx512f', 'hypervisor', 'x2apic']) assert.ok(hasFeature(t, f), f);
  assert.equal(findEntry(t, 7, 2)!.edx, 0xf, 'host model keeps every subleaf');
  assert.equal(hasFeature(cpuidFor({ model: 'host', supported: host, vcpuIndex: 0, cpuCount: 1, tscDeadlineTimer: false }),
    'tsc_deadline_timer'), false);
  // The input list is not modified.
  assert.equal(hasFeature(host, 'hypervisor'), false);
});

test('APIC IDs and x2APIC topology describe one socket of cores and threads', () => {
  for (const [cpuCount, threads] of [[1, 1], [4, 1], [8, 2], [6, 2], [300, 1]] as const) {
    for (const vcpuIndex of [0, cpuCount - 1]) {
      const apicId = vcpuIndex * 1; // the VMM numbers APIC IDs like vCPUs here
      const t = cpuidFor({ model: 'Skylake-Client', supported: richIntel, vcpuIndex, apicId, cpuCount, threadsPerCore: threads });
      const leaf1 = findEntry(t, 1)!;
      assert.equal(leaf1.ebx >>> 24, apicId & 0xff);
      assert.equal(((leaf1.edx >>> 28) & 1) === 1, cpuCount > 1, 'HTT means more than one logical CPU');
      for (const leaf of [0xb, 0x1f]) {
        const smt = findEntry(t, leaf, 0)!;
        const core = findEntry(t, leaf, 1)!;
        const end = findEntry(t, leaf, 2)!;
        assert.equal(smt.ebx, threads);
        assert.equal(smt.eax, Math.ceil(Math.log2(threads)), 'SMT shift is the thread ID width');
        assert.equal(core.ebx, cpuCount);
        assert.ok(1 << core.eax >= cpuCount, 'package shift covers all logical CPUs');
        assert.equal((smt.ecx >> 8) & 0xff, 1);
        assert.equal((core.ecx >> 8) & 0xff, 2);
        assert.equal((end.ecx >> 8) & 0xff, 0);
        assert.ok([smt, core, end].every((e) => e.edx === apicId && e.flags === 1));
      }
      const caches = t.filter((e) => e.function === 4 && (e.eax & 0x1f) !== 0);
      assert.equal(caches.length, 4);
      assert.ok(findEntry(t, 4, 0x121 /* host value */) === undefined || findEntry(t, 4, 0)!.eax !== 0x121);
      const l1 = caches.find((e) => ((e.eax >> 5) & 7) === 1)!;
      const l3 = caches.find((e) => ((e.eax >> 5) & 7) === 3)!;
      assert.ok(((l1.eax >>> 14) & 0xfff) + 1 >= threads);
      assert.ok(((l3.eax >>> 14) & 0xfff) + 1 >= cpuCount);
      // The cores field has 6 bits: it saturates at 64 cores.
      assert.equal((l3.eax >>> 26) + 1, Math.min(64, 2 ** Math.ceil(Math.log2(cpuCount / threads))));
      const ways = (l3.ebx >>> 22) + 1;
      const line = (l3.ebx & 0xfff) + 1;
      assert.equal(ways * line * (l3.ecx + 1), 16 * 1024 * 1024, 'L3 geometry multiplies out to its size');
    }
  }
});

test('AMD models describe topology with leaves 0x8000001D/1E and 0x80000008', () => {
  const t = cpuidFor({ model: 'EPYC-Rome', supported: richAmd, vcpuIndex: 5, apicId: 5, cpuCount: 8, threadsPerCore: 2 });
  assert.equal(vendorOf(t), 'AuthenticAMD');
  const ext0 = findEntry(t, 0x80000000)!;
  assert.equal(regsToString([ext0.ebx, ext0.edx, ext0.ecx]), 'AuthenticAMD');
  assert.ok(ext0.eax >= 0x8000001e);
  const topo = findEntry(t, 0x8000001e)!;
  assert.equal(topo.eax, 5);
  assert.equal((topo.ebx >> 8) & 0xff, 1, 'two threads per core');
  assert.equal(topo.ebx & 0xff, 2, 'APIC ID 5 is core 2');
  assert.equal(findEntry(t, 0x80000008)!.ecx & 0xff, 7);
  assert.equal(findEntry(t, 0x80000008)!.eax, 0x3030, 'address sizes stay the host\'s');
  assert.ok(t.filter((e) => e.function === 0x8000001d).length >= 4);
  assert.equal(t.filter((e) => e.function === 4).length, 0, 'no Intel cache leaf on AMD');
  assert.equal(signatureOf(t).family, 23);
  assert.equal(findEntry(t, 0x80000001)!.eax, findEntry(t, 1)!.eax);
});

test('the KVM paravirtual leaves announce KVM and the supported features the VMM can back', () => {
  const t = cpuidFor({ model: 'x86-64-v2', supported: richIntel, vcpuIndex: 0, cpuCount: 2 });
  const sig = findEntry(t, 0x40000000)!;
  assert.equal(regsToString([sig.ebx, sig.ecx, sig.edx]), 'KVMKVMKVM');
  assert.equal(sig.eax, 0x40000001);
  assert.ok(hasFeature(t, 'kvmclock2') && hasFeature(t, 'async_pf') && hasFeature(t, 'pv_unhalt'));
  assert.equal(hasFeature(t, 'msi_ext_dest_id'), false, 'needs VMM support, so off by default');
  const opted = cpuidFor({ model: 'x86-64-v2', supported: richIntel, vcpuIndex: 0, cpuCount: 2, extraKvmFeatures: ['msi_ext_dest_id'] });
  assert.equal(hasFeature(opted, 'msi_ext_dest_id'), true);
  const bare = syntheticHost('GenuineIntel', ['fpu']);
  assert.equal(hasFeature(cpuidFor({ model: 'host', supported: bare, vcpuIndex: 0, cpuCount: 1 }), 'kvmclock2'), false);
});

test('signatures encode extended family and model fields', () => {
  assert.equal(encodeSignature(23, 49, 0), 0x00830f10); // AMD EPYC 7002 (Rome)
  assert.equal(encodeSignature(6, 85, 7), 0x00050657); // Intel Cascade Lake
  assert.equal(encodeSignature(6, 94, 3), 0x000506e3); // Intel Skylake client
});

test('bad CPUID requests are refused in one line', () => {
  const base = { supported: richIntel, vcpuIndex: 0, cpuCount: 2 };
  assert.throws(() => cpuidFor({ ...base, model: 'nope' }), /unknown CPU model "nope"/);
  assert.throws(() => cpuidFor({ ...base, model: { name: 'x', features: ['sse9'] } }), /unknown CPUID feature "sse9"/);
  assert.throws(() => cpuidFor({ ...base, model: 'host', vcpuIndex: 2 }), /vCPU index 2 is outside 0..1/);
  assert.throws(() => cpuidFor({ ...base, model: 'host', cpuCount: 3, threadsPerCore: 2 }), /threads per core 2 must divide the CPU count 3/);
  assert.throws(() => cpuidFor({ ...base, model: 'host', supported: [] }), /lacks leaves 0 and 1/);
});
