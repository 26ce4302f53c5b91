// Console backends of `tsvirt run --console`: a unix socket (output out, input in) and a file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../../../src/vmm/machine.js';
import { attachFile, attachSocket } from '../../../src/vmm/console.js';
import { GUEST_ADDRESS, helloGuest, powerOffGuest } from './micro-guests.js';

test('socket console: a client sees the guest output', { timeout: 30_000 }, async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'tsvirt-console-')), 'console.sock');
  const m = await Machine.create({ memory: '32M' }, { rawBoot: { code: helloGuest('sock\n'), address: GUEST_ADDRESS } });
  const attachment = await attachSocket(m.console, path);
  const client = connect(path);
  let received = '';
  client.on('data', (d) => { received += d.toString('latin1'); });
  await new Promise((resolve) => client.once('connect', resolve));
  await m.start();
  const deadline = Date.now() + 20_000;
  while (received !== 'sock\n&' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(received, 'sock\n&');
  client.destroy();
  await m.stop();
  await attachment.detach();
});

test('file console: the guest output is appended to the file', { timeout: 30_000 }, async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'tsvirt-console-')), 'console.log');
  const m = await Machine.create({ memory: '32M' }, { rawBoot: { code: powerOffGuest('to file'), address: GUEST_ADDRESS } });
  const attachment = await attachFile(m.console, path);
  await m.start();
  assert.equal((await m.waitForExit()).code, 0);
  await attachment.detach();
  assert.equal(readFileSync(path, 'latin1'), 'to file');
  await assert.rejects(attachFile(m.console, join(path, 'not-a-dir', 'x.log')), /^Error: console file .*x\.log: ENOTDIR/);
});
