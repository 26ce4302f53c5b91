// An 8250/16550A UART (the PC's COM ports) as a register state machine.
//
// Linux's console driver costs about two port exits per printed character (an LSR read,
// then a THR write), so this model is built to run on the vCPU thread that took the exit:
// every register lives in one (Shared)ArrayBuffer, so each vCPU worker and the main thread
// attach their own Uart16550 object to the same state and complete accesses without a
// thread round trip. A small spin lock (Atomics) keeps the register updates atomic across
// threads; it is held for a few dozen instructions at a time. Side effects leave through
// the hooks: `transmit` (a byte for the console backend) and `trigger` (the IRQ output).
//
// Transmission is instantaneous (THR and the transmitter are always empty after a write),
// as in every VMM: there is no baud-rate timing to emulate for a virtual wire.
import { IrqTrigger } from './irq.js';

export interface UartHooks {
  /** A byte the guest wrote to THR (not called in loopback mode). */
  transmit: (byte: number) => void;
  trigger: IrqTrigger;
}

// Register offsets from the base port.
export const UART_RBR_THR_DLL = 0;
export const UART_IER_DLM = 1;
export const UART_IIR_FCR = 2;
export const UART_LCR = 3;
export const UART_MCR = 4;
export const UART_LSR = 5;
export const UART_MSR = 6;
export const UART_SCR = 7;

export const IER_RDI = 0x01; // received data available
export const IER_THRI = 0x02; // transmitter holding register empty
export const IER_RLSI = 0x04; // receiver line status
export const IER_MSI = 0x08; // modem status

export const IIR_NO_INT = 0x01;
export const IIR_MSI = 0x00;
export const IIR_THRI = 0x02;
export const IIR_RDI = 0x04;
export const IIR_RLSI = 0x06;
export const IIR_RX_TIMEOUT = 0x0c;
export const IIR_FIFO_ENABLED = 0xc0;

export const LCR_DLAB = 0x80;
export const MCR_DTR = 0x01;
export const MCR_RTS = 0x02;
export const MCR_OUT1 = 0x04;
export const MCR_OUT2 = 0x08;
export const MCR_LOOP = 0x10;

export const LSR_DR = 0x01;
export const LSR_OE = 0x02;
export const LSR_PE = 0x04;
export const LSR_FE = 0x08;
export const LSR_BI = 0x10;
export const LSR_THRE = 0x20;
export const LSR_TEMT = 0x40;
const LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI;

export const MSR_DCTS = 0x01;
export const MSR_DDSR = 0x02;
export const MSR_TERI = 0x04;
export const MSR_DDCD = 0x08;
export const MSR_CTS = 0x10;
export const MSR_DSR = 0x20;
export const MSR_RI = 0x40;
export const MSR_DCD = 0x80;

export const FCR_ENABLE = 0x01;
export const FCR_CLEAR_RX = 0x02;
export const FCR_CLEAR_TX = 0x04;
const RX_TRIGGER_LEVELS = [1, 4, 8, 14] as const;

// Word indices of the register state.
const LOCK = 0;
const IER = 1;
const LCR = 2;
const MCR = 3;
const LSR_ERR = 4; // sticky error bits of LSR, cleared when LSR is read
const MSR_DELTA = 5; // delta bits of MSR, cleared when MSR is read
const SCR = 6;
const DLL = 7;
const DLM = 8;
const FCR = 9;
const THR_PENDING = 10; // the THRE interrupt condition (cleared by an IIR read that reports it)
const RX_HEAD = 11;
const RX_COUNT = 12;
const IRQ_LEVEL = 13;
const STATE_WORDS = 16;

/**
 * Bytes of receive buffer behind the 16-byte FIFO the guest is told about. The host side
 * (a terminal, a socket) is a flow-controlled stream, not a wire with a baud rate: holding
 * its bytes here instead of overrunning means pasted text is never lost. The guest still
 * sees a 16550A: trigger levels and LSR.DR behave as for a 16-byte FIFO that refills.
 */
export const UART_RX_BUFFER = 4096;

/** Size of the state buffer one UART needs (allocate it shared to use it from several threads). */
export const UART_STATE_BYTES = STATE_WORDS * 4 + UART_RX_BUFFER;

export class Uart16550 {
  private readonly s: Int32Array;
  private readonly rx: Uint8Array;

  /**
   * Attach to register state in `buffer` (UART_STATE_BYTES long). A zero-filled buffer is a
   * UART after power-on reset; every thread that attaches to the same SharedArrayBuffer
   * drives the same device.
   */
  constructor(readonly buffer: ArrayBufferLike, private readonly hooks: UartHooks) {
    if (buffer.byteLength < UART_STATE_BYTES) {
      throw new RangeError(`UART state buffer is ${buffer.byteLength} bytes, needs ${UART_STATE_BYTES}`);
    }
    this.s = new Int32Array(buffer, 0, STATE_WORDS);
    this.rx = new Uint8Array(buffer, STATE_WORDS * 4, UART_RX_BUFFER);
  }

