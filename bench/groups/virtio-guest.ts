// virtio-blk from inside a Linux guest, tsvirt against QEMU's virtio-blk-pci with the same
// kernel, images, cache mode (writeback) and guest script, in the same lab run (a Linux guest
// needs the lab's fast KVM):
//   - sequential write and read MiB/s with dd (1 MiB blocks) on a raw and a qcow2 disk;
//   - 4 KiB random read and write IOPS with Debian's fio (libaio, O_DIRECT, queue depth 32)
//     on the same disks, after dd has written them (so qcow2 reads hit allocated clusters).
// fio and its libraries come on a read-only ext2 tools disk (src/lab/tools-disk.ts) that
// both VMMs attach; it is built once from Debian packages and cached under the lab cache.
//
// Run on the host, the group starts the lab once and runs this same file inside it as a
// probe, which prints one JSON line with the measurements.
// TSVIRT_BENCH_PROFILE=1 instead runs only tsvirt, under the V8 profiler, and prints where
// each of the VMM's threads spent its time (the request path's hot spots) and which exits
// reached userspace; TSVIRT_BENCH_PROFILE=exits prints the exits only.
// TSVIRT_BENCH_PROFILE=trace runs dd only (no fio), once under tsvirt with TSVIRT_BLK_TRACE=1
// (per-request phase latencies, request sizes, queue depth) and once under QEMU, and prints
// both runs' rates and the trace.
// TSVIRT_BENCH_PROFILE=kvm runs dd only, under each VMM in turn (TSVIRT_BENCH_ROUNDS rounds;
// each TSVIRT_BENCH_VARIANTS set-up as its own column), and prints how much each of KVM's per-VM
// counters (exits, halts, injected interrupts, ...; from debugfs) and the VMM's CPU time grew
// during each dd: how long the guest waited (halt_wait_ns), and what the VMM spent meanwhile.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import type { BenchGroup, BenchRow } from '../main.js';
import { statCpuMs } from '../../src/virtio/blk-trace.js';

const MEMORY_MIB = 256;
/** dd's transfer: long enough (seconds) that start-up effects and timer resolution fade. */
const TRANSFER_MIB = 256;
/** The range fio works over, at the start of what dd wrote. */
const FIO_MIB = 64;
/**
 * An untimed dd (write, then read) over this much of each disk, past the timed range, before
 * the timed ones (TSVIRT_BENCH_WARMUP_MIB, 0 for none): the rates are steady-state ones, as
 * fio's ramp_time makes its own. It is the same for both VMMs. tsvirt's request path is
 * JavaScript that V8 optimises the first time it runs hot: in the lab that one-time compile
 * took over a second of CPU during the first qcow2 write (a few milliseconds on hardware
 * that runs guests natively), taken from the guest on the lab's two CPUs.
 */
const WARMUP_MIB = Math.max(0, Math.floor(Number(process.env.TSVIRT_BENCH_WARMUP_MIB ?? 64)) || 0);
const FIO_SECONDS = 8;
const FIO_DEPTH = 32;
/**
 * Runs of each VMM (TSVIRT_BENCH_ROUNDS); the best of each is reported. A VMM's dd rate moves
 * by up to 1.5x between rounds in the lab, for QEMU as for tsvirt: with three rounds the
 * ratio of two bests moved by up to 1.8x between runs, with five by up to 1.35x.
 */
const ROUNDS = Math.max(1, Number(process.env.TSVIRT_BENCH_ROUNDS ?? 5) || 5);
const APPEND = 'console=ttyS0 reboot=k panic=-1 quiet';
const RUN_TIMEOUT_MS = 600_000;
/** Where the probe finds the tools disk in the lab: shipped inside the project's dist/. */
const LAB_TOOLS_DIR = 'lab-tools';
const TOOLS_IMAGE = 'fio-tools.ext2';

