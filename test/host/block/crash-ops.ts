// The crash test's operation sequence: the child performs it, the parent replays it.
import { rng, randomBytes } from '../../unit/block/helpers.js';

export type CrashOp =
  | { kind: 'write'; offset: number; data: Uint8Array }
  | { kind: 'zero'; offset: number; length: number; unmap: boolean }
  | { kind: 'discard'; offset: number; length: number }
  | { kind: 'snapshot' };

export function* crashOps(seed: number, size: number, limit = 100_000): Generator<CrashOp> {
  const next = rng(seed);
  for (let i = 0; i < limit; i++) {
    const k = next();
    const offset = Math.floor(next() * size);
    const length = Math.min(size - offset, 1 + Math.floor(next() * 100_000));
    if (k < 0.8) yield { kind: 'write', offset, data: randomBytes(next, length) };
    else if (k < 0.9) yield { kind: 'zero', offset, length, unmap: next() < 0.5 };
    else if (k < 0.97) yield { kind: 'discard', offset, length };
    else yield { kind: 'snapshot' };
  }
}
