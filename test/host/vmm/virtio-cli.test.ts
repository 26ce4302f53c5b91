// `tsvirt run --disk/--channel/--rng` and the config file's disks/channels/rng: bad values are
// one-line errors naming the flag or the file and entry, before any guest runs.
import { test } from 'node:test';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { failsWithOneLine as fails } from './support/run-cli.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvirt-virtio-cli-'));
const kernel = join(dir, 'vmlinuz');
writeFileSync(kernel, Buffer.alloc(4096, 0x5a));

test('bad --disk, --channel and --rng values: one line naming the flag and the value', { timeout: 120_000 }, async () => {
  await fails(['--kernel', kernel, '--disk', 'a.img,format=vmdk'], /^tsvirt: --disk: format=vmdk is not raw or qcow2$/);
  await fails(['--kernel', kernel, '--disk', 'a.img,cache=fast'], /^tsvirt: --disk: cache=fast is not none, writeback or writethrough$/);
  await fails(['--kernel', kernel, '--disk', 'a.img,physical_block_size=3000'], /^tsvirt: --disk: physical_block_size=3000 is not a power of two$/);
  await fails(['--kernel', kernel, '--disk', 'format=raw'], /^tsvirt: --disk: no image path in 'format=raw'$/);
  await fails(['--kernel', kernel, '--channel', 'name=x'], /^tsvirt: --channel: path=\.\.\. is missing in 'name=x'$/);
  await fails(['--kernel', kernel, '--rng', 'rate=0/10'], /^tsvirt: --rng: rate=0\/10 is not BYTES\/PERIOD_MS with both positive$/);
  await fails(['--kernel', kernel, '--console-device', 'tty'], /^tsvirt: --console-device: "tty" is not serial or virtio$/);
  // A good option with an image that is not there: the block layer names the file.
  const missing = join(dir, 'nowhere.qcow2');
  await fails(['--kernel', kernel, '--disk', `${missing},format=qcow2`], new RegExp(`^tsvirt: .*${missing.replace(/\./g, '\\.')}`));
});

test('config file: disks/channels/rng are checked by the schema and the option parser, naming the file', { timeout: 60_000 }, async () => {
  const file = join(dir, 'vm.json');
  const name = file.replace(/\./g, '\\.');
  writeFileSync(file, JSON.stringify({ kernel, disks: 'a.img' }));
  await fails(['--config', file], new RegExp(`^tsvirt: ${name}: disks: must be array$`));
  writeFileSync(file, JSON.stringify({ kernel, disks: ['a.img,readonly=maybe'] }));
  await fails(['--config', file], new RegExp(`^tsvirt: ${name}: disks\\[0\\]: readonly=maybe is not on/off$`));
  writeFileSync(file, JSON.stringify({ kernel, channels: ['name=bad name,path=/tmp/x'] }));
  await fails(['--config', file], new RegExp(`^tsvirt: ${name}: channels\\[0\\]: name=bad name must be 1-127 of \\[A-Za-z0-9._-\\]$`));
  writeFileSync(file, JSON.stringify({ kernel, rng: 3 }));
  await fails(['--config', file], new RegExp(`^tsvirt: ${name}: rng: must be valid$`));
  writeFileSync(file, JSON.stringify({ kernel, consoleDevice: 'hvc0' }));
  await fails(['--config', file], new RegExp(`^tsvirt: ${name}: consoleDevice: must be equal to one of the allowed values$`));
});
