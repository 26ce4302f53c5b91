// Opt-in per-request timing of virtio-blk (TSVIRT_BLK_TRACE=1): where a request's time goes
// between the guest's doorbell and its interrupt. Off by default; when off, every hook is
// one boolean test. At process exit the trace prints one summary per device, request kind
// and size class to stderr (lines starting "blk-trace").
import { readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { Session } from 'node:inspector';
import { performance } from 'node:perf_hooks';
import { lastReportAt, stampReports } from '../kvm/fd-poller.js';

export const blkTraceEnabled = process.env.TSVIRT_BLK_TRACE === '1';
// The fd poller's threads time their reports only for this trace.
if (blkTraceEnabled) stampReports(true);

/** Milliseconds on the same clock as the fd poller's report times (epoch based, sub-ms). */
export function traceNow(): number {
  return performance.timeOrigin + performance.now();
}

/** How the device came to look at the ring when it took a request. */
export type TakeSource = 'doorbell' | 'completion' | 'timer' | 'activate';

/** One request's milestones (ms, traceNow clock); NaN when a milestone did not happen. */
export interface RequestTrace {
  kind: string;
  bytes: number;
  segments: number;
  source: TakeSource;
  /**
   * Poller thread saw the doorbell's eventfd (doorbell source only). With no poller thread
   * in between (eventfds watched on the main loop, or a doorbell that exited to userspace),
   * the main thread is the first to see it: then this is mainSeen.
   */
  pollerSeen: number;
  /** Main thread started looking at the ring. */
  mainSeen: number;
  parsed: number;
  submitted: number;
  completed: number;
  used: number;
  interrupted: number;
  /** Requests of this queue on the backend when this one was submitted (itself included). */
  depth: number;
  /** Requests merged into the backend call that carried this one. */
  merged: number;
  /** Buffers in that backend call. */
  callBuffers: number;
}

const PHASES: Array<[string, keyof RequestTrace, keyof RequestTrace]> = [
  ['poller->main', 'pollerSeen', 'mainSeen'],
  ['main->parsed', 'mainSeen', 'parsed'],
  ['parsed->submitted', 'parsed', 'submitted'],
  ['submitted->completed', 'submitted', 'completed'],
  ['completed->used', 'completed', 'used'],
  ['used->interrupt', 'used', 'interrupted'],
  ['doorbell->interrupt', 'pollerSeen', 'interrupted'],
  ['taken->used', 'mainSeen', 'used'],
];

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function histogram(values: number[]): string {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1]).slice(0, 6).map(([v, n]) => `${v}x${n}`).join(' ');
}

// TSVIRT_BLK_TRACE_PROFILE=FILE: a V8 CPU profile of the main thread from the first large
// request to process exit (a profile from process start would take in the boot; the
// profiler's signal also interrupts the VM's creation ioctls).
const profilePath = blkTraceEnabled ? process.env.TSVIRT_BLK_TRACE_PROFILE : undefined;
let profiler: Session | undefined;

function startProfile(): void {
  if (!profilePath || profiler) return;
  profiler = new Session();
  profiler.connect();
  profiler.post('Profiler.enable');
  profiler.post('Profiler.start');
  process.once('exit', () => {
    // A session on its own thread answers synchronously, so this runs before exit completes.
    profiler!.post('Profiler.stop', (error, result) => {
      if (!error) writeFileSync(profilePath, JSON.stringify(result.profile));
    });
  });
}

/**
 * User and system CPU time in ms from a /proc stat line (a process's or a thread's): utime
 * and stime are fields 14 and 15 of stat(5), counted in clock ticks of 10 ms.
 */
export function statCpuMs(stat: string): { user: number; system: number } {
  // comm may hold spaces and parentheses: the fields start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: (Number(fields[11]) * 1000) / 100, system: (Number(fields[12]) * 1000) / 100 };
}

/** CPU time (ms) of each thread of this process, by "tid name", user and system apart, from /proc (Linux). */
function threadCpu(): Map<string, number> {
  const out = new Map<string, number>();
  try {
    for (const tid of readdirSync('/proc/self/task')) {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const name = Number(tid) === process.pid ? 'main' : stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const { user, system } = statCpuMs(stat);
      out.set(`${tid} ${name} user`, user);
      out.set(`${tid} ${name} sys`, system);
    }
  } catch {
    // Not Linux, or /proc not mounted: no CPU figures.
  }
  return out;
}

/** The trace of one device: records requests, and prints their summary at process exit. */
export class BlkTracer {
  private readonly done: RequestTrace[] = [];
  /** Used but not yet through an interrupt decision, per queue. */
  private readonly awaitingInterrupt = new Map<number, RequestTrace[]>();
  /** Time each queue went idle (no request on the backend), and the gaps until the next take. */
  private idleSince = new Map<number, number>();
  private readonly idleGaps: number[] = [];
  private suppressed = 0;
  private backendCalls = 0;
  /** Per-thread CPU time when the first large request arrived, and when. */
  private cpuAtFirstLarge: { at: number; cpu: Map<string, number> } | undefined;

  constructor(private readonly device: string) {
    process.once('exit', () => this.print());
  }

  /** The main thread starts a pass over a queue; when a doorbell caused it, the time it was seen. */
  pass(source: TakeSource): { source: TakeSource; pollerSeen: number; mainSeen: number } {
    const mainSeen = traceNow();
    return { source, pollerSeen: source === 'doorbell' ? lastReportAt() ?? mainSeen : NaN, mainSeen };
  }

