// The stall watchdog, end to end: real child Node processes install it with a 2 s limit and
// then block their main thread in different ways (fixtures/stall-child.ts); the watchdog
// must diagnose and kill the blocked ones and leave the healthy one alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { DEFAULT_STALL_SECONDS, stallMsFromEnv } from '../../support/stall-watchdog.js';

const CHILD = fileURLToPath(new URL('./fixtures/stall-child.js', import.meta.url));
/** Far above what any child needs (2 s limit + 5 s wait for a JavaScript stack + start-up). */
const CHILD_LIMIT_MS = 45_000;

interface ChildResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

/** Runs `node args` with the watchdog's limit from `stallSeconds`; kills it after CHILD_LIMIT_MS. */
function runNode(args: string[], stallSeconds: string, extraEnv: Record<string, string> = {},
  onStdout?: (child: ChildProcess, stdoutSoFar: string) => void): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, TSVIRT_TEST_STALL_SECONDS: stallSeconds, ...extraEnv };
    // Set by the test runner that runs this file; a nested `node --test` seeing it would act
    // as the runner's child and report to it instead of running on its own.
    delete env.NODE_TEST_CONTEXT;
    const child = spawn(process.execPath, args, {
      env,
      // stdin stays an open pipe nobody writes to: the 'read' child blocks on it.
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s; onStdout?.(child, stdout); });
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`child ${args.join(' ')} still running after ${CHILD_LIMIT_MS} ms; stderr:\n${stderr}`));
    }, CHILD_LIMIT_MS);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

const runChild = (mode: string, stallSeconds = '2'): Promise<{ pid: number } & ChildResult> =>
  runNode([CHILD, mode], stallSeconds).then((r) => {
    const m = /^stall-child pid (\d+)$/m.exec(r.stdout);
    assert.ok(m, `the child printed no pid line; stdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
    return { ...r, pid: Number(m[1]) };
  });

const STALL_LINE = (seconds: number): RegExp =>
  new RegExp(`^stall watchdog: the main thread of ${escape(CHILD)} made no progress for (\\d+) s .*limit ${seconds} s`, 'm');
function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The main thread's line in the task list: its state letter and wchan. */
function mainThreadTask(stderr: string, pid: number): { state: string; wchan: string } {
  const m = new RegExp(`^  tid ${pid} comm=\\S* state=(\\S) wchan=(\\S+) syscall=.*<- main thread$`, 'm').exec(stderr);
  assert.ok(m, `no task line for the main thread ${pid}:\n${stderr}`);
  return { state: m[1]!, wchan: m[2]! };
}

function assertKilledAfterDiagnosis(r: ChildResult & { pid: number }): void {
  assert.equal(r.signal, 'SIGKILL', `expected death by SIGKILL, got code ${r.code} signal ${r.signal}; stderr:\n${r.stderr}`);
  const stall = STALL_LINE(2).exec(r.stderr);
  assert.ok(stall, `no stall line:\n${r.stderr}`);
  assert.ok(Number(stall[1]) >= 2, `stalled only ${stall[1]} s by its own account`);
  assert.match(r.stderr, new RegExp(`^stall watchdog: threads of process ${r.pid} `, 'm'));
  // The worker is a thread of the same process, and it says which one it is.
  assert.match(r.stderr, /^ {2}tid \d+ comm=\S* state=\S .*<- this watchdog$/m);
  assert.match(r.stderr, new RegExp(`^stall watchdog: killing ${escape(CHILD)} \\(pid ${r.pid}\\) with SIGKILL`, 'm'));
  // Nothing after the final line: the kill came right after it.
  assert.match(r.stderr, /with SIGKILL so the test run goes on\n$/);
}

test('a main thread spinning in JavaScript is diagnosed with its JavaScript stack and killed', { timeout: 60_000 }, async () => {
  const r = await runChild('spin');
  assertKilledAfterDiagnosis(r);
  assert.equal(mainThreadTask(r.stderr, r.pid).state, 'R', 'a spinning thread is running');
  const stack = /^stall watchdog: main thread JavaScript stack:\n((?: {4}at .*\n)+)/m.exec(r.stderr);
  assert.ok(stack, `no JavaScript stack:\n${r.stderr}`);
  assert.match(stack[1]!, /^ {4}at spinForeverInJavaScript \(file:\/\/.*stall-child\.js:\d+:\d+\)$/m);
});

test('a main thread asleep in Atomics.wait is diagnosed (V8 still interrupts it for the stack) and killed', { timeout: 60_000 }, async () => {
  const r = await runChild('atomics');
  assertKilledAfterDiagnosis(r);
  const task = mainThreadTask(r.stderr, r.pid);
  assert.equal(task.state, 'S', 'a thread in a futex wait sleeps');
  assert.match(task.wchan, /futex/);
  assert.match(r.stderr, /^ {4}at blockForeverInAtomicsWait \(/m);
});

test('a main thread stuck in read(2) is diagnosed from the kernel side, the JavaScript stack given up after a wait, and killed', { timeout: 60_000 }, async () => {
  const r = await runChild('read');
  assertKilledAfterDiagnosis(r);
  const task = mainThreadTask(r.stderr, r.pid);
  assert.equal(task.state, 'S', 'a thread in a blocking read sleeps');
  assert.match(task.wchan, /pipe|read/);
  assert.match(r.stderr, /^stall watchdog: main thread JavaScript stack: not handed over within 5 s: the main thread is not running JavaScript/m);
});

test('a child whose event loop stays free while it awaits longer than the limit is left alone', { timeout: 60_000 }, async () => {
  const r = await runChild('idle');
  assert.equal(r.signal, null, `killed by ${r.signal}; stderr:\n${r.stderr}`);
  assert.equal(r.code, 0, `exit code ${r.code}; stderr:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /stall watchdog/);
  assert.match(r.stdout, /^stall-child: idle done$/m);
});

