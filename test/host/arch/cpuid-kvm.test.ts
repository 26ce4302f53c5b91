// CPU models against this machine's real KVM_GET_SUPPORTED_CPUID.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { Kvm } from '../../../src/kvm/index.js';
import { cpuidFeature, featureNames, findEntry, hasFeature, vendorOf } from '../../../src/arch/x86/cpuid.js';
import { CPU_MODELS, checkModel, cpuidFor } from '../../../src/arch/x86/cpu-models.js';

test('every model yields a consistent table from the host\'s supported CPUID', (t) => {
  if (!existsSync('/dev/kvm')) {
    t.skip('no /dev/kvm on this machine');
    return;
  }
  const kvm = Kvm.open();
  try {
    const supported = kvm.supportedCpuid();
    assert.ok(supported.length > 10);
    const hostFeatures = new Set(featureNames(supported));
    assert.ok(hostFeatures.has('lm') && hostFeatures.has('fpu'), 'a 64-bit host');
    for (const model of ['host', ...Object.keys(CPU_MODELS)]) {
      const missing = checkModel(model, supported);
      assert.ok(missing.every((f) => !hostFeatures.has(f)), `${model}: reported missing features the host has`);
      for (let vcpuIndex = 0; vcpuIndex < 3; vcpuIndex++) {
        const table = cpuidFor({ model, supported, vcpuIndex, cpuCount: 3 });
        assert.ok(hasFeature(table, 'hypervisor') && hasFeature(table, 'x2apic'));
        assert.equal(findEntry(table, 1)!.ebx >>> 24, vcpuIndex);
        assert.equal(findEntry(table, 0xb, 1)!.edx, vcpuIndex);
        // Nothing the host cannot do leaks in (apart from what KVM emulates).
        const extra = featureNames(table).filter((f) => !hostFeatures.has(f) && !['hypervisor', 'x2apic', 'tsc_deadline_timer', 'ht'].includes(f));
        assert.deepEqual(extra, [], `${model}: features beyond the host`);
        if (model !== 'host') {
          const want = new Set(CPU_MODELS[model]!.features);
          const beyond = featureNames(table)
            .filter((f) => cpuidFeature(f).leaf !== 0x40000001 && !want.has(f) && !['hypervisor', 'x2apic', 'ht'].includes(f));
          assert.deepEqual(beyond, [], `${model}: features outside the model`);
        }
        const keys = table.map((e) => `${e.function}.${e.index}`);
        assert.equal(new Set(keys).size, keys.length, `${model}: duplicate CPUID entries`);
      }
    }
    assert.equal(vendorOf(cpuidFor({ model: 'host', supported, vcpuIndex: 0, cpuCount: 1 })), vendorOf(supported));
  } finally {
    kvm.close();
  }
});