  /** A UART with its own fresh state; `shared` makes the state attachable from workers. */
  static create(hooks: UartHooks, shared = false): Uart16550 {
    const buffer = shared ? new SharedArrayBuffer(UART_STATE_BYTES) : new ArrayBuffer(UART_STATE_BYTES);
    return new Uart16550(buffer, hooks);
  }

  private lock(): void {
    while (Atomics.compareExchange(this.s, LOCK, 0, 1) !== 0) {
      // Contention only happens between a vCPU and the console input path; the holder
      // is never descheduled for long, so spinning beats sleeping here.
    }
  }

  private unlock(): void {
    Atomics.store(this.s, LOCK, 0);
  }

  /** Hardware reset (machine reset): registers to power-on values, buffered input dropped. */
  reset(): void {
    this.lock();
    try {
      for (let i = 1; i < STATE_WORDS; i++) if (i !== IRQ_LEVEL) this.s[i] = 0;
      this.updateIrq();
    } finally {
      this.unlock();
    }
  }

  read(offset: bigint | number, data: Uint8Array): void {
    this.lock();
    try {
      data.fill(0);
      data[0] = this.readRegister(Number(offset));
      this.updateIrq();
    } finally {
      this.unlock();
    }
  }

  write(offset: bigint | number, data: Uint8Array): void {
    this.lock();
    try {
      this.writeRegister(Number(offset), data[0] ?? 0);
      this.updateIrq();
    } finally {
      this.unlock();
    }
  }

  /**
   * Offer host input; returns how many bytes were taken (the rest must be offered again
   * later: `rxSpace()` grows as the guest reads).
   */
  receive(bytes: Uint8Array): number {
    this.lock();
    try {
      const taken = this.pushRx(bytes);
      this.updateIrq();
      return taken;
    } finally {
      this.unlock();
    }
  }

  /** Free space in the receive buffer. */
  rxSpace(): number {
    return UART_RX_BUFFER - Atomics.load(this.s, RX_COUNT);
  }

  /** Current level of the interrupt output. */
  get irqLevel(): boolean {
    return Atomics.load(this.s, IRQ_LEVEL) !== 0;
  }

  /** A copy of the device state (registers and buffered input), version 1. */
  saveState(): { version: 1; bytes: Uint8Array } {
    this.lock();
    try {
      const bytes = new Uint8Array(this.buffer.byteLength);
      bytes.set(new Uint8Array(this.buffer, 0, this.buffer.byteLength));
      bytes.fill(0, 0, 4); // not the lock word
      return { version: 1, bytes };
    } finally {
      this.unlock();
    }
  }

  loadState(state: { version: number; bytes: Uint8Array }): void {
    if (state.version !== 1 || state.bytes.length !== UART_STATE_BYTES) {
      throw new Error(`UART state version ${state.version} (${state.bytes.length} bytes) is not loadable`);
    }
    this.lock();
    try {
      new Uint8Array(this.buffer, 4, UART_STATE_BYTES - 4).set(state.bytes.subarray(4));
      this.s[IRQ_LEVEL] = 0;
      this.updateIrq();
    } finally {
      this.unlock();
    }
  }

  private fifoEnabled(): boolean {
    return (this.s[FCR]! & FCR_ENABLE) !== 0;
  }

  private rxTriggerLevel(): number {
    return RX_TRIGGER_LEVELS[(this.s[FCR]! >> 6) & 3]!;
  }

  private pushRx(bytes: Uint8Array): number {
    let count = this.s[RX_COUNT]!;
    const head = this.s[RX_HEAD]!;
    let taken = 0;
    // Without the FIFO the receiver holds one byte; more input waits on the host side.
    const capacity = this.fifoEnabled() ? UART_RX_BUFFER : 1;
    while (taken < bytes.length && count < capacity) {
      this.rx[(head + count) % UART_RX_BUFFER] = bytes[taken]!;
      count++;
      taken++;
    }
    this.s[RX_COUNT] = count;
    return taken;
  }

  private popRx(): number {
    const count = this.s[RX_COUNT]!;
    if (count === 0) return 0;
    const head = this.s[RX_HEAD]!;
    const byte = this.rx[head]!;
    this.s[RX_HEAD] = (head + 1) % UART_RX_BUFFER;
    this.s[RX_COUNT] = count - 1;
    return byte;
  }

  private lsr(): number {
    let v = LSR_THRE | LSR_TEMT | this.s[LSR_ERR]!;
    if (this.s[RX_COUNT]! > 0) v |= LSR_DR;
    return v;
  }

  private msr(): number {
    const mcr = this.s[MCR]!;
    let status: number;
    if (mcr & MCR_LOOP) {
      // Loopback wires the modem outputs back to the inputs (the 8250 self test checks this).
      status = (mcr & MCR_RTS ? MSR_CTS : 0) | (mcr & MCR_DTR ? MSR_DSR : 0)
        | (mcr & MCR_OUT1 ? MSR_RI : 0) | (mcr & MCR_OUT2 ? MSR_DCD : 0);
    } else {
      // A console that is always connected and ready.
      status = MSR_DCD | MSR_DSR | MSR_CTS;
    }
    return status | this.s[MSR_DELTA]!;
  }

