// virtio-console multiport: the control protocol, unix-socket ports and the console port,
// with the simulated driver playing the Linux virtio_console driver.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { VirtioConsole } from '../../../src/virtio/console.js';
import { StreamPortBackend, UnixSocketPortBackend } from '../../../src/virtio/port-backends.js';
import { type DriverQueue, makeMachine, plugVirtio, VirtioDriver } from './support/driver.js';
import { waitFor } from '../../support/wait.js';

interface Ctl { id: number; event: number; value: number; extra: string }

class Guest {
  private ctlBufs = new Map<number, bigint>();
  private rxBufs = new Map<string, bigint>();
  constructor(readonly d: VirtioDriver) {}

  postControlBuffers(n: number): void {
    const q = this.d.queues[2]!;
    for (let i = 0; i < n; i++) {
      const a = this.d.alloc(64, 8);
      const head = q.add([{ address: a, length: 64, writable: true }]);
      this.ctlBufs.set(head, a);
    }
    q.kick();
  }

  send(id: number, event: number, value: number): void {
    const q = this.d.queues[3]!;
    const a = this.d.alloc(8, 8);
    this.d.m.memory.writeU32(a, id);
    this.d.m.memory.writeU16(a + 4n, event);
    this.d.m.memory.writeU16(a + 6n, value);
    q.add([{ address: a, length: 8, writable: false }]);
    q.kick();
  }

  async control(count: number): Promise<Ctl[]> {
    const used = await this.d.queues[2]!.waitUsed(count);
    return used.map((u) => {
      const a = this.ctlBufs.get(u.id)!;
      const mem = this.d.m.memory;
      return {
        id: mem.readU32(a), event: mem.readU16(a + 4n), value: mem.readU16(a + 6n),
        extra: new TextDecoder().decode(mem.slice(a + 8n, u.len - 8)),
      };
    });
  }

  postRx(q: DriverQueue, n: number, size: number): void {
    for (let i = 0; i < n; i++) {
      const a = this.d.alloc(size, 8);
      this.rxBufs.set(`${q.index}:${q.add([{ address: a, length: size, writable: true }], { publish: false })}`, a);
    }
    q.publish();
    q.kick();
  }

  async receive(q: DriverQueue, count: number): Promise<string> {
    const used = await q.waitUsed(count);
    return used.map((u) => new TextDecoder().decode(this.d.m.memory.slice(this.rxBufs.get(`${q.index}:${u.id}`)!, u.len))).join('');
  }

  transmit(q: DriverQueue, text: string): void {
    const bytes = new TextEncoder().encode(text);
    const a = this.d.alloc(bytes.length, 8);
    this.d.m.memory.write(a, bytes);
    q.add([{ address: a, length: bytes.length, writable: false }]);
    q.kick();
  }
}

function connectClient(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => resolve(s));
    s.once('error', reject);
  });
}

