// The nested lab end to end (needs `tsvirt lab build` done and host QEMU): a micro-guest on
// the lab's /dev/kvm, the CLI's exit status and live streaming, and the one-line failures.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { PassThrough } from 'node:stream';
import { LAB_CPU, labExec, LabError, softLockup } from '../../../src/lab/exec.js';
import { projectRoot } from '../../../src/lab/paths.js';
import { LAB_PROJECT_DIR } from '../../../src/lab/project-tree.js';

const root = projectRoot();
const cli = join(root, 'dist/src/cli/main.js');

interface CliRun { code: number | null; stdout: string; stderr: string; firstStdoutAt: number; exitedAt: number }

function runCli(args: string[], env: NodeJS.ProcessEnv = process.env, limitMs = 120_000): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(process.execPath, [cli, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const run: CliRun = { code: null, stdout: '', stderr: '', firstStdoutAt: -1, exitedAt: -1 };
    child.stdout.on('data', (c: Buffer) => {
      if (run.firstStdoutAt < 0) run.firstStdoutAt = Date.now() - started;
      run.stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => { run.stderr += c.toString(); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`tsvirt ${args.join(' ')} ran over ${limitMs} ms`)); }, limitMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      run.code = code;
      run.exitedAt = Date.now() - started;
      resolve(run);
    });
  });
}

function collect(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (c: Buffer) => { text += c.toString(); });
  return { stream, text: () => text };
}

test('inside the lab /dev/kvm opens and the 64-bit loop guest runs 10 M iterations to HLT', async (t) => {
  // CommonJS -e with a dynamic import: the loop guest's worker thread inherits node's flags,
  // and --input-type would make it refuse to load its file.
  const script = `(async () => {
    const { openSync, closeSync } = require('node:fs');
    closeSync(openSync('/dev/kvm', 'r+'));
    const { measureLoopRate } = await import('file://${LAB_PROJECT_DIR}/dist/src/kvm/loop-guest.js');
    const r = await measureLoopRate(10_000_000, { timeoutMs: 60_000 });
    console.log('LOOP ' + JSON.stringify(r, (k, v) => (typeof v === 'bigint' ? String(v) : v)));
  })().catch((e) => { console.error(e); process.exit(1); });`;
  let out = collect();
  let err = collect();
  const run = (): ReturnType<typeof labExec> => labExec(['node', '-e', script], { stdout: out.stream, stderr: err.stream, timeoutSeconds: 300 });
  const result = await run().catch((failure: unknown) => {
    // The emulated lab host itself can fail under a long guest run (a soft lockup reported
    // by its kernel): that says nothing of the code under test, so the run goes once more
    // in a fresh lab, as the guest suite does. Every other failure stands.
    if (!(failure instanceof LabError) || !failure.hostFailed) throw failure;
    t.diagnostic(`${failure.message}; running once more`);
    out = collect();
    err = collect();
    return run();
  });
  assert.equal(result.exitCode, 0, `stderr: ${err.text()}`);
  const line = /LOOP (\{.*\})/.exec(out.text());
  assert.ok(line, `no LOOP line in ${out.text()}`);
  const rate = JSON.parse(line[1]!) as { iterations: number; seconds: number; iterationsPerSecond: number; completed: boolean };
  assert.equal(rate.completed, true);
  assert.equal(rate.iterations, 10_000_000);
  assert.ok(rate.iterationsPerSecond > 0);
  t.diagnostic(`lab KVM: ${(rate.iterationsPerSecond / 1e6).toFixed(1)} M iterations/s (loop ran ${rate.seconds.toFixed(3)} s); lab booted in ${result.bootSeconds.toFixed(1)} s, run took ${result.totalSeconds.toFixed(1)} s`);
});

test('tsvirt lab exec returns the command status and streams stdout and stderr live', async () => {
  const cmd = "console.log('first line'); setTimeout(() => { console.error('second line'); process.exit(3); }, 4000)";
  const run = await runCli(['lab', 'exec', '--', 'node', '-e', cmd]);
  assert.equal(run.code, 3, run.stderr);
  assert.equal(run.stdout, 'first line\n');
  assert.equal(run.stderr, 'second line\n');
  // 'first line' arrived while the command was still sleeping, not at the end
  assert.ok(run.exitedAt - run.firstStdoutAt >= 3000, `stdout came ${run.exitedAt - run.firstStdoutAt} ms before exit`);
});