  start(queue: number, pass: { source: TakeSource; pollerSeen: number; mainSeen: number }, kind: string, bytes: number, segments: number): RequestTrace {
    const idle = this.idleSince.get(queue);
    if (idle !== undefined) {
      this.idleGaps.push(pass.mainSeen - idle);
      this.idleSince.delete(queue);
    }
    if (bytes >= 65536 && !this.cpuAtFirstLarge) {
      this.cpuAtFirstLarge = { at: traceNow(), cpu: threadCpu() };
      startProfile();
    }
    return {
      kind, bytes, segments, source: pass.source, pollerSeen: pass.pollerSeen, mainSeen: pass.mainSeen, parsed: traceNow(),
      submitted: NaN, completed: NaN, used: NaN, interrupted: NaN, depth: 0, merged: 1, callBuffers: segments,
    };
  }

  submitted(traces: RequestTrace[], depth: number, buffers: number): void {
    const now = traceNow();
    this.backendCalls++;
    for (const t of traces) {
      t.submitted = now;
      t.depth = depth;
      t.merged = traces.length;
      t.callBuffers = buffers;
    }
  }

  completed(traces: RequestTrace[]): void {
    const now = traceNow();
    for (const t of traces) t.completed = now;
  }

  used(queue: number, trace: RequestTrace, queueBusy: number): void {
    trace.used = traceNow();
    let list = this.awaitingInterrupt.get(queue);
    if (!list) this.awaitingInterrupt.set(queue, list = []);
    list.push(trace);
    if (queueBusy === 0) this.idleSince.set(queue, trace.used);
  }

  /** The transport decided this queue's interrupt: sent, or suppressed by the driver. */
  interrupt(queue: number, sent: boolean): void {
    const list = this.awaitingInterrupt.get(queue);
    if (!list) return;
    const now = traceNow();
    if (!sent) this.suppressed += list.length;
    for (const t of list) {
      if (sent) t.interrupted = now;
      this.done.push(t);
    }
    list.length = 0;
  }

  print(): void {
    for (const list of this.awaitingInterrupt.values()) this.done.push(...list);
    if (this.done.length === 0) return;
    const groups = new Map<string, RequestTrace[]>();
    for (const t of this.done) {
      const key = `${t.kind} ${t.bytes >= 65536 ? '>=64K' : '<64K'}`;
      let g = groups.get(key);
      if (!g) groups.set(key, g = []);
      g.push(t);
    }
    const lines: string[] = [`blk-trace ${this.device}: ${this.done.length} requests, ${this.backendCalls} backend calls, `
      + `${this.suppressed} completions without an interrupt (driver suppressed)`];
    if (this.idleGaps.length > 0) {
      const s = [...this.idleGaps].sort((a, b) => a - b);
      lines.push(`blk-trace ${this.device}: queue idle -> next take (ms): n=${s.length} p50=${percentile(s, 50).toFixed(3)} `
        + `p90=${percentile(s, 90).toFixed(3)} p99=${percentile(s, 99).toFixed(3)} sum=${s.reduce((a, b) => a + b, 0).toFixed(1)}`);
    }
    for (const [key, g] of groups) {
      const span = Math.max(...g.map((t) => t.used)) - Math.min(...g.map((t) => t.mainSeen));
      const busy = (from: keyof RequestTrace, to: keyof RequestTrace): string => {
        const spans = g.map((t) => [t[from] as number, t[to] as number]).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)).sort((x, y) => x[0]! - y[0]!);
        let total = 0;
        let end = -Infinity;
        for (const [x, y] of spans) {
          if (y! <= end) continue;
          total += y! - Math.max(x!, end);
          end = y!;
        }
        return `${((100 * total) / span).toFixed(0)}%`;
      };
      lines.push(`blk-trace ${this.device} ${key}: n=${g.length} bytes=${g.reduce((a, t) => a + t.bytes, 0)} span=${span.toFixed(1)}ms`
        + ` (backend busy ${busy('submitted', 'completed')}, device holding a request ${busy('mainSeen', 'used')})`
        + ` sizeKiB[${histogram(g.map((t) => t.bytes / 1024))}] segments[${histogram(g.map((t) => t.segments))}]`
        + ` depth[${histogram(g.map((t) => t.depth))}] merged[${histogram(g.map((t) => t.merged))}]`
        + ` source[${histogram(g.map((t) => t.source) as unknown as number[])}]`);
      for (const [name, from, to] of PHASES) {
        const d = g.map((t) => (t[to] as number) - (t[from] as number)).filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
        if (d.length === 0) continue;
        const mean = d.reduce((a, b) => a + b, 0) / d.length;
        lines.push(`blk-trace ${this.device} ${key}   ${name.padEnd(21)} ms: n=${d.length} mean=${mean.toFixed(3)} `
          + `p50=${percentile(d, 50).toFixed(3)} p90=${percentile(d, 90).toFixed(3)} p99=${percentile(d, 99).toFixed(3)} max=${d[d.length - 1]!.toFixed(3)}`);
      }
    }
    if (this.cpuAtFirstLarge) {
      const wall = traceNow() - this.cpuAtFirstLarge.at;
      const cpu = [...threadCpu()].map(([k, v]) => [k, v - (this.cpuAtFirstLarge!.cpu.get(k) ?? 0)] as const).filter(([, v]) => v > 0);
      lines.push(`blk-trace ${this.device}: thread CPU since the first large request (${wall.toFixed(0)} ms wall): `
        + cpu.sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}=${v.toFixed(0)}ms`).join(' '));
    }
    writeSync(2, `${lines.join('\n')}\n`);
    this.done.length = 0;
  }
}
