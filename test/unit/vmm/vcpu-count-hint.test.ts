// The launcher starts vCPU threads before `tsvirt run` parses its flags, from a guess at the
// count (src/vmm/vcpu-threads.cts). A wrong guess only costs time, but it must not throw on
// odd input, and the common spellings must be read right.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAX_VCPUS, vcpuCountFromRunArgs, vcpuCountHint } from '../../../src/vmm/vcpu-threads.cjs';

test('--cpus in both spellings; the last one counts; 1 without it', () => {
  assert.equal(vcpuCountFromRunArgs(['--kernel', 'k', '--cpus', '4']), 4);
  assert.equal(vcpuCountFromRunArgs(['--cpus=8', '--memory', '1G']), 8);
  assert.equal(vcpuCountFromRunArgs(['--cpus', '2', '--cpus=3']), 3);
  assert.equal(vcpuCountFromRunArgs(['--kernel', 'k']), 1);
  assert.equal(vcpuCountFromRunArgs([]), 1);
});

test('no threads for help, nonsense counts, or counts past the limit', () => {
  assert.equal(vcpuCountFromRunArgs(['--help']), 0);
  assert.equal(vcpuCountFromRunArgs(['--cpus', '2', '-h']), 0);
  assert.equal(vcpuCountFromRunArgs(['--cpus', 'many']), 0);
  assert.equal(vcpuCountFromRunArgs(['--cpus']), 1); // the flag parser reports it; one thread is the guess
  assert.equal(vcpuCountFromRunArgs(['--cpus', '0']), 0);
  assert.equal(vcpuCountFromRunArgs(['--cpus', String(MAX_VCPUS + 1)]), 0);
  assert.equal(vcpuCountFromRunArgs(['--cpus', String(MAX_VCPUS)]), MAX_VCPUS);
  // Past `--` nothing is an option.
  assert.equal(vcpuCountFromRunArgs(['--', '--cpus', '4']), 1);
});

test('the config file\'s cpus when no flag gives them; an unreadable file guesses nothing', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-hint-'));
  const config = join(dir, 'vm.json');
  writeFileSync(config, JSON.stringify({ cpus: 6, memory: '1G' }));
  assert.equal(vcpuCountFromRunArgs(['--config', config]), 6);
  assert.equal(vcpuCountFromRunArgs([`--config=${config}`, '--cpus', '2']), 2);
  writeFileSync(config, '{ not json');
  assert.equal(vcpuCountFromRunArgs(['--config', config]), 0);
  assert.equal(vcpuCountHint(undefined, join(dir, 'missing.json')), 0);
  writeFileSync(config, JSON.stringify({ memory: '1G' }));
  assert.equal(vcpuCountHint(undefined, config), 1);
});