test('--tty gives the command the terminal, with all its output and its status', async () => {
  // `script` (util-linux) provides the terminal, as a user's shell would.
  const cmd = `${process.execPath} ${cli} lab exec --tty -- sh -c 'tty; echo in-$((1+1)); exit 4'`;
  const run = await new Promise<{ code: number | null; out: string }>((resolve, reject) => {
    const child = spawn('script', ['-qec', cmd, '/dev/null'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { out += c.toString(); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`lab exec --tty ran over 120 s: ${out}`)); }, 120_000);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, out }); });
  });
  assert.equal(run.code, 4, run.out);
  assert.equal(run.out, '/dev/ttyS1\r\nin-2\r\n');
});

test('the command runs in the project directory with tsvirt on PATH', async () => {
  const out = collect();
  const result = await labExec(['sh', '-c', 'pwd; tsvirt --version; test -f package.json && echo has-package-json'], { stdout: out.stream, stderr: out.stream });
  assert.equal(result.exitCode, 0, out.text());
  assert.equal(out.text(), `${LAB_PROJECT_DIR}\n0.1.0\nhas-package-json\n`);
});

test('files written under a copy-back path come back to the project', async () => {
  const rel = `.cache/lab-smoke-${process.pid}`;
  rmSync(join(root, rel), { recursive: true, force: true });
  try {
    const result = await labExec(['sh', '-c', `mkdir -p ${rel} && echo made-in-lab > ${rel}/result.txt`], { copyBack: [rel] });
    assert.equal(result.exitCode, 0);
    assert.equal(readFileSync(join(root, rel, 'result.txt'), 'utf8'), 'made-in-lab\n');
  } finally {
    rmSync(join(root, rel), { recursive: true, force: true });
  }
});

test('missing lab images give one line naming `tsvirt lab build` and exit 125', async () => {
  const empty = mkdtempSync(join(tmpdir(), 'lab-empty-'));
  try {
    const run = await runCli(['lab', 'exec', '--', 'true'], { ...process.env, TSVIRT_CACHE: empty });
    assert.equal(run.code, 125);
    assert.equal(run.stdout, '');
    assert.equal(run.stderr, `tsvirt lab: lab images not found at ${empty}/lab/build-info.json: run \`tsvirt lab build\` first\n`);
  } finally {
    rmSync(empty, { recursive: true, force: true });
  }
});

test('no QEMU on PATH gives one line naming the package', async () => {
  const run = await runCli(['lab', 'exec', '--', 'true'], { ...process.env, PATH: dirname(process.execPath) === '/usr/bin' ? '/nonexistent' : dirname(process.execPath) });
  assert.equal(run.code, 125);
  assert.equal(run.stderr, 'tsvirt lab: qemu-system-x86_64 not found: install the qemu-system-x86 package\n');
});

test('bad flags give one line each and a non-zero exit', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['--cpus', '0'], /^tsvirt: lab exec: --cpus 0 must be an integer from 1 to 16\n$/],
    [['--memory', 'lots'], /^tsvirt: lab exec: memory size "lots" is not a size like 3072M or 3G\n$/],
    [['--memory', '100M'], /^tsvirt: lab exec: memory 100 MiB is too small \(at least 512 MiB\)\n$/],
    [['--timeout', 'soon'], /^tsvirt: lab exec: --timeout soon must be a positive number of seconds\n$/],
    [['--frobnicate'], /^error: unknown option '--frobnicate'\n$/],
  ];
  for (const [flags, expected] of cases) {
    const run = await runCli(['lab', 'exec', ...flags, '--', 'true']);
    assert.notEqual(run.code, 0, flags.join(' '));
    assert.match(run.stderr, expected);
  }
  const noCommand = await runCli(['lab', 'exec']);
  assert.notEqual(noCommand.code, 0);
  assert.equal(noCommand.stderr.trim().split('\n').length, 1);
});

test('a lab CPU without svm fails clearly: no /dev/kvm inside', async () => {
  await assert.rejects(
    labExec(['true'], { cpuModel: LAB_CPU.replace('+svm', '-svm') }),
    (err: unknown) => {
      assert.ok(err instanceof LabError);
      assert.match(err.message, /^lab: the lab CPU offers no svm .* \(lab log: .*\/logs\/lab-[-0-9TZ]+\.log\)$/);
      assert.ok(err.logTail.length > 0);
      assert.equal(err.hostFailed, false, 'a lab that reports its failure did not just stop');
      return true;
    },
  );
});