test('multiport handshake, named unix-socket port with data both ways, host connect/disconnect', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-serial-'));
  const path = join(dir, 'agent.sock');
  const consoleOut = new PassThrough();
  const consoleIn = new PassThrough();
  const m = makeMachine();
  const dev = new VirtioConsole({
    ports: [{ name: 'org.tsvirt.agent', backend: new UnixSocketPortBackend(path) }],
    console: new StreamPortBackend(consoleOut, consoleIn),
    log: (l) => m.logs.push(l),
  });
  t.after(async () => {
    await dev.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await dev.start();
  const { slot } = plugVirtio(m, dev);
  m.bridge.assignBars();
  const d = await VirtioDriver.start(m, slot, { queueSize: 32 });
  assert.equal(d.cfg(4, 4), 2n, 'max_nr_ports');
  assert.equal(d.c16(0x12), 6, 'queues: port0 rx/tx, control rx/tx, port1 rx/tx');
  const g = new Guest(d);
  g.postControlBuffers(16);
  g.send(0, 0, 1); // DEVICE_READY
  assert.deepEqual((await g.control(2)).map((c) => [c.id, c.event, c.value]), [[0, 1, 1], [1, 1, 1]]);
  g.send(0, 3, 1); // PORT_READY console
  g.send(1, 3, 1); // PORT_READY port 1
  const ready = await g.control(2);
  assert.deepEqual(ready.map((c) => [c.id, c.event, c.value]), [[0, 4, 1], [1, 7, 1]]);
  assert.equal(ready[1]!.extra, 'org.tsvirt.agent\0');

  // The host connects: the guest hears PORT_OPEN 1.
  const client = await connectClient(path);
  assert.deepEqual((await g.control(1)).map((c) => [c.id, c.event, c.value]), [[1, 6, 1]]);
  const rx = d.queues[4]!;
  const tx = d.queues[5]!;
  // Host data waits until the guest opens the port and posts buffers.
  client.write('hello ');
  await waitFor('host bytes held', () => dev.portState('org.tsvirt.agent')!.pendingBytes === 6, 2000);
  g.send(1, 6, 1); // guest opens /dev/vport
  g.postRx(rx, 4, 16);
  client.write('guest');
  let got = '';
  while (got.length < 11) got += await g.receive(rx, 1);
  assert.equal(got, 'hello guest');
  // Guest -> host.
  const received: string[] = [];
  client.on('data', (b) => received.push(b.toString()));
  g.transmit(tx, 'hi host');
  await waitFor('host receives guest data', () => received.join('') === 'hi host', 2000);
  // Disconnect: PORT_OPEN 0.
  client.destroy();
  assert.deepEqual((await g.control(1)).map((c) => [c.id, c.event, c.value]), [[1, 6, 0]]);
  assert.equal(dev.portState('org.tsvirt.agent')!.hostConnected, false);

  // The console port: guest output to the stream, stream input to the guest.
  const out: string[] = [];
  consoleOut.on('data', (b: Buffer) => out.push(b.toString()));
  g.transmit(d.queues[1]!, 'login: ');
  await waitFor('console output', () => out.join('') === 'login: ', 2000);
  g.postRx(d.queues[0]!, 2, 16);
  consoleIn.write('root\n');
  assert.equal(await g.receive(d.queues[0]!, 1), 'root\n');
});

test('backpressure: a fast host is paused while the guest posts no buffers, nothing is lost', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-serial-'));
  const path = join(dir, 'bulk.sock');
  const m = makeMachine(8 << 20);
  const dev = new VirtioConsole({ ports: [{ name: 'bulk', backend: new UnixSocketPortBackend(path) }], log: (l) => m.logs.push(l) });
  t.after(async () => {
    await dev.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await dev.start();
  const { slot } = plugVirtio(m, dev);
  m.bridge.assignBars();
  const d = await VirtioDriver.start(m, slot, { queueSize: 64 });
  const g = new Guest(d);
  g.postControlBuffers(8);
  g.send(0, 0, 1);
  await g.control(1);
  g.send(1, 3, 1);
  await g.control(1);
  g.send(1, 6, 1);
  const client = await connectClient(path);
  await g.control(1);
  const total = 512 * 1024;
  const payload = Uint8Array.from({ length: total }, (_, i) => (i * 31) & 0xff);
  client.write(payload);
  await new Promise((r) => setTimeout(r, 100));
  const held = dev.portState('bulk')!.pendingBytes;
  assert.ok(held > 0 && held <= 64 * 1024 + 65536, `held ${held} bytes`);
  // The guest drains in rounds of 64 x 1 KiB buffers.
  const rx = d.queues[2 + 2 * 1]!;
  const received: Uint8Array[] = [];
  let bytes = 0;
  const bufs = new Map<number, bigint>();
  const mark = d.mark();
  for (let round = 0; bytes < total && round < 200; round++) {
    d.release(mark);
    for (let i = 0; i < 64; i++) {
      const a = d.alloc(1024, 8);
      bufs.set(rx.add([{ address: a, length: 1024, writable: true }], { publish: false }), a);
    }
    rx.publish();
    rx.kick();
    await waitFor('rx progress', () => rx.usedIdx - rx.lastUsed >= 1, 2000);
    await new Promise((r) => setTimeout(r, 5));
    for (const u of rx.takeUsed()) {
      received.push(Uint8Array.from(d.m.memory.slice(bufs.get(u.id)!, u.len)));
      bytes += u.len;
    }
  }
  const all = new Uint8Array(bytes);
  let at = 0;
  for (const r of received) {
    all.set(r, at);
    at += r.length;
  }
  assert.equal(bytes, total);
  assert.deepEqual(all, payload);
  client.destroy();
});

test('bad port configuration is refused with one-line errors', async () => {
  assert.throws(() => new VirtioConsole({ ports: [{ name: 'a b', backend: new UnixSocketPortBackend('/nonexistent') }] }), /port name 'a b' must be/);
  const b = (): UnixSocketPortBackend => new UnixSocketPortBackend('/nonexistent');
  assert.throws(() => new VirtioConsole({ ports: [{ name: 'x', backend: b() }, { name: 'x', backend: b() }] }), /port name 'x' is used twice/);
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-serial-'));
  try {
    const file = join(dir, 'plain');
    writeFileSync(file, 'keep me');
    const dev = new VirtioConsole({ ports: [{ name: 'p', backend: new UnixSocketPortBackend(file) }] });
    await assert.rejects(dev.start(), /channel p: .*plain exists and is not a socket/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
