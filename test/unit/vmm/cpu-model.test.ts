import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuModelError, parseCpuModel } from '../../../src/vmm/cpu-model.js';
import { CPU_MODELS } from '../../../src/arch/x86/cpu-models.js';

test('--cpu: named models with QEMU-style feature edits', () => {
  assert.equal(parseCpuModel('host'), 'host');
  const m = parseCpuModel('x86-64-v2,-popcnt,+aes,vme=off');
  assert.ok(m !== 'host');
  assert.equal(m.features.includes('popcnt'), false);
  assert.equal(m.features.includes('vme'), false);
  assert.equal(m.features.includes('aes'), true);
  const expected = new Set(CPU_MODELS['x86-64-v2']!.features);
  expected.delete('popcnt');
  expected.delete('vme');
  expected.add('aes');
  assert.deepEqual(new Set(m.features), expected);
});

test('--cpu: unknown models, unknown features and bad edits are one-line errors', () => {
  const check = (text: string, pattern: RegExp): void => {
    assert.throws(() => parseCpuModel(text), (err: Error) => {
      assert.ok(err instanceof CpuModelError);
      assert.match(err.message, pattern);
      assert.equal(err.message.includes('\n'), false);
      return true;
    });
  };
  check('Pentium', /^unknown CPU model "Pentium" \(known: host, x86-64-v1/);
  check('x86-64-v1,+warp', /^CPU model "x86-64-v1,\+warp": unknown CPUID feature "warp"$/);
  check('x86-64-v1,+sse=off', /"\+sse=off" is not \+feature, -feature or feature=on\|off/);
  check('host,-sse', /--cpu host takes no feature edits/);
});
