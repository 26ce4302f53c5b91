// Atomics.waitAsync (Node 20 has it; the ES2023 type library this project compiles against
// does not declare it yet).
type WaitAsyncResult = { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
const waitAsyncImpl = (Atomics as unknown as {
  waitAsync: (array: Int32Array, index: number, value: number, timeout?: number) => WaitAsyncResult;
}).waitAsync;

/** Resolves when `array[index]` is notified or no longer equals `value`, or after `timeoutMs`. */
export async function waitAsync(array: Int32Array, index: number, value: number, timeoutMs = Infinity): Promise<void> {
  const r = waitAsyncImpl(array, index, value, timeoutMs);
  if (r.async) await r.value;
}
