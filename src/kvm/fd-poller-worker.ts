// Worker half of fd-poller.ts: blocks in epoll_wait on the poller's epoll set and posts the
// tokens of ready descriptors to the main thread. The main thread adds, removes and re-arms
// descriptors itself (epoll_ctl is thread-safe), so this loop needs no commands; writing the
// wake eventfd (token 0) tells it to stop.
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { WAKE_TOKEN, type PollerWorkerInput } from './fd-poller.js';
import { EINTR, EPOLL_EVENT_SIZE, epollWait } from './libc.js';

const { epollFd, waitMs, stamp } = workerData as PollerWorkerInput;
const port = parentPort!;
const events = new Uint8Array(64 * EPOLL_EVENT_SIZE);
const view = new DataView(events.buffer);

for (;;) {
  const n = epollWait(epollFd, events, waitMs);
  if (n === -EINTR || n === 0) continue;
  const ready: Array<bigint | number> = [];
  let stop = false;
  for (let i = 0; i < n; i++) {
    const token = view.getBigUint64(i * EPOLL_EVENT_SIZE + 4, true);
    if (token === WAKE_TOKEN) stop = true;
    else ready.push(token);
  }
  // For request tracing only (stampReports), the report time rides along: last element, a number.
  if (ready.length > 0) {
    if (Atomics.load(stamp, 0) !== 0) ready.push(performance.timeOrigin + performance.now());
    port.postMessage(ready);
  }
  if (stop) break;
}