test('a lab that stays silent until the boot limit is a LabError marked hostFailed', async () => {
  // A 32-bit CPU: the 64-bit kernel's boot code refuses it on the VGA screen, which the lab
  // has none of, so the serial console stays silent, as it did once for a lab that never ran.
  await assert.rejects(
    labExec(['true'], { cpuModel: 'qemu32', bootTimeoutSeconds: 20 }),
    (err: unknown) => {
      assert.ok(err instanceof LabError);
      assert.match(err.message, /^lab: the lab did not boot within 20 s \(no output on its console\) \(lab log: /);
      assert.equal(err.hostFailed, true);
      return true;
    },
  );
});

test('a lab host that resets under the command is a LabError marked hostFailed', async () => {
  await assert.rejects(
    labExec(['reboot', '-f'], { timeoutSeconds: 120 }),
    (err: unknown) => {
      assert.ok(err instanceof LabError);
      assert.match(err.message, /^lab: QEMU exited \(0\) before the command finished \(lab log: /);
      assert.equal(err.hostFailed, true);
      return true;
    },
  );
});

test('a soft lockup reported by the lab kernel ends the run at once, as a LabError marked hostFailed', async () => {
  // The report is put on the lab's console through the kernel log at emergency level, the
  // way the kernel's own watchdog prints it; the command would otherwise sleep for minutes.
  const report = 'watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [qemu-system-x86:283]';
  const started = Date.now();
  await assert.rejects(
    labExec(['sh', '-c', `echo '<0>${report}' > /dev/kmsg; sleep 300`], { timeoutSeconds: 400 }),
    (err: unknown) => {
      assert.ok(err instanceof LabError);
      assert.match(err.message, /^lab: the lab host's kernel reports CPU#1 stuck for 23 s in qemu-system-x86:283 \(a soft lockup of the emulated machine\) \(lab log: /);
      assert.equal(err.hostFailed, true);
      return true;
    },
  );
  assert.ok(Date.now() - started < 200_000, `took ${Date.now() - started} ms`);
});

test('a lab host that falls silent (suspended: CPUs idle, no timer ever fires) is ended as a LabError marked hostFailed', async () => {
  // Suspend-to-idle stops every process and the heartbeat with them, as the lab host whose
  // clock stopped did; nothing wakes it again.
  const started = Date.now();
  await assert.rejects(
    labExec(['sh', '-c', 'echo freeze > /sys/power/state; sleep 300'], { timeoutSeconds: 400, silenceSeconds: 20 }),
    (err: unknown) => {
      assert.ok(err instanceof LabError);
      assert.match(err.message, /^lab: the lab host stopped responding: no sign of life for \d+ s \(its heartbeat comes every 5 s\) \(lab log: /);
      assert.equal(err.hostFailed, true);
      return true;
    },
  );
  assert.ok(Date.now() - started < 200_000, `took ${Date.now() - started} ms`);
  await assert.rejects(labExec(['true'], { silenceSeconds: 2 }), /^LabError: lab exec: silence limit 2 s must be at least 4 s$/);
});

test('softLockup: only the kernel watchdog\'s report is one', () => {
  assert.equal(softLockup('[ 1104.494431] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [qemu-system-x86:283]'),
    "the lab host's kernel reports CPU#0 stuck for 26 s in qemu-system-x86:283 (a soft lockup of the emulated machine)");
  assert.equal(softLockup('[ 1105.676527] rcu: INFO: rcu_preempt self-detected stall on CPU'), null);
  assert.equal(softLockup('tsvirt-guest: soft lockup test'), null);
});

test('boot and command timeouts end the run with one clear error; results still come back', async () => {
  await assert.rejects(labExec(['true'], { bootTimeoutSeconds: 1 }), /^LabError: lab: the lab did not boot within 1 s/);
  const rel = `.cache/lab-timeout-${process.pid}`;
  rmSync(join(root, rel), { recursive: true, force: true });
  try {
    const started = Date.now();
    await assert.rejects(
      labExec(['sh', '-c', `mkdir -p ${rel} && echo partial > ${rel}/report.txt && sleep 120`], { timeoutSeconds: 25, copyBack: [rel] }),
      /^LabError: lab: the command did not finish within 25 s \(--timeout\)/,
    );
    assert.ok(Date.now() - started < 50_000, `took ${Date.now() - started} ms`);
    assert.equal(readFileSync(join(root, rel, 'report.txt'), 'utf8'), 'partial\n');
  } finally {
    rmSync(join(root, rel), { recursive: true, force: true });
  }
});
