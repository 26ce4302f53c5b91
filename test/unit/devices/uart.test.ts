import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Uart16550, UART_IER_DLM, UART_IIR_FCR, UART_LCR, UART_LSR, UART_MCR, UART_MSR, UART_RBR_THR_DLL, UART_SCR,
  IER_RDI, IER_THRI, IER_RLSI, IIR_NO_INT, IIR_THRI, IIR_RDI, IIR_RX_TIMEOUT, IIR_RLSI, IIR_FIFO_ENABLED, LCR_DLAB,
  LSR_DR, LSR_THRE, LSR_TEMT, LSR_OE, MCR_LOOP, MCR_RTS, MCR_DTR, MCR_OUT2, MSR_CTS, MSR_DSR, MSR_DCD, UART_RX_BUFFER,
  UART_STATE_BYTES,
} from '../../../src/devices/uart.js';

function rig(): { uart: Uart16550; sent: number[]; levels: boolean[]; r: (o: number) => number; w: (o: number, v: number) => void } {
  const sent: number[] = [];
  const levels: boolean[] = [];
  const uart = Uart16550.create({ transmit: (b) => sent.push(b), trigger: (l) => levels.push(l) });
  const r = (o: number): number => { const d = new Uint8Array(1); uart.read(o, d); return d[0]!; };
  const w = (o: number, v: number): void => uart.write(o, Uint8Array.of(v));
  return { uart, sent, levels, r, w };
}

test('divisor latch: DLAB switches offsets 0 and 1 to DLL/DLM without touching THR/IER', () => {
  const { sent, r, w } = rig();
  w(UART_IER_DLM, IER_RDI);
  w(UART_LCR, LCR_DLAB | 0x03);
  w(UART_RBR_THR_DLL, 0x0c);
  w(UART_IER_DLM, 0x01);
  assert.equal(r(UART_RBR_THR_DLL), 0x0c);
  assert.equal(r(UART_IER_DLM), 0x01);
  assert.deepEqual(sent, [], 'a DLL write is not a transmitted byte');
  w(UART_LCR, 0x03);
  assert.equal(r(UART_IER_DLM), IER_RDI, 'IER kept its value under the latch');
  assert.equal(r(UART_LCR), 0x03);
  w(UART_RBR_THR_DLL, 0x41);
  assert.deepEqual(sent, [0x41]);
});

test('LSR reports THR empty, and DR only while received data is waiting', () => {
  const { uart, r } = rig();
  assert.equal(r(UART_LSR), LSR_THRE | LSR_TEMT);
  uart.receive(Uint8Array.of(0x61));
  assert.equal(r(UART_LSR) & LSR_DR, LSR_DR);
  assert.equal(r(UART_RBR_THR_DLL), 0x61);
  assert.equal(r(UART_LSR) & LSR_DR, 0);
});

test('THRE interrupt: raised when enabled, acknowledged by the IIR read, re-armed by a THR write', () => {
  const { levels, r, w } = rig();
  assert.equal(r(UART_IIR_FCR), IIR_NO_INT);
  w(UART_IER_DLM, IER_THRI);
  assert.deepEqual(levels, [true]);
  assert.equal(r(UART_IIR_FCR), IIR_THRI);
  assert.deepEqual(levels, [true, false], 'reading IIR while it reports THRE lowers the line');
  assert.equal(r(UART_IIR_FCR), IIR_NO_INT);
  w(UART_RBR_THR_DLL, 0x42);
  assert.deepEqual(levels, [true, false, true]);
  w(UART_IER_DLM, 0);
  assert.deepEqual(levels, [true, false, true, false], 'disabling the source lowers the line');
});

test('receive interrupt outranks THRE and the line drops once the data is read', () => {
  const { uart, levels, r, w } = rig();
  w(UART_IER_DLM, IER_RDI | IER_THRI);
  uart.receive(Uint8Array.of(0x31));
  assert.equal(r(UART_IIR_FCR), IIR_RDI, 'RDA has priority over THRE');
  assert.equal(r(UART_RBR_THR_DLL), 0x31);
  assert.equal(r(UART_IIR_FCR), IIR_THRI);
  assert.equal(r(UART_IIR_FCR), IIR_NO_INT);
  assert.equal(levels.at(-1), false);
});

