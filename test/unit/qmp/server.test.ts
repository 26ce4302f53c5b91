import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { createCoreRegistry } from '../../../src/qmp/commands.js';
import { QmpError } from '../../../src/qmp/protocol.js';
import { arg } from '../../../src/qmp/schema.js';
import { QmpServer, startQmpServers } from '../../../src/qmp/server.js';
import { RawQmpConnection, type Json } from './support/raw-client.js';
import { StateTarget } from './support/state-target.js';

let dir: string;
let n = 0;
const sock = (): string => join(dir, `qmp${n++}.sock`);
const open: Array<QmpServer | RawQmpConnection> = [];
const track = <T extends QmpServer | RawQmpConnection>(x: T): T => { open.push(x); return x; };

before(() => { dir = mkdtempSync(join(tmpdir(), 'tsvirt-qmp-')); });
after(() => rmSync(dir, { recursive: true, force: true }));
afterEach(async () => {
  for (const x of open.splice(0)) {
    if (x instanceof QmpServer) await x.close();
    else x.close();
  }
});

async function serve(target = new StateTarget(), registry = createCoreRegistry()): Promise<{ path: string; target: StateTarget; server: QmpServer }> {
  const path = sock();
  const server = track(new QmpServer(target, registry));
  await server.listen(`unix:${path},server=on,wait=off`);
  return { path, target, server };
}

const errorOf = (m: Json): unknown => (m.error as Json | undefined) ?? m;