// Each data disk by serial: an untimed warm-up (WARMUP_MIB written and read back past the
// timed range); write TRANSFER_MIB with a final fsync, drop the page cache, read it back;
// then fio random reads and writes over its first FIO_MIB. Each dd is timed on the
// host, between the console lines the guest prints before and after it (ConsoleMarks): the
// guest's own clock is not a reliable yardstick in the lab (docs/design.md, "The guest side").
const guestScript = (withFio: boolean): string => `
T=
for b in /sys/block/vd*; do [ "$(cat $b/serial)" = TOOLS ] && T=/dev/\${b##*/}; done
mkdir -p /tools
[ -n "$T" ] && mount -t ext2 -o ro $T /tools || echo "bench-error: tools disk not mounted"
for b in /sys/block/vd*; do
  n=\${b##*/}; s=$(cat $b/serial)
  [ "$s" = TOOLS ] && continue
  if [ ${WARMUP_MIB} -gt 0 ]; then
    dd if=/dev/zero of=/dev/$n bs=1M count=${WARMUP_MIB} seek=${TRANSFER_MIB} conv=fsync 2>/dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches
    dd if=/dev/$n of=/dev/null bs=1M count=${WARMUP_MIB} skip=${TRANSFER_MIB} 2>/dev/null
  fi
  echo "bench-mark \${s}_write begin"; dd if=/dev/zero of=/dev/$n bs=1M count=${TRANSFER_MIB} conv=fsync 2>/dev/null
  echo "bench-mark \${s}_write end"
  sync; echo 3 > /proc/sys/vm/drop_caches
  echo "bench-mark \${s}_read begin"; dd if=/dev/$n of=/dev/null bs=1M count=${TRANSFER_MIB} 2>/dev/null
  echo "bench-mark \${s}_read end"
  ${withFio ? '' : 'continue'}
  for rw in randread randwrite; do
    r=$(/tools/fio.sh --name=$rw --filename=/dev/$n --rw=$rw --bs=4k --ioengine=libaio --iodepth=${FIO_DEPTH} --direct=1 \\
      --size=${FIO_MIB}M --runtime=${FIO_SECONDS} --ramp_time=1 --time_based --thread --output-format=terse 2>&1 | tail -n1)
    echo "fio \${s}_$rw $r"
  done
done
`;

type Rates = Record<string, number>;

/**
 * tsvirt set-ups to compare in one lab run, for A/B work: TSVIRT_BENCH_VARIANTS lists them
 * separated by `;`, each a `,`-separated list of environment settings (`UV_USE_IO_URING=0,
 * TSVIRT_EVENTFD_THREAD=1;` compares the thread-pool and poller-thread set-up with the
 * default). The first variant is the one reported against QEMU; without the variable there
 * is one, the default. The setting TSVIRT_BENCH_NODE_FLAGS (space-separated) passes flags to
 * node itself: `TSVIRT_BENCH_NODE_FLAGS=--no-opt`; TSVIRT_BENCH_CLI runs another build's
 * command line (a path below dist/: `TSVIRT_BENCH_CLI=old/src/cli/main.js`).
 */
export function benchVariants(spec = process.env.TSVIRT_BENCH_VARIANTS): Array<Record<string, string>> {
  if (!spec) return [{}];
  return spec.split(';').map((variant) => {
    const env: Record<string, string> = {};
    for (const setting of variant.split(',').map((x) => x.trim()).filter(Boolean)) {
      const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(setting);
      if (!m) throw new Error(`TSVIRT_BENCH_VARIANTS: '${setting}' is not NAME=value`);
      env[m[1]!] = m[2]!;
    }
    return env;
  });
}

// fio's terse output (version 3): read IOPS is field 8 and write IOPS field 49 (1-based).
const TERSE_READ_IOPS = 7;
const TERSE_WRITE_IOPS = 48;

/**
 * When each `bench-mark NAME begin|end` line of a guest's console reached the host: fed the
 * output as it arrives, with the time of arrival (a line split across chunks counts when its
 * end arrives).
 */
export class ConsoleMarks {
  private partial = '';
  private readonly marks = new Map<string, { begin?: number; end?: number }>();

  /** Returns the marks this text completed, in order. */
  feed(text: string, nowMs: number): Array<{ name: string; phase: 'begin' | 'end' }> {
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop()!;
    const seen: Array<{ name: string; phase: 'begin' | 'end' }> = [];
    for (const line of lines) {
      const m = /^bench-mark (\w+) (begin|end)\r?$/.exec(line);
      if (!m) continue;
      const phase = m[2] as 'begin' | 'end';
      const mark = this.marks.get(m[1]!) ?? {};
      mark[phase] = nowMs;
      this.marks.set(m[1]!, mark);
      seen.push({ name: m[1]!, phase });
    }
    return seen;
  }

