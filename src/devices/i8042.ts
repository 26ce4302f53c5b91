// The PC keyboard controller (i8042) at ports 0x60 (data) and 0x64 (status/command), kept to
// what a VM without a PS/2 keyboard needs: the controller answers its own commands so that
// drivers probing it get sane replies, and the reset line (command 0xFE, or an output-port
// write with bit 0 clear) resets the machine, a path Linux's `reboot` takes.
import { IrqTrigger } from './irq.js';

export const I8042_DATA = 0;
export const I8042_COMMAND = 4;

export const STATUS_OUTPUT_FULL = 0x01;
export const STATUS_SYSTEM_FLAG = 0x04;
export const STATUS_COMMAND = 0x08; // last write was to the command port
export const STATUS_KEYLOCK_OFF = 0x10;
export const STATUS_AUX_DATA = 0x20;

export const CMD_READ_CTR = 0x20;
export const CMD_WRITE_CTR = 0x60;
export const CMD_DISABLE_AUX = 0xa7;
export const CMD_ENABLE_AUX = 0xa8;
export const CMD_TEST_AUX = 0xa9;
export const CMD_SELF_TEST = 0xaa;
export const CMD_TEST_KBD_PORT = 0xab;
export const CMD_DISABLE_KBD = 0xad;
export const CMD_ENABLE_KBD = 0xae;
export const CMD_READ_OUTPUT_PORT = 0xd0;
export const CMD_WRITE_OUTPUT_PORT = 0xd1;
export const CMD_PULSE_RESET = 0xfe;

const CTR_KBD_INT = 0x01;
const CTR_SYSTEM_FLAG = 0x04;
const OUTPUT_PORT_RESET_HIGH = 0x01; // the CPU reset line is active low
const OUTPUT_PORT_A20 = 0x02;

export interface I8042Hooks {
  /** The guest pulled the CPU reset line. */
  reset: () => void;
  /** Keyboard interrupt (IRQ1); optional, nothing raises it without a keyboard attached. */
  trigger?: IrqTrigger;
  /**
   * Shared memory (I8042_STATE_BYTES) the status register is published to after every
   * change, so a vCPU thread can answer reads of port 0x64 itself (i8042StatusFrom): a
   * driver polls it before and after each command.
   */
  statusState?: SharedArrayBuffer;
}

/** Bytes of shared memory for the published status register. */
export const I8042_STATE_BYTES = 4;

/** The status register (port 0x64) as an I8042 last published it, read through a byte view of its statusState. */
export function i8042StatusFrom(published: Uint8Array): number {
  return Atomics.load(published, 0);
}

export class I8042 {
  private controlByte = CTR_SYSTEM_FLAG | CTR_KBD_INT;
  private outputPort = OUTPUT_PORT_RESET_HIGH | OUTPUT_PORT_A20;
  private status = STATUS_SYSTEM_FLAG | STATUS_KEYLOCK_OFF;
  private readonly output: number[] = [];
  /** A command waiting for its data byte on port 0x60. */
  private pendingCommand: number | null = null;

  private readonly published: Uint8Array | undefined;

  constructor(private readonly hooks: I8042Hooks) {
    this.published = hooks.statusState ? new Uint8Array(hooks.statusState) : undefined;
    this.publish();
  }

  reset(): void {
    this.controlByte = CTR_SYSTEM_FLAG | CTR_KBD_INT;
    this.outputPort = OUTPUT_PORT_RESET_HIGH | OUTPUT_PORT_A20;
    this.status = STATUS_SYSTEM_FLAG | STATUS_KEYLOCK_OFF;
    this.output.length = 0;
    this.pendingCommand = null;
    this.publish();
  }

  private statusRegister(): number {
    return this.status | (this.output.length > 0 ? STATUS_OUTPUT_FULL : 0);
  }

  private publish(): void {
    if (this.published) Atomics.store(this.published, 0, this.statusRegister());
  }

  private reply(...bytes: number[]): void {
    this.output.push(...bytes);
  }

  read(offset: bigint | number, data: Uint8Array): void {
    data.fill(0);
    if (Number(offset) === I8042_COMMAND) {
      data[0] = this.statusRegister();
    } else {
      data[0] = this.output.shift() ?? 0;
      this.publish();
    }
  }

  write(offset: bigint | number, data: Uint8Array): void {
    const value = data[0] ?? 0;
    if (Number(offset) === I8042_COMMAND) {
      this.status |= STATUS_COMMAND;
      this.command(value);
    } else {
      this.status &= ~STATUS_COMMAND;
      this.dataByte(value);
    }
    this.publish();
  }

  private command(cmd: number): void {
    this.pendingCommand = null;
    switch (cmd) {
      case CMD_READ_CTR: this.reply(this.controlByte); return;
      case CMD_WRITE_CTR:
      case CMD_WRITE_OUTPUT_PORT:
        this.pendingCommand = cmd;
        return;
      case CMD_DISABLE_AUX: case CMD_ENABLE_AUX: case CMD_DISABLE_KBD: case CMD_ENABLE_KBD:
        return;
      case CMD_TEST_AUX: this.reply(0x00); return;
      case CMD_SELF_TEST: this.reply(0x55); return;
      case CMD_TEST_KBD_PORT: this.reply(0x00); return;
      case CMD_READ_OUTPUT_PORT: this.reply(this.outputPort); return;
      default:
        // 0xF0-0xFF pulse output-port lines low for a moment; bit 0 clear pulses reset.
        if (cmd >= 0xf0 && !(cmd & 0x01)) this.hooks.reset();
    }
  }

  private dataByte(value: number): void {
    const pending = this.pendingCommand;
    this.pendingCommand = null;
    if (pending === CMD_WRITE_CTR) {
      this.controlByte = value;
      this.status = (this.status & ~STATUS_SYSTEM_FLAG) | (value & CTR_SYSTEM_FLAG);
      return;
    }
    if (pending === CMD_WRITE_OUTPUT_PORT) {
      this.outputPort = value;
      if (!(value & OUTPUT_PORT_RESET_HIGH)) this.hooks.reset();
      return;
    }
    // A byte for the keyboard itself: no keyboard is attached, so nothing answers (a driver
    // sees its command time out, as on a controller with an empty port).
  }
}
