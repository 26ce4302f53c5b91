// virtio-blk from inside a Linux guest: sequential write and read MiB/s with dd on a raw and a
// qcow2 disk, tsvirt against QEMU's virtio-blk-pci with the same kernel, images, cache mode
// (writeback) and guest script, in the same lab run (a Linux guest needs the lab's fast KVM).
//
// Run on the host, the group starts the lab once and runs this same file inside it as a
// probe, which prints one JSON line with the measurements.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import type { BenchGroup, BenchRow } from '../main.js';

const MEMORY_MIB = 256;
const TRANSFER_MIB = 64;
const APPEND = 'console=ttyS0 reboot=k panic=-1 quiet';
const RUN_TIMEOUT_MS = 300_000;

// Each disk by serial: write TRANSFER_MIB with a final fsync, drop the page cache, read it
// back. /proc/uptime has 10 ms resolution, plenty for transfers that take a second or more.
const GUEST_SCRIPT = `
now() { cut -d' ' -f1 /proc/uptime; }
for b in /sys/block/vd*; do
  n=\${b##*/}; s=$(cat $b/serial)
  a=$(now); dd if=/dev/zero of=/dev/$n bs=1M count=${TRANSFER_MIB} conv=fsync 2>/dev/null; z=$(now)
  echo "bench \${s}_write $a $z"
  sync; echo 3 > /proc/sys/vm/drop_caches
  a=$(now); dd if=/dev/$n of=/dev/null bs=1M count=${TRANSFER_MIB} 2>/dev/null; z=$(now)
  echo "bench \${s}_read $a $z"
done
`;

type Rates = Record<string, number>;

/** Run a VMM until the guest script is done; MiB/s for each `bench` line. */
function runGuest(command: string, args: string[]): Promise<Rates> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let done = false;
    const finish = (err: Error | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      if (err) { reject(err); return; }
      const rates: Rates = {};
      for (const m of out.matchAll(/^bench (\w+) ([\d.]+) ([\d.]+)\r?$/gm)) {
        rates[m[1]!] = TRANSFER_MIB / Math.max(0.01, Number(m[3]) - Number(m[2]));
      }
      resolve(rates);
    };
    const timer = setTimeout(() => finish(new Error(`${command}: guest script did not finish within ${RUN_TIMEOUT_MS} ms:\n${out.slice(-1500)}`)), RUN_TIMEOUT_MS);
    const onData = (d: Buffer): void => {
      out += d.toString('latin1');
      if (/tsvirt-guest: exit \d+/.test(out)) finish(null);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (err) => finish(err));
    child.on('exit', (code) => finish(/tsvirt-guest: exit/.test(out) ? null : new Error(`${command} exited (${code}) early:\n${out.slice(-1500)}`)));
  });
}

/** Fresh images for one VMM: a raw file and an empty qcow2 of the same size. */
async function images(dir: string, tag: string): Promise<{ raw: string; qcow2: string }> {
  const { createQcow2 } = await import('../../src/block/qcow2/create.js');
  const raw = join(dir, `${tag}.raw`);
  const qcow2 = join(dir, `${tag}.qcow2`);
  writeFileSync(raw, '');
  const { truncateSync } = await import('node:fs');
  truncateSync(raw, (TRANSFER_MIB + 16) * 1024 * 1024);
  await createQcow2(qcow2, { size: BigInt(TRANSFER_MIB + 16) << 20n });
  return { raw, qcow2 };
}

/** Inside the lab: run the guest script under each VMM and print the rates as one JSON line. */
async function probe(): Promise<void> {
  const { guestKernelPath } = await import('../../src/lab/paths.js');
  const { guestInitrdWith } = await import('../../src/lab/guest-image.js');
  const kernel = guestKernelPath();
  const initrd = await guestInitrdWith(GUEST_SCRIPT);
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-bench-virtio-'));
  try {
    const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
    const ours = await images(dir, 'tsvirt');
    const tsvirt = await runGuest(process.execPath, [cli, 'run', '--kernel', kernel, '--initrd', initrd, '--memory', `${MEMORY_MIB}M`,
      '--cpus', '1', '--append', APPEND, '--console', 'stdio',
      '--disk', `${ours.raw},format=raw,cache=writeback,serial=RAW`, '--disk', `${ours.qcow2},format=qcow2,cache=writeback,serial=QCOW2`]);
    const theirs = await images(dir, 'qemu');
    const qemu = await runGuest('qemu-system-x86_64', ['-enable-kvm', '-cpu', 'host', '-m', String(MEMORY_MIB), '-smp', '1',
      '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-kernel', kernel, '-initrd', initrd, '-append', APPEND,
      '-drive', `file=${theirs.raw},format=raw,if=none,id=d0,cache=writeback`, '-device', 'virtio-blk-pci,drive=d0,serial=RAW',
      '-drive', `file=${theirs.qcow2},format=qcow2,if=none,id=d1,cache=writeback`, '-device', 'virtio-blk-pci,drive=d1,serial=QCOW2']);
    process.stdout.write(`VIRTIO-BENCH ${JSON.stringify({ tsvirt, qemu })}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export const group: BenchGroup = {
  title: `virtio-blk in a Linux guest: dd ${TRANSFER_MIB} MiB sequential, cache=writeback (in the lab)`,
  async run(): Promise<BenchRow[]> {
    const { labExec } = await import('../../src/lab/exec.js');
    let text = '';
    const sink = new Writable({ write(chunk: Buffer, _e, cb) { text += chunk.toString(); cb(); } });
    const { toLabPath } = await import('../../src/lab/project-tree.js');
    const { projectRoot } = await import('../../src/lab/paths.js');
    const result = await labExec(['node', toLabPath(projectRoot(), fileURLToPath(import.meta.url)), '--probe'],
      { stdout: sink, stderr: sink, timeoutSeconds: 900 });
    const m = /^VIRTIO-BENCH (.*)$/m.exec(text);
    if (result.exitCode !== 0 || !m) throw new Error(`virtio probe failed in the lab (exit ${result.exitCode}): ${text.slice(-800)}`);
    const r = JSON.parse(m[1]!) as { tsvirt: Rates; qemu: Rates };
    const rows: BenchRow[] = [];
    for (const disk of ['RAW', 'QCOW2']) {
      for (const op of ['write', 'read']) {
        const key = `${disk}_${op}`;
        if (r.tsvirt[key] === undefined) throw new Error(`virtio probe: no ${key} figure from tsvirt: ${m[1]}`);
        rows.push({ name: `${disk.toLowerCase()} sequential ${op} vs QEMU virtio-blk-pci`, ours: r.tsvirt[key], reference: r.qemu[key] ?? null, unit: 'MiB/s', higherIsBetter: true });
      }
    }
    return rows;
  },
};

if (process.argv.includes('--probe') && import.meta.url === `file://${process.argv[1]}`) await probe();
