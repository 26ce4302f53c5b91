// `tsvirt run` rejects bad flags, configs and kernels with one clear line and exit status 1,
// before any guest runs (so these need no Linux-capable KVM).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { failsWithOneLine as fails, runCli as run } from './support/run-cli.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvirt-run-cli-'));
const corrupt = join(dir, 'vmlinuz');
writeFileSync(corrupt, Buffer.alloc(4096, 0x5a));

test('bad flags: each a one-line error naming the value', { timeout: 120_000 }, async () => {
  await fails(['--kernel', corrupt, '--cpus', 'two'], /^tsvirt: --cpus: "two" is not a whole number$/);
  await fails(['--kernel', corrupt, '--cpus', '0'], /^tsvirt: command line: cpus: must be >= 1$/);
  await fails(['--kernel', corrupt, '--memory', 'lots'], /^tsvirt: command line: memory: must be a size such as 512M or 2G$/);
  await fails(['--kernel', corrupt, '--memory', '1G,hugepages=on'], /^tsvirt: --memory: unknown option "hugepages" \(thp, ksm\)$/);
  await fails(['--kernel', corrupt, '--console', 'vga'], /^tsvirt: command line: console: must be "stdio", "none", "file:PATH" or "socket:PATH"$/);
  await fails(['--kernel', corrupt, '--cpu', 'Pentium'], /^tsvirt: unknown CPU model "Pentium"/);
  const unknown = await run(['--kernel', corrupt, '--frobnicate']);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /unknown option '--frobnicate'/);
});

test('config files: unknown keys and bad values name the file and the key', { timeout: 60_000 }, async () => {
  const bad = join(dir, 'vm.json');
  writeFileSync(bad, JSON.stringify({ kernel: corrupt, vcpus: 4 }));
  await fails(['--config', bad], new RegExp(`^tsvirt: ${bad.replace(/\./g, '\\.')}: unknown key "vcpus"$`));
  writeFileSync(bad, JSON.stringify({ kernel: corrupt, noReboot: 'yes' }));
  await fails(['--config', bad], /vm\.json: noReboot: must be boolean$/);
});

test('a corrupt kernel is a clear error and nothing hangs', { timeout: 60_000 }, async () => {
  await fails(['--kernel', corrupt, '--memory', '64M', '--console', 'none'], new RegExp(`^tsvirt: kernel ${corrupt}: not a Linux kernel`));
  await fails(['--kernel', join(dir, 'missing'), '--console', 'none'], /^tsvirt: kernel .*missing: cannot read \(ENOENT\)$/);
  // A good config file, overridden by a flag: the flag's (bad) kernel is the one reported.
  const good = join(dir, 'good.json');
  writeFileSync(good, JSON.stringify({ kernel: join(dir, 'other'), memory: '64M', console: 'none' }));
  await fails(['--config', good, '--kernel', corrupt], /^tsvirt: kernel .*vmlinuz: not a Linux kernel/);
});
