// `tsvirt run` parses its flags without commander when it can (commands/run.ts): the quick
// parser must read every command line it accepts exactly as commander does, and hand every
// other one to commander.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from 'commander';
import { parseRunFlagsQuickly, register, type RunFlags } from '../../../src/cli/commands/run.js';

async function commanderFlags(args: string[]): Promise<Record<string, unknown>> {
  const program = new Command('tsvirt').exitOverride();
  let seen: RunFlags | undefined;
  register(program, async (flags) => { seen = flags; return 0; });
  await program.parseAsync(['run', ...args], { from: 'user' });
  // Commander fills in the default of a --no-x flag (x: true); the quick parser leaves it out.
  const { reboot, ...rest } = seen as RunFlags & { reboot?: boolean };
  return reboot === false ? { ...rest, reboot } : rest;
}

test('the quick parser reads command lines as commander does', async () => {
  const lines = [
    [],
    ['--kernel', 'vmlinuz', '--initrd', 'initrd.gz', '--append', 'console=ttyS0 quiet', '--memory', '256M', '--cpus', '2'],
    ['--kernel=vmlinuz', '--console', 'file:/tmp/c', '--no-reboot', '--name', 'vm1', '--cpu', 'host'],
    ['--config', 'vm.json', '--memory-backend', 'hugetlbfs:/dev/hugepages', '--console-device', 'serial'],
    ['--qmp', 'unix:/a,server=on', '--qmp', 'tcp:127.0.0.1:4444,server=on', '--disk', 'a.img', '--channel', 'name=x,path=/s'],
    ['--kernel', 'a', '--kernel', 'b'],
    // An optional value: bare, given, after the option's =, before another option, repeated.
    ['--rng'], ['--rng', 'rate=1/1'], ['--rng=rate=1/1'], ['--rng', '--kernel', 'x'], ['--kernel', 'x', '--rng'],
    ['--disk', 'a.img', '--rng', '--disk', 'b.img'], ['--rng', 'rate=1/1', '--rng'], ['--append', 'quiet', '--rng', 'rate=2/1'],
  ];
  for (const args of lines) {
    const quick = await parseRunFlagsQuickly(args);
    assert.ok(quick, `quick parser declined ${JSON.stringify(args)}`);
    assert.deepEqual({ ...quick }, await commanderFlags(args), JSON.stringify(args));
  }
});

test('the quick parser leaves help and mistakes to commander', async () => {
  for (const args of [['--help'], ['-h'], ['--kernal', 'x'], ['--kernel'], ['extra'], ['--no-reboot=1'], ['--rng', 'x', 'extra'], ['--', '--rng']]) {
    assert.equal(await parseRunFlagsQuickly(args), undefined, JSON.stringify(args));
  }
});
