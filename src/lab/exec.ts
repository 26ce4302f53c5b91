// `tsvirt lab exec`: boots the lab host under QEMU's TCG (with AMD SVM emulated, so kvm_amd
// loads inside and /dev/kvm there runs guests at useful speed), runs one command in the
// project directory, streams its output and returns its exit status.
//
// Channels: ttyS0 carries the lab kernel's messages and the init's "tsvirt-lab:" status
// lines (kept in a log file under the lab cache); ttyS1 and ttyS2 carry only the command's
// stdout and stderr. An optional results disk brings files back (a tar written by the lab).
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { writeCpioFile } from './cpio.js';
import { HOST_INIT, RESULTS_DISK_SERIAL, ROOT_DISK_SERIAL } from './host-image.js';
import { labBuilt, labFiles, LabImageMissingError, projectRoot } from './paths.js';
import { addProjectTree, LAB_PROJECT_DIR } from './project-tree.js';

export const QEMU = 'qemu-system-x86_64';
/** The CPU model: qemu64 plus AMD SVM (for kvm_amd) and the SSE levels Node.js needs. */
export const LAB_CPU = 'qemu64,+svm,+ssse3,+sse4.1,+sse4.2,+popcnt';

const DEFAULT_TIMEOUT_SECONDS = 600;
/** Time the lab gets after an in-lab timeout to stop the command, copy back and power off. */
const TIMEOUT_GRACE_SECONDS = 30;

export interface LabExecOptions {
  /** vCPUs of the lab host (default 2). */
  cpus?: number;
  /** Lab host memory in MiB (default 3072: room for nested guests). */
  memoryMiB?: number;
  /** Whole run limit in seconds, boot included (default 600). */
  timeoutSeconds?: number;
  /** Limit for the lab to boot to the point of starting the command (default 180 s). */
  bootTimeoutSeconds?: number;
  /** Give the command this process's terminal (stdin/stdout) instead of pipes. */
  interactive?: boolean;
  /** Where the command's output goes (default: this process's stdout/stderr). */
  stdout?: Writable;
  stderr?: Writable;
  /** Project-relative paths the command writes that are copied back to the project afterwards. */
  copyBack?: string[];
  /** Extra environment variables for the command. */
  env?: Record<string, string>;
  /** Project root to expose (default: this project). */
  root?: string;
  /** QEMU -cpu model of the lab host (default LAB_CPU; without svm there is no /dev/kvm inside). */
  cpuModel?: string;
  /**
   * How long the lab may go without a sign of life while the command runs (default 150 s):
   * its init prints a heartbeat four times as often. A lab host whose clock stopped (its
   * CPUs idle for good, nothing ever wakes) is ended as a lab failure after that long.
   */
  silenceSeconds?: number;
}

const DEFAULT_SILENCE_SECONDS = 150;

/** The silence limit of a run, and how often the lab's init prints its heartbeat within it. */
function silenceLimits(opts: LabExecOptions): { silenceSeconds: number; heartbeatSeconds: number } {
  const silenceSeconds = opts.silenceSeconds ?? DEFAULT_SILENCE_SECONDS;
  return { silenceSeconds, heartbeatSeconds: Math.max(1, Math.floor(silenceSeconds / 4)) };
}

export interface LabExecResult {
  exitCode: number;
  /** Seconds from QEMU start to the command's start, and in total. */
  bootSeconds: number;
  totalSeconds: number;
  kernelLog: string;
}

/** A failure of the lab itself (not of the command), with one-line message and the log tail. */
export class LabError extends Error {
  /**
   * @param hostFailed the lab host itself failed before the command finished, in a way the
   *   command's own result says nothing about: the emulated machine reset under it (QEMU
   *   exited without an error of its own), its kernel reported a CPU stuck in kernel code
   *   (a soft lockup, see softLockup()), or it fell silent (no heartbeat, silenceSeconds).
   */
  constructor(message: string, readonly logTail: string[] = [], readonly hostFailed = false) {
    super(message);
    this.name = 'LabError';
  }
}

export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./=:,+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function qemuAvailable(): boolean {
  const r = spawnSync(QEMU, ['--version'], { stdio: 'ignore' });
  return r.status === 0;
}

function colourWanted(opts: LabExecOptions): boolean {
  if (process.env.NO_COLOR !== undefined) return false;
  if (opts.interactive) return true;
  const out = (opts.stdout ?? process.stdout) as Writable & { isTTY?: boolean };
  return out.isTTY === true;
}