  /** MiB/s of each transfer of `mib` with both marks seen. */
  rates(mib: number): Rates {
    const rates: Rates = {};
    for (const [name, { begin, end }] of this.marks) {
      if (begin !== undefined && end !== undefined) rates[name] = (mib * 1000) / Math.max(1, end - begin);
    }
    return rates;
  }
}

/** MiB/s for each dd the marks timed and IOPS for each `fio` line of the guest's output. */
export function parseGuestOutput(out: string, marks: ConsoleMarks): Rates {
  const rates: Rates = marks.rates(TRANSFER_MIB);
  for (const m of out.matchAll(/^fio (\w+) (3;[^\r\n]*)\r?$/gm)) {
    const fields = m[2]!.split(';');
    const iops = Number(fields[m[1]!.endsWith('randread') ? TERSE_READ_IOPS : TERSE_WRITE_IOPS]);
    if (Number.isFinite(iops)) rates[m[1]!] = iops;
  }
  return rates;
}

/** Run a VMM until the guest script is done; the figures it printed. `onMark` sees each mark as it arrives. */
function runGuest(command: string, args: string[], env: Record<string, string> = {},
  onMark?: MarkHook): Promise<{ rates: Rates; output: string }> {
  return new Promise((resolve, reject) => {
    // A variant's TSVIRT_BENCH_NODE_FLAGS go to the node binary that runs tsvirt (V8 flags
    // are not allowed in NODE_OPTIONS).
    const nodeFlags = command === process.execPath ? (env.TSVIRT_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean) : [];
    const child = spawn(command, [...nodeFlags, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    const marks = new ConsoleMarks();
    let done = false;
    let closed = false;
    child.once('close', () => { closed = true; });
    const finish = (err: Error | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        child.kill('SIGKILL');
        reject(err);
        return;
      }
      // Let the VMM shut down by itself (the profiler writes its file at exit), within bounds.
      const kill = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const settle = (): void => {
        clearTimeout(kill);
        resolve({ rates: parseGuestOutput(out, marks), output: out });
      };
      // 'close': after the exit and the end of its output (a trace is printed at exit).
      if (closed) settle();
      else child.once('close', settle);
    };
    const timer = setTimeout(() => finish(new Error(`${command}: guest script did not finish within ${RUN_TIMEOUT_MS} ms:\n${out.slice(-1500)}`)), RUN_TIMEOUT_MS);
    const onData = (d: Buffer): void => {
      // TSVIRT_BENCH_LIVE=1: the guests' consoles as they run, to see where a run stands.
      if (process.env.TSVIRT_BENCH_LIVE === '1') process.stderr.write(d);
      const text = d.toString('latin1');
      for (const { name, phase } of marks.feed(text, performance.now())) onMark?.(name, phase, child.pid!);
      out += text;
      if (/tsvirt-guest: exit \d+/.test(out)) finish(null);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (err) => finish(err));
    child.on('exit', (code) => {
      finish(/tsvirt-guest: exit/.test(out) ? null : new Error(`${command} exited (${code}) early:\n${out.slice(-1500)}`));
    });
  });
}

/**
 * Fresh images for one VMM: a raw file and an empty qcow2 of the same size. The previous
 * run's images go first: the lab's /tmp is memory.
 */
async function images(dir: string, tag: string): Promise<{ raw: string; qcow2: string }> {
  const { createQcow2 } = await import('../../src/block/qcow2/create.js');
  for (const f of readdirSync(dir)) if (/\.(raw|qcow2)$/.test(f)) rmSync(join(dir, f), { force: true });
  const raw = join(dir, `${tag}.raw`);
  const qcow2 = join(dir, `${tag}.qcow2`);
  writeFileSync(raw, '');
  truncateSync(raw, (TRANSFER_MIB + WARMUP_MIB + 16) * 1024 * 1024);
  await createQcow2(qcow2, { size: BigInt(TRANSFER_MIB + WARMUP_MIB + 16) << 20n });
  return { raw, qcow2 };
}

interface ProfileNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }

/** The functions with the most self time in a V8 .cpuprofile, one line each. */
function summariseProfile(path: string, top = 45): string {
  const p = JSON.parse(readFileSync(path, 'utf8')) as { nodes: ProfileNode[]; samples: number[] };
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  for (const id of p.samples) {
    const f = byId.get(id)!.callFrame;
    const key = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/dist\//, '')}:${f.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + 1);
  }
  const total = p.samples.length;
  return [...self].sort((a, b) => b[1] - a[1]).slice(0, top)
    .map(([k, n]) => `${((100 * n) / total).toFixed(1).padStart(5)}% ${k}`).join('\n');
}