  /** The interrupt the IIR would report now, by 16550 priority (IIR_NO_INT when none). */
  private pendingInterrupt(): number {
    const ier = this.s[IER]!;
    if (ier & IER_RLSI && this.s[LSR_ERR]! & LSR_ERRORS) return IIR_RLSI;
    const count = this.s[RX_COUNT]!;
    if (ier & IER_RDI && count > 0) {
      if (!this.fifoEnabled() || count >= this.rxTriggerLevel()) return IIR_RDI;
      // Below the trigger level a real 16550 reports a character timeout after four idle
      // character times. The virtual wire is idle as soon as the host stops writing, so the
      // timeout is reported at once: the guest then drains the FIFO exactly as it would later.
      return IIR_RX_TIMEOUT;
    }
    if (ier & IER_THRI && this.s[THR_PENDING]) return IIR_THRI;
    if (ier & IER_MSI && this.s[MSR_DELTA]! & 0x0f) return IIR_MSI;
    return IIR_NO_INT;
  }

  private updateIrq(): void {
    const level = this.pendingInterrupt() !== IIR_NO_INT ? 1 : 0;
    if (this.s[IRQ_LEVEL] !== level) {
      this.s[IRQ_LEVEL] = level;
      this.hooks.trigger(level === 1);
    }
  }

  private readRegister(offset: number): number {
    const dlab = (this.s[LCR]! & LCR_DLAB) !== 0;
    switch (offset) {
      case UART_RBR_THR_DLL:
        return dlab ? this.s[DLL]! : this.popRx();
      case UART_IER_DLM:
        return dlab ? this.s[DLM]! : this.s[IER]!;
      case UART_IIR_FCR: {
        const iir = this.pendingInterrupt();
        // Reading IIR while it reports THRE acknowledges that interrupt.
        if (iir === IIR_THRI) this.s[THR_PENDING] = 0;
        return iir | (this.fifoEnabled() ? IIR_FIFO_ENABLED : 0);
      }
      case UART_LCR:
        return this.s[LCR]!;
      case UART_MCR:
        return this.s[MCR]!;
      case UART_LSR: {
        const v = this.lsr();
        this.s[LSR_ERR] = 0;
        return v;
      }
      case UART_MSR: {
        const v = this.msr();
        this.s[MSR_DELTA] = 0;
        return v;
      }
      case UART_SCR:
        return this.s[SCR]!;
      default:
        return 0xff;
    }
  }

  private writeRegister(offset: number, value: number): void {
    const dlab = (this.s[LCR]! & LCR_DLAB) !== 0;
    switch (offset) {
      case UART_RBR_THR_DLL:
        if (dlab) {
          this.s[DLL] = value;
        } else {
          if (this.s[MCR]! & MCR_LOOP) {
            if (this.pushRx(Uint8Array.of(value)) === 0) this.s[LSR_ERR] = this.s[LSR_ERR]! | LSR_OE;
          } else {
            this.hooks.transmit(value);
          }
          // The byte left at once, so THR is empty again: that is a new THRE event.
          this.s[THR_PENDING] = 1;
        }
        return;
      case UART_IER_DLM:
        if (dlab) {
          this.s[DLM] = value;
        } else {
          const before = this.s[IER]!;
          this.s[IER] = value & 0x0f;
          // Enabling THRI while THR is empty raises the THRE interrupt (drivers rely on it to
          // start transmitting).
          if (!(before & IER_THRI) && value & IER_THRI) this.s[THR_PENDING] = 1;
        }
        return;
      case UART_IIR_FCR: {
        const wasEnabled = this.fifoEnabled();
        const enable = (value & FCR_ENABLE) !== 0;
        if (enable !== wasEnabled || value & FCR_CLEAR_RX) {
          this.s[RX_HEAD] = 0;
          this.s[RX_COUNT] = 0;
        }
        // Only the enable bit and the trigger level are state; the clear bits self-reset.
        this.s[FCR] = enable ? value & 0xc1 : 0;
        return;
      }
      case UART_LCR:
        this.s[LCR] = value;
        return;
      case UART_MCR: {
        const oldMsr = this.msr() & 0xf0;
        this.s[MCR] = value & 0x1f;
        const newMsr = this.msr() & 0xf0;
        const changed = oldMsr ^ newMsr;
        let delta = 0;
        if (changed & MSR_CTS) delta |= MSR_DCTS;
        if (changed & MSR_DSR) delta |= MSR_DDSR;
        if (changed & MSR_DCD) delta |= MSR_DDCD;
        if (oldMsr & MSR_RI && !(newMsr & MSR_RI)) delta |= MSR_TERI;
        this.s[MSR_DELTA] = this.s[MSR_DELTA]! | delta;
        return;
      }
      case UART_SCR:
        this.s[SCR] = value;
        return;
      default:
        // LSR and MSR writes are factory-test features; ignored.
        return;
    }
  }
}