function commandScript(command: string[], opts: LabExecOptions): string {
  const env: Record<string, string> = {
    HOME: '/root',
    PATH: `${LAB_PROJECT_DIR}/node_modules/.bin:/bin:/usr/bin`,
    TERM: process.env.TERM ?? 'dumb',
    TSVIRT_IN_LAB: '1',
    TSVIRT_PLACEMENT: 'direct',
    // MSIs through KVM_SIGNAL_MSI instead of irqfds: the lab's kernel locked up more often
    // under irqfd-raised interrupts (docs/design.md, "When the lab itself fails"). A command
    // may set it back.
    TSVIRT_MSI_IRQFD: '0',
    // Inside, stdout and stderr are serial terminals; colour only if ours is a terminal too.
    ...(colourWanted(opts) ? {} : { NO_COLOR: '1' }),
    ...(process.env.FORCE_COLOR !== undefined ? { FORCE_COLOR: process.env.FORCE_COLOR } : {}),
    ...opts.env,
  };
  const title = command.map(shellQuote).join(' ');
  return [
    `LAB_DIR=${LAB_PROJECT_DIR}`,
    `LAB_TITLE=${shellQuote(title.length > 200 ? `${title.slice(0, 200)}...` : title)}`,
    `LAB_INTERACTIVE=${opts.interactive ? 1 : 0}`,
    `LAB_TIMEOUT=${Math.ceil(opts.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS)}`,
    `LAB_HEARTBEAT=${silenceLimits(opts).heartbeatSeconds}`,
    `LAB_COPY_BACK=${shellQuote((opts.copyBack ?? []).map(shellQuote).join(' '))}`,
    ...Object.entries(env).map(([k, v]) => `export ${k}=${shellQuote(v)}`),
    `set -- ${command.map(shellQuote).join(' ')}`,
    '',
  ].join('\n');
}

function parseCopyBack(paths: string[]): void {
  for (const p of paths) {
    if (p.startsWith('/') || p.split('/').includes('..') || /\s/.test(p)) {
      throw new LabError(`copy-back path ${p} must be relative to the project, without .. or spaces`);
    }
  }
}

const RESULTS_DISK_BYTES = 256 << 20;