test('a process stopped for longer than the limit is not taken for a stalled one once it runs again', { timeout: 60_000 }, async () => {
  let stopped = false;
  const r = await runNode([CHILD, 'idle'], '2', {}, (child, out) => {
    if (stopped || !out.includes('stall-child: idle\n')) return;
    stopped = true;
    child.kill('SIGSTOP');
    setTimeout(() => child.kill('SIGCONT'), 3500);
  });
  assert.ok(stopped, 'the child was never stopped');
  assert.equal(r.signal, null, `killed by ${r.signal}; stderr:\n${r.stderr}`);
  assert.equal(r.code, 0, `exit code ${r.code}; stderr:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /stall watchdog/);
});

test('under node --test, a stalled file is reported failed with the diagnosis in the output', { timeout: 60_000 }, async () => {
  const r = await runNode(['--test', '--test-reporter=spec', CHILD], '2', { STALL_CHILD_MODE: 'spin' });
  assert.equal(r.code, 1, `the runner exited ${r.code} ${r.signal}; stdout:\n${r.stdout}`);
  const out = r.stdout + r.stderr;
  assert.match(out, STALL_LINE(2));
  assert.match(out, /at spinForeverInJavaScript \(/);
  assert.match(out, /ℹ fail 1/);
});

test('a bad TSVIRT_TEST_STALL_SECONDS stops the test file with a one-line error naming the variable', { timeout: 60_000 }, async () => {
  for (const bad of ['abc', '0', '-5', 'Infinity', '3s']) {
    const r = await runNode([CHILD, 'idle'], bad);
    assert.equal(r.code, 1, `${bad}: exit code ${r.code} signal ${r.signal}`);
    const line = `Error: TSVIRT_TEST_STALL_SECONDS=${JSON.stringify(bad)}: expected a positive number of seconds`;
    assert.ok(r.stderr.split('\n').includes(line), `${bad}: no line "${line}" in:\n${r.stderr}`);
    assert.doesNotMatch(r.stdout, /stall-child: idle/, `${bad}: the file went on running`);
  }
});

test('the stall limit: 90 s unless TSVIRT_TEST_STALL_SECONDS says otherwise; an empty value means unset', () => {
  assert.equal(DEFAULT_STALL_SECONDS, 90);
  assert.equal(stallMsFromEnv({}), 90_000);
  assert.equal(stallMsFromEnv({ TSVIRT_TEST_STALL_SECONDS: '' }), 90_000);
  assert.equal(stallMsFromEnv({}, 12_000), 12_000);
  assert.equal(stallMsFromEnv({ TSVIRT_TEST_STALL_SECONDS: '2.5' }, 12_000), 2500);
  assert.throws(() => stallMsFromEnv({ TSVIRT_TEST_STALL_SECONDS: 'NaN' }),
    { message: 'TSVIRT_TEST_STALL_SECONDS="NaN": expected a positive number of seconds' });
});