describe('QMP server', () => {
  it('greets with a QEMU-shaped version and the oob capability', async () => {
    const { path } = await serve();
    const c = track(await RawQmpConnection.open(path));
    const greeting = (await c.next()).QMP as Json;
    const version = greeting.version as Json;
    assert.deepEqual(Object.keys(version.qemu as Json).sort(), ['major', 'micro', 'minor']);
    assert.match(version.package as string, /^tsvirt \d+\.\d+\.\d+$/);
    assert.deepEqual(greeting.capabilities, ['oob']);
  });

  it('accepts only qmp_capabilities before negotiation, and it only once', async () => {
    const { path } = await serve();
    const c = track(await RawQmpConnection.open(path));
    await c.next();
    assert.deepEqual(errorOf(await c.command('{"execute":"query-status","id":1}')),
      { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" });
    assert.deepEqual(errorOf(await c.command('{"execute":"qmp_capabilities","arguments":{"enable":["x"]}}')),
      { class: 'GenericError', desc: "Parameter 'enable[0]' does not accept value 'x'" });
    assert.deepEqual(await c.command('{"execute":"qmp_capabilities","id":"n"}'), { return: {}, id: 'n' });
    assert.deepEqual(await c.command('{"execute":"qmp_capabilities","id":2}'), {
      error: { class: 'CommandNotFound', desc: 'Capabilities negotiation is already complete, command ignored' }, id: 2,
    });
  });

  it('answers the queries from the target', async () => {
    const { path, target } = await serve(new StateTarget('web1', 3));
    const c = track(await RawQmpConnection.negotiated(path));
    assert.deepEqual(await c.command('{"execute":"query-status"}'), { return: { status: 'running', singlestep: false, running: true } });
    assert.deepEqual(await c.command('{"execute":"query-name"}'), { return: { name: 'web1' } });
    assert.deepEqual(await c.command('{"execute":"query-uuid"}'), { return: { UUID: target.uuid } });
    assert.deepEqual(await c.command('{"execute":"query-kvm"}'), { return: { enabled: true, present: true } });
    const cpus = (await c.command('{"execute":"query-cpus-fast"}')).return as Json[];
    assert.deepEqual(cpus.map((cpu) => cpu['cpu-index']), [0, 1, 2]);
    assert.deepEqual(cpus[2], { 'thread-id': 1002, props: { 'core-id': 2, 'thread-id': 0, 'socket-id': 0 },
      'qom-path': '/machine/unattached/device[2]', 'cpu-index': 2, target: 'x86_64' });
    const [disk] = (await c.command('{"execute":"query-block"}')).return as Json[];
    assert.equal(disk!.device, 'disk0');
    assert.deepEqual((disk!.inserted as Json).image, { filename: 'disk.qcow2', format: 'qcow2', 'virtual-size': 1 << 30, 'dirty-flag': false });
    const [bus] = (await c.command('{"execute":"query-pci"}')).return as Json[];
    const devices = bus!.devices as Json[];
    assert.equal(devices.length, 2);
    assert.deepEqual(devices[1]!.class_info, { class: 0x0100, desc: 'SCSI controller' });
    assert.deepEqual(devices[1]!.id, { device: 0x1042, vendor: 0x1af4, subsystem: 2, 'subsystem-vendor': 0x1af4 });
    assert.equal(devices[1]!.irq, 11);
    assert.deepEqual(devices[1]!.regions, [
      { bar: 0, type: 'io', address: 0xc000, size: 0x80 },
      { bar: 1, type: 'memory', address: 0xfebf0000, size: 0x1000, prefetch: false, mem_type_64: false },
      { bar: 4, type: 'memory', address: 0xfe000000, size: 0x4000, prefetch: true, mem_type_64: true },
    ]);
    const names = ((await c.command('{"execute":"query-commands"}')).return as Json[]).map((x) => x.name);
    for (const cmd of ['qmp_capabilities', 'query-status', 'stop', 'cont', 'quit', 'human-monitor-command', 'query-events']) {
      assert.ok(names.includes(cmd), cmd);
    }
    const events = ((await c.command('{"execute":"query-events"}')).return as Json[]).map((x) => x.name);
    assert.deepEqual(events.sort(), ['POWERDOWN', 'RESET', 'RESUME', 'SHUTDOWN', 'STOP']);
  });

  it('runs stop/cont/system_reset/system_powerdown and sends each event to every negotiated client', async () => {
    const { path, target } = await serve();
    const a = track(await RawQmpConnection.negotiated(path));
    const b = track(await RawQmpConnection.negotiated(path));
    const unnegotiated = track(await RawQmpConnection.open(path));
    await unnegotiated.next();
    const events: Json[] = [];
    assert.deepEqual(await a.command('{"execute":"stop","id":1}', events), { return: {}, id: 1 });
    assert.equal(target.state, 'paused');
    assert.deepEqual((await a.command('{"execute":"query-status"}')).return, { status: 'paused', singlestep: false, running: false });
    assert.deepEqual(await a.command('{"execute":"stop"}', events), { return: {} }); // no second STOP
    await a.command('{"execute":"cont"}', events);
    await a.command('{"execute":"cont"}', events); // no second RESUME
    await a.command('{"execute":"system_reset"}', events);
    await a.command('{"execute":"system_powerdown"}', events);
    assert.deepEqual(events.map((e) => e.event), ['STOP', 'RESUME', 'RESET', 'POWERDOWN']);
    assert.deepEqual(events[2]!.data, { guest: false, reason: 'host-qmp-system-reset' });
    const ts = events[0]!.timestamp as Json;
    assert.ok(Math.abs((ts.seconds as number) - Date.now() / 1000) < 60);
    assert.ok(Number.isInteger(ts.microseconds) && (ts.microseconds as number) < 1e6);
    const seen: string[] = [];
    for (let i = 0; i < 4; i++) seen.push((await b.next()).event as string);
    assert.deepEqual(seen, ['STOP', 'RESUME', 'RESET', 'POWERDOWN']);
    assert.ok(await unnegotiated.silentFor(50), 'events must not reach a client before negotiation');
    assert.equal(target.resets, 1);
    assert.equal(target.powerdowns, 1);
  });

  it('refuses cont when the VM must be reset first', async () => {
    const target = new StateTarget();
    target.state = 'internal-error';
    const { path } = await serve(target);
    const c = track(await RawQmpConnection.negotiated(path));
    assert.deepEqual(errorOf(await c.command('{"execute":"cont"}')), { class: 'GenericError', desc: 'Resetting the Virtual Machine is required' });
  });

  it('rejects malformed requests with QEMU wording and keeps the connection', async () => {
    const { path } = await serve();
    const c = track(await RawQmpConnection.negotiated(path));
    const cases: Array<[string, string, string]> = [
      ['{"execute" "x"}', 'GenericError', 'JSON parse error, missing : in object pair'],
      ['[1,2]', 'GenericError', 'QMP input must be a JSON object'],
      ['42', 'GenericError', 'QMP input must be a JSON object'],
      ['{"foo":1}', 'GenericError', "QMP input member 'foo' is unexpected"],
      ['{"id":1}', 'GenericError', "QMP input lacks member 'execute'"],
      ['{"execute":1}', 'GenericError', "QMP input member 'execute' must be a string"],
      ['{"execute":"query-status","arguments":[]}', 'GenericError', "QMP input member 'arguments' must be an object"],
      ['{"execute":"query-status","arguments":{"a":1}}', 'GenericError', "Parameter 'a' is unexpected"],
      ['{"execute":"nope"}', 'CommandNotFound', 'The command nope has not been found'],
      ['{"exec-oob":"query-status"}', 'GenericError', "QMP input member 'exec-oob' is unexpected"],
      ['{"execute":"human-monitor-command"}', 'GenericError', "Parameter 'command-line' is missing"],
      ['{"execute":"human-monitor-command","arguments":{"command-line":5}}', 'GenericError', "Invalid parameter type for 'command-line', expected: string"],
      ['{"execute":"human-monitor-command","arguments":{"command-line":"info status","cpu-index":9}}', 'GenericError', "Parameter 'cpu-index' expects a CPU number"],
      ['{"execute":"human-monitor-command","arguments":{"command-line":"savevm x"}}', 'GenericError', "human monitor command 'savevm x' is not supported (supported: info status, info cpus, info version, info name, info uuid, info kvm)"],
      ['{"execute":"human-monitor-command","arguments":{"command-line":"info constructor"}}', 'GenericError', "human monitor command 'info constructor' is not supported (supported: info status, info cpus, info version, info name, info uuid, info kvm)"],
      ['garbage', 'GenericError', "JSON parse error, invalid keyword 'garbage'"],
    ];
    for (const [input, cls, desc] of cases) {
      assert.deepEqual(errorOf(await c.command(input)), { class: cls, desc }, input);
    }
    assert.deepEqual(await c.command('{"execute":"human-monitor-command","arguments":{"command-line":"info  status"}}'), { return: 'VM status: running\r\n' });
    assert.deepEqual(await c.command('{"execute":"human-monitor-command","arguments":{"command-line":"info cpus","cpu-index":1}}'),
      { return: '  CPU #0: thread_id=1000\r\n* CPU #1: thread_id=1001\r\n' });
    const info = async (what: string): Promise<unknown> =>
      (await c.command(JSON.stringify({ execute: 'human-monitor-command', arguments: { 'command-line': `info ${what}` } }))).return;
    assert.equal(await info('name'), 'vm0\r\n');
    assert.equal(await info('uuid'), '6a3c7a4e-2b1d-4c43-9a55-0f5f2d9c1e01\r\n');
    assert.equal(await info('kvm'), 'kvm support: enabled\r\n');
    assert.match(await info('version') as string, /^7\.2\.0tsvirt \d+\.\d+\.\d+\r\n$/);
  });

  it('echoes ids of any JSON type, in errors too', async () => {
    const { path } = await serve();
    const c = track(await RawQmpConnection.negotiated(path));
    assert.deepEqual(await c.command('{"execute":"query-name","id":{"a":[1,null]}}'), { return: { name: 'vm0' }, id: { a: [1, null] } });
    assert.deepEqual(await c.command('{"execute":"nope","id":null}'), { error: { class: 'CommandNotFound', desc: 'The command nope has not been found' }, id: null });
  });

  it('handles split and batched input like QEMU, and waits on an unterminated object', async () => {
    const { path } = await serve();
    const c = track(await RawQmpConnection.negotiated(path));
    c.send('{"execute":"query-status","id":1}{"execute":"query-name","id":2}\n');
    assert.equal((await c.next()).id, 1);
    assert.equal((await c.next()).id, 2);
    c.send('{"execute": "query-na');
    await new Promise((r) => setTimeout(r, 30));
    c.send('me", "id": 3');
    assert.ok(await c.silentFor(100), 'an unterminated object must get no answer');
    c.send('}');
    assert.deepEqual(await c.next(), { return: { name: 'vm0' }, id: 3 });
  });

  it('answers everything a client sent before half-closing, then closes', async () => {
    const { path, target } = await serve();
    const c = track(await RawQmpConnection.open(path));
    c.send('{"execute":"qmp_capabilities"}\n{"execute":"stop","id":1}\n{"execute":"query-status","id":2}\n');
    c.socket.end();
    const got: Json[] = [];
    for (let i = 0; i < 5; i++) got.push(await c.next()); // greeting, 3 replies, STOP
    assert.ok(got[0]!.QMP);
    const replies = got.filter((m) => 'return' in m);
    assert.deepEqual(replies.map((m) => m.id), [undefined, 1, 2]);
    assert.deepEqual(replies[2]!.return, { status: 'paused', singlestep: false, running: false });
    assert.ok(got.some((m) => m.event === 'STOP'));
    for (let i = 0; i < 100 && !c.closed; i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(c.closed, 'the server closes its side after the last reply');
    assert.equal(target.state, 'paused');
  });

  it('with oob negotiated, refuses exec-oob for commands that do not allow it', async () => {
    const { path } = await serve();
    const c = track(await RawQmpConnection.open(path));
    await c.next();
    await c.command('{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}');
    assert.deepEqual(errorOf(await c.command('{"exec-oob":"query-status","id":"o"}')),
      { class: 'GenericError', desc: 'The command query-status does not support OOB' });
    assert.deepEqual(errorOf(await c.command('{"execute":"query-status","exec-oob":"query-status"}')),
      { class: 'GenericError', desc: "QMP input must not have both 'execute' and 'exec-oob'" });
  });

  it('survives clients that disconnect mid-command or send binary garbage', async () => {
    const registry = createCoreRegistry();
    let release: () => void = () => undefined;
    const slowStarted = new Promise<void>((started) => {
      registry.register({
        name: 'x-slow', args: {},
        handler: () => new Promise((resolve) => { started(); release = () => resolve({ done: true }); }),
      });
    });
    const { path, target } = await serve(new StateTarget(), registry);
    const good = track(await RawQmpConnection.negotiated(path));
    const leaving = track(await RawQmpConnection.negotiated(path));
    leaving.send('{"execute":"x-slow"}\n');
    await slowStarted;
    leaving.close();
    await new Promise((r) => setTimeout(r, 20));
    release(); // its reply now goes to a closed socket, which must harm nothing
    await new Promise((r) => setTimeout(r, 20));
    const rude = track(await RawQmpConnection.open(path));
    await rude.next();
    rude.send(Buffer.from([0xff, 0x00, 0xfe, 0x7b, 0x7b, 0x5d]));
    rude.close();
    const events: Json[] = [];
    assert.deepEqual(await good.command('{"execute":"stop"}', events), { return: {} });
    assert.equal(events[0]?.event, 'STOP');
    assert.equal(target.state, 'paused');
  });

  it('stops reading a client that floods commands until its queue drains, answering all in order', async () => {
    const registry = createCoreRegistry();
    let running = 0;
    let most = 0;
    registry.register({
      name: 'x-tick', args: { n: arg.int() },
      handler: async (args) => {
        running++;
        most = Math.max(most, running);
        await new Promise((r) => setTimeout(r, 1));
        running--;
        return { n: args.n! };
      },
    });
    const { path } = await serve(new StateTarget(), registry);
    const c = track(await RawQmpConnection.negotiated(path));
    const count = 200;
    c.send(Array.from({ length: count }, (_, i) => `{"execute":"x-tick","arguments":{"n":${i}}}`).join('\n') + '\n');
    for (let i = 0; i < count; i++) assert.deepEqual(await c.next(), { return: { n: i } });
    assert.equal(most, 1, 'commands of one client run one at a time');
  });

  it('reports a nesting-bomb as an error and keeps serving', async () => {
    const { path } = await serve();
    const c = track(await RawQmpConnection.negotiated(path));
    // One brace and 1024 brackets: one level too deep; nothing is left open afterwards.
    c.send('{"a":' + '['.repeat(1024) + '\n');
    assert.deepEqual(errorOf(await c.next()), { class: 'GenericError', desc: 'JSON nesting depth limit exceeded' });
    assert.deepEqual(await c.command('{"execute":"query-name"}'), { return: { name: 'vm0' } });
  });

  it('serves several listeners, including loopback tcp on an ephemeral port', async () => {
    const path = sock();
    const server = track(await startQmpServers(new StateTarget(), [`unix:${path},server=on,wait=off`, 'tcp:127.0.0.1:0,server=on,wait=off']));
    const tcp = server.listeners[1]!.address;
    const port = Number(tcp.split(':').at(-1));
    assert.ok(port > 0);
    const overTcp = track(await RawQmpConnection.open({ host: '127.0.0.1', port }));
    await overTcp.next();
    assert.deepEqual(await overTcp.command('{"execute":"qmp_capabilities"}'), { return: {} });
    const overUnix = track(await RawQmpConnection.negotiated(path));
    const events: Json[] = [];
    await overTcp.command('{"execute":"system_powerdown"}', events);
    assert.equal((await overUnix.next()).event, 'POWERDOWN');
  });

  it('with wait=on, resolves only once the first client connects', async () => {
    const path = sock();
    let ready = false;
    const starting = startQmpServers(new StateTarget(), [`unix:${path},server=on`]).then((s) => { ready = true; return track(s); });
    for (let i = 0; i < 100 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(ready, false);
    const c = track(await RawQmpConnection.open(path));
    await starting;
    assert.ok((await c.next()).QMP);
  });

  it('connects out with server=off', async () => {
    const path = sock();
    const accepted = new Promise<net.Socket>((resolve) => {
      const listener = net.createServer((s) => { listener.close(); resolve(s); }).listen(path);
    });
    const server = track(await startQmpServers(new StateTarget(), [`unix:${path}`]));
    const socket = await accepted;
    const greeting = await new Promise<string>((resolve) => socket.once('data', (d) => resolve(d.toString())));
    assert.match(greeting, /"QMP"/);
    socket.destroy();
    assert.equal(server.listeners[0]!.endpoint.server, false);
  });

  it('fails with one line naming the listener when it cannot listen, and opens nothing', async () => {
    const path = join(dir, 'no-such-dir', 'x.sock');
    await assert.rejects(startQmpServers(new StateTarget(), [`unix:${sock()},server=on,wait=off`, `unix:${path},server=on,wait=off`]),
      { message: new RegExp(`^QMP listener unix:${path},server=on,wait=off: listen E[A-Z]+`) });
    await assert.rejects(startQmpServers(new StateTarget(), ['tcp:10.0.0.1:1,server=on']), /not a loopback address/);
  });

  it('does not remove a regular file in the way of the socket', async () => {
    const path = join(dir, 'regular-file');
    writeFileSync(path, 'keep me');
    await assert.rejects(startQmpServers(new StateTarget(), [`unix:${path},server=on,wait=off`]), /EADDRINUSE/);
    assert.ok(existsSync(path));
  });

  it('quit: SHUTDOWN event, then the reply, then every connection and the socket file go', async () => {
    const { path, target, server } = await serve();
    const a = track(await RawQmpConnection.negotiated(path));
    const b = track(await RawQmpConnection.negotiated(path));
    a.send('{"execute":"quit","id":"q"}\n');
    const first = await a.next();
    assert.equal(first.event, 'SHUTDOWN');
    assert.deepEqual(first.data, { guest: false, reason: 'host-qmp-quit' });
    assert.deepEqual(await a.next(), { return: {}, id: 'q' });
    assert.equal((await b.next()).event, 'SHUTDOWN');
    await server.close();
    for (let i = 0; i < 100 && !(a.closed && b.closed); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(a.closed && b.closed);
    assert.equal(existsSync(path), false);
    assert.equal(target.state, 'shutdown');
  });

  it('lets features register commands and events, listed by query-commands and query-events', async () => {
    const registry = createCoreRegistry();
    registry.registerEvent('DEVICE_DELETED');
    registry.register({
      name: 'device_del', args: { id: arg.str() },
      handler: (args, ctx) => {
        if (args.id !== 'nic0') throw new QmpError('DeviceNotFound', `Device '${String(args.id)}' not found`);
        ctx.emitEvent('DEVICE_DELETED', { device: 'nic0', path: '/machine/peripheral/nic0' });
        return {};
      },
    });
    assert.throws(() => registry.register({ name: 'stop', args: {}, handler: () => ({}) }), /registered twice/);
    const { path, server } = await serve(new StateTarget(), registry);
    const c = track(await RawQmpConnection.negotiated(path));
    assert.deepEqual(errorOf(await c.command('{"execute":"device_del","arguments":{"id":"x"}}')), { class: 'DeviceNotFound', desc: "Device 'x' not found" });
    const events: Json[] = [];
    await c.command('{"execute":"device_del","arguments":{"id":"nic0"}}', events);
    assert.deepEqual(events[0]!.data, { device: 'nic0', path: '/machine/peripheral/nic0' });
    assert.ok(((await c.command('{"execute":"query-commands"}')).return as Json[]).some((x) => x.name === 'device_del'));
    assert.ok(((await c.command('{"execute":"query-events"}')).return as Json[]).some((x) => x.name === 'DEVICE_DELETED'));
    assert.throws(() => server.emitEvent('MIGRATION', {}), /QMP event MIGRATION is not registered/);
  });

  it('turns an unexpected handler failure into GenericError', async () => {
    const registry = createCoreRegistry();
    registry.register({ name: 'x-broken', args: {}, handler: () => { throw new Error('disk on fire'); } });
    const { path } = await serve(new StateTarget(), registry);
    const c = track(await RawQmpConnection.negotiated(path));
    assert.deepEqual(errorOf(await c.command('{"execute":"x-broken"}')), { class: 'GenericError', desc: 'disk on fire' });
    assert.deepEqual(await c.command('{"execute":"query-name"}'), { return: { name: 'vm0' } });
  });
});