export async function labExec(command: string[], opts: LabExecOptions = {}): Promise<LabExecResult> {
  if (command.length === 0) throw new LabError('lab exec: no command given');
  const cpus = opts.cpus ?? 2;
  const memoryMiB = opts.memoryMiB ?? 3072;
  const timeoutSeconds = opts.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
  const bootTimeoutSeconds = Math.min(opts.bootTimeoutSeconds ?? 180, timeoutSeconds);
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 16) throw new LabError(`lab exec: --cpus ${cpus} must be an integer from 1 to 16`);
  if (!Number.isInteger(memoryMiB) || memoryMiB < 512) throw new LabError(`lab exec: memory ${memoryMiB} MiB is too small (at least 512 MiB)`);
  if (!(timeoutSeconds > 0)) throw new LabError(`lab exec: timeout ${timeoutSeconds} s must be positive`);
  if (opts.silenceSeconds !== undefined && !(opts.silenceSeconds >= 4)) {
    throw new LabError(`lab exec: silence limit ${opts.silenceSeconds} s must be at least 4 s`);
  }
  parseCopyBack(opts.copyBack ?? []);
  if (!labBuilt()) throw new LabImageMissingError('images', labFiles.buildInfo());
  for (const f of [labFiles.kernel(), labFiles.hostInitrd(), labFiles.guestInitrd()]) {
    if (!existsSync(f)) throw new LabImageMissingError('image', f);
  }
  if (!qemuAvailable()) throw new LabError(`${QEMU} not found: install the qemu-system-x86 package`);
  const root = opts.root ?? projectRoot();
  const hostDisk = existsSync(labFiles.hostDisk()) ? labFiles.hostDisk() : null;
  const onDisk = JSON.parse(readFileSync(labFiles.buildInfo(), 'utf8')).layout === 'disk';
  if (onDisk && !hostDisk) throw new LabImageMissingError('/usr disk image', labFiles.hostDisk());

  // Per-run files: the initrd (lab initramfs + this run's project archive) and the results disk.
  const runDir = join(labFiles.runDir(), `${process.pid}-${Date.now()}`);
  mkdirSync(runDir, { recursive: true });
  const initrd = join(runDir, 'initrd.cpio');
  const results = join(runDir, 'results.img');
  try {
    writeFileSync(initrd, readFileSync(labFiles.hostInitrd()));
    const projectArchive = join(runDir, 'project.cpio');
    writeCpioFile(projectArchive, (cpio) => {
      addProjectTree(cpio, root);
      cpio.file('lab/command.sh', commandScript(command, opts), 0o644);
      // The init goes with every run too (the later archive wins), so a lab image built by
      // an older version of this code still runs the current init.
      cpio.file('init', HOST_INIT, 0o755);
      cpio.file('bin/tsvirt', `#!/bin/sh\nexec /usr/bin/node ${LAB_PROJECT_DIR}/dist/src/cli/tsvirt.cjs "$@"\n`, 0o755);
    });
    appendFile(initrd, projectArchive);
    const wantResults = (opts.copyBack ?? []).length > 0;
    if (wantResults) {
      writeFileSync(results, '');
      truncateSync(results, RESULTS_DISK_BYTES);
    }

    const args = [
      '-accel', 'tcg,thread=multi', '-cpu', opts.cpuModel ?? LAB_CPU, '-smp', String(cpus), '-m', String(memoryMiB),
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-kernel', labFiles.kernel(), '-initrd', initrd,
      '-append', 'console=ttyS0 panic=-1 quiet',
    ];
    if (onDisk && hostDisk) {
      args.push('-drive', `if=none,id=usr,file=${hostDisk},format=raw,readonly=on`,
        '-device', `virtio-blk-pci,drive=usr,serial=${ROOT_DISK_SERIAL}`);
    }
    if (wantResults) {
      args.push('-drive', `if=none,id=results,file=${results},format=raw`,
        '-device', `virtio-blk-pci,drive=results,serial=${RESULTS_DISK_SERIAL}`);
    }
    // Results come back even when the command timed out: partial reports help most then.
    const outcome = await runQemu(args, opts, timeoutSeconds, bootTimeoutSeconds).then(
      (result) => ({ result, failure: null }),
      (failure: unknown) => ({ result: null, failure }),
    );
    if (wantResults) extractResults(results, root);
    if (outcome.failure !== null) throw outcome.failure;
    return outcome.result!;
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
}

function appendFile(target: string, source: string): void {
  const out = openSync(target, 'a');
  const inp = openSync(source, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    for (let n; (n = readSync(inp, buf, 0, buf.length, null)) > 0;) writeSync(out, buf, 0, n);
  } finally {
    closeSync(inp);
    closeSync(out);
  }
}

function extractResults(disk: string, root: string): void {
  const head = Buffer.alloc(512);
  const fd = openSync(disk, 'r');
  try { readSync(fd, head, 0, 512, 0); } finally { closeSync(fd); }
  if (head.every((b) => b === 0)) return; // nothing was written back
  const r = spawnSync('tar', ['-xf', disk, '-C', root], { encoding: 'utf8' });
  if (r.status !== 0) throw new LabError(`lab exec: copying results back from ${disk} failed: ${(r.stderr ?? '').trim().split('\n')[0]}`);
}

interface Channel { server: Server; path: string; socket: Promise<Socket | null> }

// QEMU connects to Unix sockets we listen on (one per serial port): output is streamed live,
// and each stream ends when QEMU exits, so nothing written before the exit is lost.
function listen(path: string, acceptTimeoutMs: number): Promise<Channel> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    const socket = new Promise<Socket | null>((res) => {
      const timer = setTimeout(() => res(null), acceptTimeoutMs);
      server.once('connection', (s) => { clearTimeout(timer); server.close(); res(s); });
      server.once('close', () => { clearTimeout(timer); res(null); });
    });
    server.once('error', reject);
    server.listen(path, () => resolve({ server, path, socket }));
  });
}

function ended(socket: Socket | null, limitMs: number): Promise<void> {
  if (!socket || socket.readableEnded || socket.destroyed) return Promise.resolve();
  return new Promise((res) => {
    const timer = setTimeout(() => { socket.destroy(); res(); }, limitMs);
    socket.once('close', () => { clearTimeout(timer); res(); });
  });
}

