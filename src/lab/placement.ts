// Where guest workloads (Linux guests, the guest test suite) should run: 'direct' on this
// machine's /dev/kvm, or 'lab' inside the nested lab. Decided by timing, not by module
// names: a paravirtual or emulating KVM can look normal and still run guest code a hundred
// times too slowly. The 64-bit loop guest runs for at most CALIBRATION_TIMEOUT_MS; the
// verdict is cached per host boot (boot_id), so a test run pays for it once.
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { measureLoopRate } from '../kvm/loop-guest.js';
import { labCacheDir } from './paths.js';

export type Placement = 'direct' | 'lab';

/** Loop iterations per second a KVM must reach to boot Linux guests in useful time. A
 *  hardware KVM runs hundreds of millions, the nested lab 60-170 million, an emulating KVM
 *  about one million. (A partial count from a timed-out run still gives the rate.) */
export const DIRECT_MIN_ITERATIONS_PER_SECOND = 10e6;
const CALIBRATION_ITERATIONS = 20_000_000;
const CALIBRATION_TIMEOUT_MS = 1000;

export interface PlacementVerdict {
  placement: Placement;
  reason: string;
  iterationsPerSecond: number | null;
  bootId: string;
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

function cacheFile(): string {
  return join(labCacheDir(), 'placement.json');
}

function readCached(id: string): PlacementVerdict | null {
  try {
    const v = JSON.parse(readFileSync(cacheFile(), 'utf8')) as PlacementVerdict;
    return v.bootId === id && (v.placement === 'direct' || v.placement === 'lab') ? v : null;
  } catch {
    return null;
  }
}

/** Measures this machine's KVM (no cache, no override). */
export async function calibrate(): Promise<PlacementVerdict> {
  const id = bootId();
  if (!existsSync('/dev/kvm')) {
    return { placement: 'lab', reason: 'no /dev/kvm on this machine', iterationsPerSecond: null, bootId: id };
  }
  try {
    const rate = await measureLoopRate(CALIBRATION_ITERATIONS, { timeoutMs: CALIBRATION_TIMEOUT_MS });
    const fast = rate.iterationsPerSecond >= DIRECT_MIN_ITERATIONS_PER_SECOND;
    const mips = (rate.iterationsPerSecond / 1e6).toFixed(1);
    return {
      placement: fast ? 'direct' : 'lab',
      reason: `loop guest ran ${mips} M iterations/s on /dev/kvm (direct needs ${DIRECT_MIN_ITERATIONS_PER_SECOND / 1e6} M)`,
      iterationsPerSecond: rate.iterationsPerSecond,
      bootId: id,
    };
  } catch (err) {
    return { placement: 'lab', reason: `loop guest failed on /dev/kvm: ${(err as Error).message}`, iterationsPerSecond: null, bootId: id };
  }
}

/** The verdict with its reason: TSVIRT_PLACEMENT override, else this boot's cached calibration. */
export async function placementVerdict(): Promise<PlacementVerdict> {
  const forced = process.env.TSVIRT_PLACEMENT;
  const id = bootId();
  if (forced !== undefined && forced !== '') {
    if (forced !== 'direct' && forced !== 'lab') throw new Error(`TSVIRT_PLACEMENT=${forced}: expected direct or lab`);
    return { placement: forced, reason: 'TSVIRT_PLACEMENT', iterationsPerSecond: null, bootId: id };
  }
  const cached = readCached(id);
  if (cached) return cached;
  const verdict = await calibrate();
  try {
    mkdirSync(labCacheDir(), { recursive: true });
    const tmp = `${cacheFile()}.${process.pid}`;
    writeFileSync(tmp, JSON.stringify(verdict) + '\n');
    renameSync(tmp, cacheFile());
  } catch {
    // A read-only cache only costs a re-calibration next time.
  }
  return verdict;
}

export async function decidePlacement(): Promise<Placement> {
  return (await placementVerdict()).placement;
}