type MarkHook = (name: string, phase: 'begin' | 'end', pid: number) => void;

const KVM_DEBUGFS = '/sys/kernel/debug/kvm';

/** KVM's counters live in debugfs; the lab's init does not mount it. */
function mountDebugfs(): void {
  if (existsSync(KVM_DEBUGFS)) return;
  const r = spawnSync('mount', ['-t', 'debugfs', 'debugfs', '/sys/kernel/debug'], { encoding: 'utf8' });
  if (!existsSync(KVM_DEBUGFS)) throw new Error(`cannot read KVM's counters: ${KVM_DEBUGFS} missing (mount: ${r.stderr.trim() || r.status})`);
}

/**
 * KVM's counters for every VM in the lab, summed: the probe runs one VMM at a time. debugfs
 * has a directory per VM, whose files hold the VM's counters and its vCPUs' summed. (It is
 * named after the thread that made the VM, which for tsvirt need not be a live thread of
 * the process any more.)
 */
function kvmCounters(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const vm of readdirSync(KVM_DEBUGFS).filter((d) => /^\d+-\d+$/.test(d))) {
    for (const entry of readdirSync(join(KVM_DEBUGFS, vm), { withFileTypes: true })) {
      if (!entry.isFile()) continue;
      try {
        const value = Number(readFileSync(join(KVM_DEBUGFS, vm, entry.name), 'utf8').trim());
        if (Number.isFinite(value)) out[entry.name] = (out[entry.name] ?? 0) + value;
      } catch {
        // A counter that cannot be read (write-only knobs) is not a counter.
      }
    }
  }
  return out;
}

/**
 * The VMM's own CPU time in milliseconds: its main thread's, all its
 * threads' together, user and system, and each other thread's (`thread <tid>`; the report
 * ranks them). Zeroes once the process is gone.
 */
