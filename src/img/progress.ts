// The `-p` progress bar of convert and commit: qemu-img's "    (NN.NN/100%)" line on stderr.
import type { ImgIO } from './io.js';

export interface Progress { add(n: bigint): void; stop(): void }

/** A bar over `total` bytes; a do-nothing one unless `enabled` (the bar library loads only then). */
export async function progressBar(io: ImgIO, total: bigint, enabled: boolean): Promise<Progress> {
  if (!enabled) return { add: () => undefined, stop: () => undefined };
  const { default: cliProgress } = await import('cli-progress');
  const bar = new cliProgress.SingleBar({
    stream: process.stderr,
    format: '    ({pct}/100%) [{bar}]', // qemu-img prints the percentage with two decimals
    hideCursor: false,
    noTTYOutput: !io.errIsTTY,
    notTTYSchedule: 1000,
  }, cliProgress.Presets.shades_classic);
  const scale = Number(total) || 1;
  let done = 0n;
  bar.start(100, 0, { pct: '0.00' });
  return {
    add: (n) => {
      done += n;
      const pct = Math.floor((Number(done) / scale) * 10000) / 100;
      bar.update(pct, { pct: pct.toFixed(2) });
    },
    stop: () => {
      bar.update(100, { pct: '100.00' });
      bar.stop();
    },
  };
}
