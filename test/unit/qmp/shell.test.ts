import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { QmpServer } from '../../../src/qmp/server.js';
import { completeCommand, parseCommandArguments, parseShellLine, splitWords } from '../../../src/qmp/shell.js';
import { StateTarget } from './support/state-target.js';

const cli = fileURLToPath(new URL('../../../src/cli/main.js', import.meta.url));

describe('tsvirt qmp argument parsing', () => {
  it('builds arguments from key=value words, JSON values and dotted keys', () => {
    assert.equal(parseCommandArguments([]), undefined);
    assert.deepEqual(parseCommandArguments(['command-line=info status', 'cpu-index=1']), { 'command-line': 'info status', 'cpu-index': 1 });
    assert.deepEqual(parseCommandArguments(['a.b=true', 'a.c=[1,2]', 'id="7"']), { a: { b: true, c: [1, 2] }, id: '7' });
    assert.deepEqual(parseCommandArguments(['{"x":', '1}']), { x: 1 });
  });

  it('explains bad arguments in one line', () => {
    assert.throws(() => parseCommandArguments(['oops']), { message: "argument 'oops' is neither key=value nor a JSON object" });
    assert.throws(() => parseCommandArguments(['=1']), /neither key=value/);
    assert.throws(() => parseCommandArguments(['{"x":']), /arguments \{"x": are not valid JSON/);
    assert.throws(() => parseCommandArguments(['a=1', 'a.b=2']), /'a' already has a value that is not an object/);
  });

  it('splits shell lines with quotes', () => {
    assert.deepEqual(splitWords(`a 'b c' "d e"f ''`), ['a', 'b c', 'd ef', '']);
    assert.throws(() => splitWords('a "b'), /unterminated " quote/);
    assert.deepEqual(parseShellLine('  human-monitor-command command-line="info cpus"'),
      { command: 'human-monitor-command', args: { 'command-line': 'info cpus' } });
    assert.deepEqual(parseShellLine('x {"a": "b c"}'), { command: 'x', args: { a: 'b c' } });
    assert.equal(parseShellLine('   '), undefined);
  });

  it('completes command names only in the first word', () => {
    const names = ['query-status', 'query-name', 'quit', 'stop'];
    assert.deepEqual(completeCommand(names, 'query-'), [['query-name', 'query-status'], 'query-']);
    assert.deepEqual(completeCommand(names, 'qu'), [['query-name', 'query-status', 'quit'], 'qu']);
    assert.deepEqual(completeCommand(names, 'stop x'), [[], 'stop x']);
  });
});

interface Run { code: number | null; stdout: string; stderr: string }

function runCli(args: string[], stdin = ''): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => { child.kill(); reject(new Error(`tsvirt ${args.join(' ')} did not finish`)); }, 15_000);
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
    child.stdin.end(stdin);
  });
}

describe('tsvirt qmp command', () => {
  let dir: string;
  let path: string;
  let server: QmpServer;
  let target: StateTarget;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tsvirt-qmp-cli-'));
    path = join(dir, 'vm.qmp');
    target = new StateTarget();
    server = new QmpServer(target);
    await server.listen(`unix:${path},server=on,wait=off`);
  });
  after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('prints the return of one command as JSON', async () => {
    const r = await runCli(['qmp', path, 'query-status']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { status: 'running', singlestep: false, running: true });
    const hmp = await runCli(['qmp', `unix:${path}`, 'human-monitor-command', 'command-line=info cpus']);
    assert.equal(JSON.parse(hmp.stdout), '* CPU #0: thread_id=1000\r\n  CPU #1: thread_id=1001\r\n');
  });

  it('exits 1 with the error on one line for an error reply', async () => {
    const r = await runCli(['qmp', path, 'query-status', 'verbose=true']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, "tsvirt qmp: query-status: GenericError: Parameter 'verbose' is unexpected\n");
  });

  it('exits 1 naming the socket when there is no monitor', async () => {
    const r = await runCli(['qmp', join(dir, 'none.qmp'), 'query-status']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tsvirt: QMP connection to .*none\.qmp: connect ENOENT/);
    assert.equal(r.stderr.trim().split('\n').length, 1);
  });

  it('exits 1 on malformed arguments before connecting', async () => {
    const r = await runCli(['qmp', path, 'stop', 'junk']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, "tsvirt: argument 'junk' is neither key=value nor a JSON object\n");
  });

  it('runs a shell from piped stdin, printing replies, errors and events', async () => {
    const r = await runCli(['qmp', path], 'query-name\nstop\nbogus\nhuman-monitor-command {"command-line": "info status"}\ncont\n');
    assert.equal(r.code, 1, 'a failed command makes a non-interactive shell exit 1');
    assert.match(r.stdout, /"name": "vm0"/);
    assert.match(r.stdout, /^event \{"event":"STOP",.*\}$/m);
    assert.match(r.stdout, /"VM status: paused\\r\\n"/);
    assert.match(r.stdout, /^event \{"event":"RESUME",.*\}$/m);
    assert.equal(r.stderr, 'error: CommandNotFound: The command bogus has not been found\n');
    assert.equal(target.state, 'running');
  });

  it('on a terminal, completes command names with tab and recalls history with the up arrow', { skip: hasScript() ? false : 'util-linux script(1) is not installed' }, async () => {
    // script(1) gives the shell a pseudo-terminal; keys are typed one burst at a time because
    // readline treats a multi-key burst as a paste and does not complete inside it.
    const child = spawn('script', ['-qfec', `${process.execPath} ${cli} qmp ${path}`, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const waitFor = async (pattern: RegExp, what: string): Promise<void> => {
      for (let i = 0; i < 100 && !pattern.test(out); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(out, pattern, what);
    };
    const type = async (keys: string): Promise<void> => {
      child.stdin.write(keys);
      await new Promise((r) => setTimeout(r, 150));
    };
    try {
      await waitFor(/\(QMP\) /, 'prompt');
      await type('query-na');
      await type('\t');
      await type('\r');
      await waitFor(/"name": "vm0"/, 'tab completed query-na to query-name and ran it');
      await type('\x1b[A');
      await type('\r');
      await waitFor(/"name": "vm0"[^]*"name": "vm0"/, 'the up arrow recalled query-name');
      await type('qu');
      await type('\t');
      await type('\t');
      await waitFor(/query-cpus-fast[^]*query-status[^]*quit/, 'double tab lists the matching commands');
      await type('\x15'); // clear the line
      await type('\x04'); // end of input on an empty line ends the shell
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    } finally {
      child.kill();
    }
  });
});

function hasScript(): boolean {
  return spawnSync('script', ['--version']).status === 0;
}
