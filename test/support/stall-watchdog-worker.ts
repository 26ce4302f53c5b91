// The stall watchdog's own thread (started by watchForStalls in stall-watchdog.ts). It
// watches the main thread's heartbeat counter and, once the counter has not moved for the
// stall limit, writes a diagnosis and kills the process. Everything here runs on this
// thread's event loop and writes with fs.writeSync(2): the main thread is presumed stuck, so
// nothing may wait for it (process.stderr in a worker is forwarded through the main thread).
import { readdirSync, readFileSync, readlinkSync, writeSync } from 'node:fs';
import { Session } from 'node:inspector';
import { workerData } from 'node:worker_threads';
import type { StallWatchdogWorkerData } from './stall-watchdog.js';

const data = workerData as StallWatchdogWorkerData;
const beats = new Int32Array(data.heartbeat);

function say(text: string): void {
  const bytes = Buffer.from(text.endsWith('\n') ? text : `${text}\n`);
  let done = 0;
  while (done < bytes.length) {
    try {
      done += writeSync(2, bytes, done);
    } catch (e) {
      // A full pipe to the test runner is drained by it; any other failure: give up quietly.
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') return;
    }
  }
}

function readProc(path: string): string | undefined {
  try {
    return readFileSync(path, 'latin1');
  } catch {
    return undefined;
  }
}

/** One thread's line and kernel stack, from /proc/self/task/TID. */
function describeThread(tid: string, mainTid: string, ownTid: string | undefined): string {
  const dir = `/proc/self/task/${tid}`;
  const stat = readProc(`${dir}/stat`) ?? '';
  // comm may hold spaces and parentheses: it runs from the first '(' to the last ')'.
  const open = stat.indexOf('(');
  const close = stat.lastIndexOf(')');
  const comm = open >= 0 && close > open ? stat.slice(open + 1, close) : '?';
  const state = close > 0 ? stat.slice(close + 2, close + 3) : '?';
  const wchan = readProc(`${dir}/wchan`)?.trim() || '-';
  const syscall = readProc(`${dir}/syscall`)?.trim() || '-';
  const role = tid === mainTid ? '  <- main thread' : tid === ownTid ? '  <- this watchdog' : '';
  const lines = [`  tid ${tid} comm=${comm} state=${state} wchan=${wchan} syscall=${syscall}${role}`];
  // Our own kernel stack only shows this very read.
  const stack = tid === ownTid ? undefined : readProc(`${dir}/stack`)?.trimEnd();
  if (stack) for (const frame of stack.split('\n')) lines.push(`      ${frame}`);
  return lines.join('\n');
}

function describeThreads(): string {
  let tids: string[];
  try {
    tids = readdirSync('/proc/self/task').sort((a, b) => Number(a) - Number(b));
  } catch (e) {
    return `stall watchdog: cannot list /proc/self/task: ${(e as Error).message}`;
  }
  let ownTid: string | undefined;
  try {
    ownTid = readlinkSync('/proc/thread-self').split('/').pop();
  } catch {}
  const mainTid = String(process.pid);
  const out = [`stall watchdog: threads of process ${process.pid} (state from stat; kernel stack when readable):`];
  for (const tid of tids) out.push(describeThread(tid, mainTid, ownTid));
  return out.join('\n');
}

// Asks the main thread's inspector to pause it and returns its JavaScript stack. The request
// reaches the main thread as a V8 interrupt, which is taken while it runs JavaScript (a spin
// loop) but not while it sits in a system call or native code; then nothing comes and the
// caller goes on after `waitMs`. Node's signal-triggered diagnostic report is no use here: its
// signal handler runs on the main thread's event loop, which is exactly what is blocked. (A
// native backtrace taken while paused ends at the first JIT frame, so it says nothing the
// JavaScript stack and the kernel stack above do not.)
function mainThreadJsStack(waitMs: number): Promise<string[] | string> {
  const session = new Session();
  try {
    session.connectToMainThread();
  } catch (e) {
    return Promise.resolve(`the inspector is unavailable: ${(e as Error).message}`);
  }
  const urls = new Map<string, string>();
  session.on('Debugger.scriptParsed', (m) => { urls.set(m.params.scriptId, m.params.url); });
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      resolve(`not handed over within ${waitMs / 1000} s: the main thread is not running JavaScript `
        + '(it sits in a system call or in native code; see its kernel stack and syscall above)');
    }, waitMs);
    session.once('Debugger.paused', (m) => {
      clearTimeout(timer);
      resolve(m.params.callFrames.map((f) => {
        const script = urls.get(f.location.scriptId) || f.url || `script ${f.location.scriptId}`;
        return `at ${f.functionName || '<anonymous>'} (${script}:${f.location.lineNumber + 1}:${(f.location.columnNumber ?? 0) + 1})`;
      }));
    });
    session.post('Debugger.enable', (err) => {
      if (err) {
        clearTimeout(timer);
        resolve(`the debugger did not start: ${err.message}`);
        return;
      }
      session.post('Debugger.pause');
    });
  });
}

async function reportStallAndKill(quietMs: number): Promise<never> {
  say(`stall watchdog: the main thread of ${data.file} made no progress for ${Math.round(quietMs / 1000)} s `
    + `(event loop blocked; limit ${data.stallMs / 1000} s, TSVIRT_TEST_STALL_SECONDS changes it)`);
  say(describeThreads());
  const stack = await mainThreadJsStack(data.jsStackWaitMs);
  say(typeof stack === 'string'
    ? `stall watchdog: main thread JavaScript stack: ${stack}`
    : ['stall watchdog: main thread JavaScript stack:', ...stack.map((l) => `    ${l}`)].join('\n'));
  say(`stall watchdog: killing ${data.file} (pid ${process.pid}) with SIGKILL so the test run goes on`);
  process.kill(process.pid, 'SIGKILL');
  // SIGKILL to ourselves does not return; this keeps the type honest.
  return new Promise<never>(() => {});
}

let lastBeat = Atomics.load(beats, 0);
let lastChange = performance.now();
let lastPoll = lastChange;
let reporting = false;
// This timer keeps the watchdog thread alive; the Worker object is unref'd in the main thread,
// so the process still exits when the test file is done.
setInterval(() => {
  if (reporting) return;
  const beat = Atomics.load(beats, 0);
  const now = performance.now();
  // When this thread itself was held up for half the limit, the whole process was not running
  // (stopped, or the machine starved it): the main thread had no chance to beat, so start over.
  const frozen = now - lastPoll >= data.stallMs / 2;
  lastPoll = now;
  if (beat !== lastBeat || frozen) {
    lastBeat = beat;
    lastChange = now;
    return;
  }
  if (now - lastChange >= data.stallMs) {
    reporting = true;
    void reportStallAndKill(now - lastChange);
  }
}, data.pollMs);