test('FIFO: IIR shows FIFO enabled, trigger level decides RDA vs timeout, clear empties it', () => {
  const { uart, r, w } = rig();
  w(UART_IIR_FCR, 0x01 | 0x80); // enable, trigger level 8
  w(UART_IER_DLM, IER_RDI);
  uart.receive(new TextEncoder().encode('abc'));
  assert.equal(r(UART_IIR_FCR), IIR_FIFO_ENABLED | IIR_RX_TIMEOUT, 'below the trigger level');
  uart.receive(new TextEncoder().encode('defgh'));
  assert.equal(r(UART_IIR_FCR), IIR_FIFO_ENABLED | IIR_RDI, 'at the trigger level');
  assert.equal(String.fromCharCode(r(0), r(0), r(0)), 'abc', 'FIFO order');
  w(UART_IIR_FCR, 0x01 | 0x02);
  assert.equal(r(UART_LSR) & LSR_DR, 0, 'RX clear emptied the FIFO');
  assert.equal(r(UART_IIR_FCR), IIR_FIFO_ENABLED | IIR_NO_INT);
});

test('without the FIFO the receiver holds one byte and input waits on the host side', () => {
  const { uart, r } = rig();
  assert.equal(uart.receive(new TextEncoder().encode('xy')), 1);
  assert.equal(r(UART_RBR_THR_DLL), 0x78);
  assert.equal(uart.receive(new TextEncoder().encode('y')), 1);
});

test('host input beyond the buffer is refused, not dropped', () => {
  const { uart, w } = rig();
  w(UART_IIR_FCR, 0x01);
  assert.equal(uart.receive(new Uint8Array(UART_RX_BUFFER + 10)), UART_RX_BUFFER);
  assert.equal(uart.rxSpace(), 0);
});

test('loopback: THR feeds the receiver, MSR mirrors MCR, overrun sets OE and the line status interrupt', () => {
  const { sent, r, w } = rig();
  w(UART_MCR, MCR_LOOP | MCR_RTS | MCR_OUT2);
  assert.equal(r(UART_MSR) & 0xf0, MSR_CTS | MSR_DCD);
  w(UART_MCR, MCR_LOOP | MCR_DTR);
  assert.equal(r(UART_MSR) & 0xf0, MSR_DSR);
  w(UART_IER_DLM, IER_RLSI);
  w(UART_RBR_THR_DLL, 0x55);
  w(UART_RBR_THR_DLL, 0x66); // one-byte receiver without FIFO: overrun
  assert.deepEqual(sent, [], 'loopback output does not leave the UART');
  assert.equal(r(UART_IIR_FCR), IIR_RLSI);
  const lsr = r(UART_LSR);
  assert.equal(lsr & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
  assert.equal(r(UART_LSR) & LSR_OE, 0, 'OE clears when LSR is read');
  assert.equal(r(UART_RBR_THR_DLL), 0x55);
});

test('scratch register and a second attachment see the same shared state', () => {
  const sent: number[] = [];
  const a = Uart16550.create({ transmit: () => {}, trigger: () => {} }, true);
  const b = new Uart16550(a.buffer, { transmit: (x) => sent.push(x), trigger: () => {} });
  a.write(UART_SCR, Uint8Array.of(0x5a));
  const d = new Uint8Array(1);
  b.read(UART_SCR, d);
  assert.equal(d[0], 0x5a);
  b.write(UART_RBR_THR_DLL, Uint8Array.of(0x21));
  assert.deepEqual(sent, [0x21], 'output leaves through the hooks of the thread that wrote');
  assert.throws(() => new Uart16550(new ArrayBuffer(8), { transmit: () => {}, trigger: () => {} }), /needs/);
});

test('state save and load round-trip', () => {
  const { uart, r, w } = rig();
  w(UART_LCR, 0x1b);
  w(UART_SCR, 0x77);
  uart.receive(Uint8Array.of(0x39));
  const saved = uart.saveState();
  assert.equal(saved.bytes.length, UART_STATE_BYTES);
  const other = rig();
  other.uart.loadState(saved);
  assert.equal(other.r(UART_LCR), 0x1b);
  assert.equal(other.r(UART_SCR), 0x77);
  assert.equal(other.r(UART_RBR_THR_DLL), 0x39);
  assert.equal(r(UART_LCR), 0x1b);
  assert.throws(() => other.uart.loadState({ version: 2, bytes: saved.bytes }), /version 2/);
});