async function runQemu(
  baseArgs: string[], opts: LabExecOptions, timeoutSeconds: number, bootTimeoutSeconds: number,
): Promise<LabExecResult> {
  const logPath = newLogPath();
  const stdout = opts.stdout ?? process.stdout;
  const stderr = opts.stderr ?? process.stderr;
  const sockDir = mkdtempSync(join(tmpdir(), 'tsvirt-lab-'));
  const channels: Channel[] = [];
  try {
    for (const name of ['con', 'out', 'err']) channels.push(await listen(join(sockDir, name), bootTimeoutSeconds * 1000));
    const [con, out, err] = channels as [Channel, Channel, Channel];
    const args = [
      ...baseArgs,
      '-chardev', `socket,id=labcon,path=${con.path}`, '-serial', 'chardev:labcon',
      '-chardev', opts.interactive ? 'stdio,id=cmdout,signal=off' : `socket,id=cmdout,path=${out.path}`, '-serial', 'chardev:cmdout',
      '-chardev', `socket,id=cmderr,path=${err.path}`, '-serial', 'chardev:cmderr',
    ];
    if (opts.interactive) { out.server.close(); }
    return await new Promise<LabExecResult>((resolve, reject) => {
      const log = openSync(logPath, 'w');
      const started = Date.now();
      const child = spawn(QEMU, args, { stdio: [opts.interactive ? 'inherit' : 'ignore', opts.interactive ? 'inherit' : 'pipe', 'pipe'] });
      let qemuMessages = '';
      let consoleText = '';
      let pending = '';
      let bootSeconds = -1;
      let exitCode: number | null = null;
      let labFailure: string | null = null;
      let killedBecause: string | null = null;
      let timedOutInLab = false;
      // Set when the run was ended because the lab host itself failed (LabError.hostFailed).
      let killedForHost = false;
      let lastSignOfLife = Date.now();

      const onConsole = (chunk: Buffer): void => {
        writeSync(log, chunk);
        pending += chunk.toString('utf8');
        const lines = pending.split(/\r?\n/);
        pending = lines.pop() ?? '';
        for (const line of lines) {
          lastSignOfLife = Date.now();
          consoleText += line + '\n';
          if (consoleText.length > 1 << 20) consoleText = consoleText.slice(-(1 << 19));
          const lockup = softLockup(line);
          if (lockup) kill(lockup, true);
          const m = /tsvirt-lab: (running: |exit (\d+)$|error: (.*)|timeout$)/.exec(line.trim());
          if (!m) continue;
          if (m[1] === 'running: ') bootSeconds = (Date.now() - started) / 1000;
          else if (m[1] === 'timeout') timedOutInLab = true;
          else if (m[2] !== undefined) exitCode = Number(m[2]);
          else if (m[3] !== undefined) labFailure = m[3];
        }
      };
      const sockets = Promise.all([con, out, err].map((c) => c.socket));
      void con.socket.then((s) => s?.on('data', onConsole));
      void out.socket.then((s) => s?.on('data', (c: Buffer) => stdout.write(c)));
      void err.socket.then((s) => s?.on('data', (c: Buffer) => stderr.write(c)));
      child.stdout?.on('data', (c: Buffer) => { qemuMessages += c.toString(); });
      child.stderr!.on('data', (c: Buffer) => { qemuMessages += c.toString(); });

      const kill = (why: string, hostFailed = false): void => {
        if (killedBecause === null) {
          killedBecause = why;
          killedForHost = hostFailed;
        }
        child.kill('SIGKILL');
      };
      const timeoutMessage = `the command did not finish within ${timeoutSeconds} s (--timeout)`;
      // The lab stops the command itself at the limit (so results can be copied back); this
      // is the backstop should the lab not manage to.
      const overall = setTimeout(() => kill(timeoutMessage), (timeoutSeconds + TIMEOUT_GRACE_SECONDS) * 1000);
      // A lab that printed nothing at all in that time never ran (seen once: QEMU started and
      // the emulated machine stayed silent): a failure of the lab host, as a reset is. One
      // that printed something and stopped short of the command failed on its own terms.
      const boot = setTimeout(() => {
        if (bootSeconds >= 0) return;
        const silent = consoleText.trim() === '';
        kill(`the lab did not boot within ${bootTimeoutSeconds} s${silent ? ' (no output on its console)' : ''}`, silent);
      }, bootTimeoutSeconds * 1000);
      // While the command runs, the lab's init prints a heartbeat. Its silence means the lab
      // host stopped: seen as a lab whose CPUs sat idle for good (QEMU using no CPU at all),
      // every process asleep on a timer that never fired.
      const { silenceSeconds, heartbeatSeconds } = silenceLimits(opts);
      const silence = setInterval(() => {
        if (bootSeconds < 0 || exitCode !== null || killedBecause !== null) return;
        const quietFor = (Date.now() - lastSignOfLife) / 1000;
        if (quietFor < silenceSeconds) return;
        kill(`the lab host stopped responding: no sign of life for ${Math.round(quietFor)} s (its heartbeat comes every ${heartbeatSeconds} s)`, true);
      }, Math.min(10_000, silenceSeconds * 250));

      let spawnError: Error | null = null;
      child.on('error', (e) => { spawnError = e; });
      child.on('close', (code, signal) => {
        clearTimeout(overall);
        clearTimeout(boot);
        clearInterval(silence);
        for (const c of channels) c.server.close();
        void sockets.then(async (socks) => {
          await Promise.all(socks.map((s) => ended(s, 5000)));
          if (pending) onConsole(Buffer.from('\n'));
          closeSync(log);
          const tail = consoleText.trimEnd().split('\n').slice(-15);
          const totalSeconds = (Date.now() - started) / 1000;
          const where = `(lab log: ${logPath})`;
          if (spawnError) return reject(new LabError(`lab: cannot start ${QEMU}: ${(spawnError as Error).message}`));
          if (killedBecause) return reject(new LabError(`lab: ${killedBecause} ${where}`, tail, killedForHost));
          if (labFailure) return reject(new LabError(`lab: ${labFailure} ${where}`, tail));
          if (timedOutInLab) return reject(new LabError(`lab: ${timeoutMessage} ${where}`, tail));
          if (exitCode === null) {
            const q = qemuMessages.trim().split('\n').filter((l) => l.trim() !== '').pop();
            const why = q ? `QEMU said: ${q}` : `QEMU exited (${signal ?? code}) before the command finished`;
            return reject(new LabError(`lab: ${why} ${where}`, tail, !q && signal === null && code === 0));
          }
          resolve({ exitCode, bootSeconds, totalSeconds, kernelLog: logPath });
        });
      });
    });
  } finally {
    for (const c of channels) c.server.close();
    rmSync(sockDir, { recursive: true, force: true });
  }
}