function vmmCpu(pid: number): Record<string, number> {
  try {
    const out: Record<string, number> = {};
    const main = statCpuMs(readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8'));
    const all = statCpuMs(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    out['vmm main thread user ms'] = main.user;
    out['vmm main thread sys ms'] = main.system;
    out['vmm all threads user ms'] = all.user;
    out['vmm all threads sys ms'] = all.system;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      if (tid === String(pid)) continue;
      try {
        const t = statCpuMs(readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8'));
        out[`thread ${tid}`] = t.user + t.system;
      } catch {
        // The thread ended between the listing and the read.
      }
    }
    return out;
  } catch {
    return {};
  }
}

/** Each window's per-thread figures (`thread <tid>`) as the busiest other threads, in order. */
function rankThreads(delta: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  const threads: number[] = [];
  for (const [k, v] of Object.entries(delta)) {
    if (k.startsWith('thread ')) threads.push(v);
    else out[k] = v;
  }
  threads.sort((a, b) => b - a);
  for (let i = 0; i < Math.min(4, threads.length); i++) out[`vmm other thread #${i + 1} ms`] = threads[i]!;
  return out;
}

/** How much each KVM counter, and the VMM's CPU time, grew between each mark's begin and end. */
class KvmCounterWindows {
  readonly deltas = new Map<string, Record<string, number>>();
  private readonly atBegin = new Map<string, Record<string, number>>();

  readonly onMark: MarkHook = (name, phase, pid) => {
    const now = { ...kvmCounters(), ...vmmCpu(pid) };
    if (phase === 'begin') {
      this.atBegin.set(name, now);
      return;
    }
    const before = this.atBegin.get(name);
    if (!before) return;
    const delta: Record<string, number> = {};
    for (const [k, v] of Object.entries(now)) delta[k] = v - (before[k] ?? 0);
    this.deltas.set(name, rankThreads(delta));
  };
}

/** One table per dd: each counter that moved, per VMM run, and the dd's rate. */
function formatKvmCounters(windows: Array<{ vmm: string; rates: Rates; counters: Map<string, Record<string, number>> }>): string {
  const marks = [...new Set(windows.flatMap((w) => [...w.counters.keys()]))];
  const lines: string[] = [];
  for (const mark of marks) {
    lines.push(`--- ${mark}: KVM counters during the dd (${windows.map((w) => w.vmm).join(' | ')})`);
    lines.push(`${'MiB/s'.padEnd(28)}${windows.map((w) => (w.rates[mark] ?? 0).toFixed(0).padStart(12)).join('')}`);
    const names = [...new Set(windows.flatMap((w) => Object.keys(w.counters.get(mark) ?? {})))].sort();
    for (const name of names) {
      const values = windows.map((w) => w.counters.get(mark)?.[name] ?? 0);
      if (values.every((v) => v === 0)) continue;
      lines.push(`${name.padEnd(28)}${values.map((v) => String(v).padStart(12)).join('')}`);
    }
  }
  return lines.join('\n');
}

/** Inside the lab: run the guest script under each VMM and print the rates as one JSON line. */
async function probe(): Promise<void> {
  const { guestKernelPath } = await import('../../src/lab/paths.js');
  const { guestInitrdWith } = await import('../../src/lab/guest-image.js');
  const kernel = guestKernelPath();
  const trace = process.env.TSVIRT_BENCH_PROFILE === 'trace';
  const tools = fileURLToPath(new URL(`../../${LAB_TOOLS_DIR}/${TOOLS_IMAGE}`, import.meta.url));
  // '1': V8 profiles and exit counts; 'exits': exit counts only.
  const profile = process.env.TSVIRT_BENCH_PROFILE === '1' || process.env.TSVIRT_BENCH_PROFILE === 'exits';
  const cpuProfile = process.env.TSVIRT_BENCH_PROFILE === '1';
  const kvmMode = process.env.TSVIRT_BENCH_PROFILE === 'kvm';
  if (kvmMode) mountDebugfs();
  const initrd = await guestInitrdWith(guestScript(!trace && !profile && !kvmMode));
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-bench-virtio-'));
  try {
    // A variant's TSVIRT_BENCH_CLI (a path inside dist/, e.g. an older build copied there)
    // runs that build's tsvirt instead of this one.
    const cliOf = (env: Record<string, string>): string =>
      fileURLToPath(new URL(env.TSVIRT_BENCH_CLI ? `../../${env.TSVIRT_BENCH_CLI}` : '../../src/cli/main.js', import.meta.url));
    const runQemu = async (onMark?: MarkHook): Promise<Rates> => {
      const theirs = await images(dir, 'qemu');
      return (await runGuest('qemu-system-x86_64', ['-enable-kvm', '-cpu', 'host', '-m', String(MEMORY_MIB), '-smp', '1',
        '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-kernel', kernel, '-initrd', initrd, '-append', APPEND,
        '-drive', `file=${theirs.raw},format=raw,if=none,id=d0,cache=writeback`, '-device', 'virtio-blk-pci,drive=d0,serial=RAW',
        '-drive', `file=${theirs.qcow2},format=qcow2,if=none,id=d1,cache=writeback`, '-device', 'virtio-blk-pci,drive=d1,serial=QCOW2',
        '-drive', `file=${tools},format=raw,if=none,id=d2,readonly=on`, '-device', 'virtio-blk-pci,drive=d2,serial=TOOLS'], {}, onMark)).rates;
    };
    // tsvirt once per variant.
    const runOurs = async (env: Record<string, string>, onMark?: MarkHook): Promise<Rates> => {
      const fresh = await images(dir, 'tsvirt');
      return (await runGuest(process.execPath, [cliOf(env), 'run', '--kernel', kernel, '--initrd', initrd, '--memory', `${MEMORY_MIB}M`,
        '--cpus', '1', '--append', APPEND, '--console', 'stdio',
        '--disk', `${fresh.raw},format=raw,cache=writeback,serial=RAW`, '--disk', `${fresh.qcow2},format=qcow2,cache=writeback,serial=QCOW2`,
        '--disk', `${tools},format=raw,readonly,serial=TOOLS`], env, onMark)).rates;
    };
    if (kvmMode) {
      const windows: Array<{ vmm: string; rates: Rates; counters: Map<string, Record<string, number>> }> = [];
      const variants = benchVariants();
      // The set-ups take turns in a rotating order: the run right after another VMM's
      // (its images and memory just freed) came out slower in the lab, whichever it was.
      const order = [-1, ...variants.map((_, v) => v)];
      for (let round = 0; round < ROUNDS; round++) {
        for (let k = 0; k < order.length; k++) {
          const v = order[(k + round) % order.length]!;
          const counters = new KvmCounterWindows();
          const rates = v >= 0 ? await runOurs(variants[v]!, counters.onMark) : await runQemu(counters.onMark);
          windows.push({ vmm: v < 0 ? 'QEMU' : variants.length > 1 ? `tsvirt#${v}` : 'tsvirt', rates, counters: counters.deltas });
        }
      }
      process.stdout.write(`${formatKvmCounters(windows)}\n`);
      return;
    }
    const first = await images(dir, 'tsvirt');
    const profDir = join(dir, 'prof');
    const firstEnv = benchVariants()[0];
    const tsvirt = await runGuest(process.execPath, [...(cpuProfile ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : []),
      cliOf(firstEnv), 'run', '--kernel', kernel, '--initrd', initrd, '--memory', `${MEMORY_MIB}M`,
      '--cpus', '1', '--append', APPEND, '--console', 'stdio',
      '--disk', `${first.raw},format=raw,cache=writeback,serial=RAW`, '--disk', `${first.qcow2},format=qcow2,cache=writeback,serial=QCOW2`,
      '--disk', `${tools},format=raw,readonly,serial=TOOLS`], profile ? { ...firstEnv, TSVIRT_EXIT_STATS: '1' }
        : trace ? { TSVIRT_BLK_TRACE: '1', TSVIRT_BLK_TRACE_PROFILE: join(dir, 'trace.cpuprofile'), ...firstEnv } : firstEnv);
    if (profile) {
      process.stdout.write(`${tsvirt.output.split('\n').filter((l) => /^(bench|tsvirt: exits)/.test(l)).join('\n')}\n`);
      process.stdout.write(`VIRTIO-PROFILE ${JSON.stringify(tsvirt.rates)}\n`);
      for (const f of cpuProfile ? readdirSync(profDir) : []) {
        process.stdout.write(`--- ${f}\n${summariseProfile(join(profDir, f))}\n`);
      }
      return;
    }
    // The lab shares two host cores with whatever else runs there, so one run of each can
    // catch a busy moment: the VMMs take turns (tsvirt, QEMU, QEMU, tsvirt, ...) and each
    // figure is the best of its rounds.
    if (trace) {
      process.stdout.write(`${tsvirt.output.split('\n').filter((l) => /^(bench|blk-trace)/.test(l)).join('\n')}\n`);
      // A variant may set TSVIRT_BLK_TRACE_PROFILE= (empty) for thread CPU figures without the profiler's own cost.
      if (firstEnv.TSVIRT_BLK_TRACE_PROFILE !== '') {
        process.stdout.write(`--- main thread from the first large request\n${summariseProfile(join(dir, 'trace.cpuprofile'))}\n`);
      }
      process.stdout.write(`VIRTIO-TRACE ${JSON.stringify({ tsvirt: tsvirt.rates, qemu: await runQemu() })}\n`);
      return;
    }
    const variants = benchVariants();
    const ours: Rates[][] = variants.map(() => []);
    ours[0]!.push(tsvirt.rates);
    const qemu: Rates[] = [await runQemu()];
    for (let i = 1; i < variants.length; i++) ours[i]!.push(await runOurs(variants[i]!));
    for (let round = 1; round < ROUNDS; round++) {
      const mine = async (): Promise<void> => {
        for (let i = 0; i < variants.length; i++) ours[i]!.push(await runOurs(variants[i]!));
      };
      if (round % 2 === 1) {
        qemu.push(await runQemu());
        await mine();
      } else {
        await mine();
        qemu.push(await runQemu());
      }
    }
    const best = (runs: Rates[]): Rates => {
      const out: Rates = {};
      for (const r of runs) for (const [k, v] of Object.entries(r)) out[k] = Math.max(out[k] ?? 0, v);
      return out;
    };
    process.stdout.write(`VIRTIO-RUNS ${JSON.stringify({ tsvirt: ours[0], qemu })}\n`);
    if (variants.length > 1) {
      for (let i = 0; i < variants.length; i++) {
        process.stdout.write(`VIRTIO-VARIANT ${JSON.stringify({ env: variants[i], best: best(ours[i]!), qemu: best(qemu) })}\n`);
      }
    }
    process.stdout.write(`VIRTIO-BENCH ${JSON.stringify({ tsvirt: best(ours[0]!), qemu: best(qemu) })}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The lab sees the project's dist/ (and runtime packages, and the guest image), nothing else.
 * This makes a stand-in project root whose dist/ links every entry of the real one plus the
 * tools disk, so only this benchmark's lab run carries the disk.
 */
function rootWithTools(projectRoot: string, toolsImage: string): string {
  const root = mkdtempSync(join(tmpdir(), 'tsvirt-bench-root-'));
  symlinkSync(join(projectRoot, 'package.json'), join(root, 'package.json'));
  symlinkSync(join(projectRoot, 'node_modules'), join(root, 'node_modules'));
  mkdirSync(join(root, 'dist', LAB_TOOLS_DIR), { recursive: true });
  for (const name of readdirSync(join(projectRoot, 'dist'))) {
    if (name !== LAB_TOOLS_DIR) symlinkSync(join(projectRoot, 'dist', name), join(root, 'dist', name));
  }
  symlinkSync(toolsImage, join(root, 'dist', LAB_TOOLS_DIR, TOOLS_IMAGE));
  return root;
}

const ROWS: Array<{ key: string; name: string; unit: string }> = [];
for (const disk of ['RAW', 'QCOW2']) {
  for (const op of ['write', 'read']) ROWS.push({ key: `${disk}_${op}`, name: `${disk.toLowerCase()} sequential ${op} (dd 1 MiB)`, unit: 'MiB/s' });
  for (const op of ['randread', 'randwrite']) {
    ROWS.push({ key: `${disk}_${op}`, name: `${disk.toLowerCase()} 4 KiB ${op} (fio libaio, depth ${FIO_DEPTH})`, unit: 'IOPS' });
  }
}

export const group: BenchGroup = {
  title: `virtio-blk in a Linux guest vs QEMU virtio-blk-pci: dd ${TRANSFER_MIB} MiB sequential (after ${WARMUP_MIB} MiB untimed), fio 4 KiB random; cache=writeback (in the lab)`,
  async run(): Promise<BenchRow[]> {
    const { labExec } = await import('../../src/lab/exec.js');
    const { buildFioToolsDisk } = await import('../../src/lab/tools-disk.js');
    const { toLabPath } = await import('../../src/lab/project-tree.js');
    const { projectRoot } = await import('../../src/lab/paths.js');
    const tools = buildFioToolsDisk();
    const root = rootWithTools(projectRoot(), tools.image);
    let text = '';
    const live = process.env.TSVIRT_BENCH_LIVE === '1';
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        text += chunk.toString();
        if (live) process.stderr.write(chunk);
        cb();
      },
    });
    const profile = process.env.TSVIRT_BENCH_PROFILE;
    try {
      const result = await labExec(['node', toLabPath(root, join(root, 'dist', 'bench', 'groups', 'virtio-guest.js')), '--probe'],
        {
          stdout: sink, stderr: sink, timeoutSeconds: 1200 + 600 * ROUNDS, root,
          env: {
            TSVIRT_BENCH_ROUNDS: String(ROUNDS), TSVIRT_BENCH_WARMUP_MIB: String(WARMUP_MIB), ...(profile ? { TSVIRT_BENCH_PROFILE: profile } : {}),
            ...(process.env.TSVIRT_BENCH_VARIANTS ? { TSVIRT_BENCH_VARIANTS: process.env.TSVIRT_BENCH_VARIANTS } : {}),
            ...(live ? { TSVIRT_BENCH_LIVE: '1' } : {}),
          },
        });
      process.stderr.write(text.split('\n').filter((l) => /^VIRTIO-(RUNS|VARIANT) /.test(l)).join('\n') + '\n');
      if (profile) {
        process.stdout.write(text);
        return [];
      }
      const m = /^VIRTIO-BENCH (.*)$/m.exec(text);
      if (result.exitCode !== 0 || !m) throw new Error(`virtio probe failed in the lab (exit ${result.exitCode}): ${text.slice(-800)}`);
      const r = JSON.parse(m[1]!) as { tsvirt: Rates; qemu: Rates };
      return ROWS.map(({ key, name, unit }) => {
        if (r.tsvirt[key] === undefined) throw new Error(`virtio probe: no ${key} figure from tsvirt: ${m[1]}`);
        return { name: `${name} vs QEMU virtio-blk-pci`, ours: r.tsvirt[key], reference: r.qemu[key] ?? null, unit, higherIsBetter: true };
      });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  },
};

if (process.argv.includes('--probe') && import.meta.url === `file://${process.argv[1]}`) await probe();