/**
 * The lab kernel's soft-lockup report (`watchdog: BUG: soft lockup - CPU#0 stuck for 26s!
 * [comm:pid]`), worded as a lab failure; null for any other console line. Seen with QEMU's
 * and tsvirt's guests alike: a lab CPU spins in the kernel's nested-virtualization code and
 * does not come back (still stuck minutes later), and whatever shares its locks (the VMM
 * process's memory map, say) blocks with it. The run is ended at the first report.
 */
export function softLockup(line: string): string | null {
  const m = /watchdog: BUG: soft lockup - CPU#(\d+) stuck for (\d+)s! \[(.*)\]/.exec(line);
  if (!m) return null;
  return `the lab host's kernel reports CPU#${m[1]} stuck for ${m[2]} s in ${m[3]} (a soft lockup of the emulated machine)`;
}

const LOGS_KEPT = 20;

function newLogPath(): string {
  const dir = labFiles.logDir();
  mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const old = readdirSync(dir).filter((n) => n.endsWith('.log')).sort();
  for (const name of old.slice(0, Math.max(0, old.length - LOGS_KEPT + 1))) rmSync(join(dir, name), { force: true });
  return join(dir, `lab-${stamp}-${process.pid}.log`);
}

/** Memory sizes as the CLI takes them: 3072 (MiB), 3072M, 3G, 3.5G. */
export function parseMemoryMiB(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([MmGg]i?[Bb]?)?$/.exec(text.trim());
  if (!m) throw new LabError(`lab exec: memory size ${JSON.stringify(text)} is not a size like 3072M or 3G`);
  const n = Number(m[1]);
  const unit = (m[2] ?? 'M')[0]!.toUpperCase();
  return Math.round(unit === 'G' ? n * 1024 : n);
}

/** Size of the lab image files, for reports. */
export function labImageBytes(): number {
  return [labFiles.kernel(), labFiles.hostInitrd(), labFiles.hostDisk(), labFiles.guestInitrd()]
    .filter((f) => existsSync(f)).reduce((s, f) => s + statSync(f).size, 0);
}
