// The ACPI fixed-hardware power management block: PM1a event block (status and enable),
// PM1a control block (SCI_EN, SLP_TYP, SLP_EN) and the PM timer, laid out contiguously as on
// QEMU's PIIX4 (events at +0, control at +4, timer at +8). The FADT names these ports and the
// DSDT's \_S5 package names the sleep type that means "soft off"; writing that type with
// SLP_EN powers the machine off. The power button is the fixed-feature one: pressing it sets
// PWRBTN_STS and raises the SCI when the guest enabled it.
import { IrqTrigger } from './irq.js';

export const PM1_EVT_OFFSET = 0;
export const PM1_STS_OFFSET = 0;
export const PM1_EN_OFFSET = 2;
export const PM1_CNT_OFFSET = 4;
export const PM_TMR_OFFSET = 8;
export const PM_BLOCK_LENGTH = 12;

export const PM1_STS_TMR = 0x0001;
export const PM1_STS_PWRBTN = 0x0100;
export const PM1_STS_WAK = 0x8000;
export const PM1_CNT_SCI_EN = 0x0001;
export const PM1_CNT_SLP_EN = 0x2000;
export const PM1_CNT_SLP_TYP_SHIFT = 10;
export const PM1_CNT_SLP_TYP_MASK = 0x1c00;

/**
 * Bytes of shared memory holding the PM1 registers (status, enable, control: 16-bit words),
 * so a vCPU thread can answer reads of them without the main thread (readPm1Registers).
 */
export const PM_STATE_BYTES = 8;
const REG_STATUS = 0;
const REG_ENABLE = 1;
const REG_CONTROL = 2;

/** The ACPI PM timer ticks at the frequency of the old PC's colour-burst crystal divided by 4. */
export const PM_TIMER_HZ = 3_579_545;

export interface AcpiPmOptions {
  /** SLP_TYP value of \_S5 in the DSDT. */
  s5SleepType: number;
  /** The guest entered S5 (soft off). */
  powerOff: () => void;
  /** SCI output (ISA IRQ 9 on a PC, level triggered). */
  sci: IrqTrigger;
  /** 32-bit PM timer when the FADT sets TMR_VAL_EXT, else 24-bit. */
  timer32?: boolean;
  /** Monotonic clock in ms, for the PM timer (tests inject one). */
  now?: () => number;
}

/**
 * The host's monotonic clock (CLOCK_MONOTONIC) in ms. Every thread of the process reads the
 * same clock, so the PM timer a vCPU thread serves itself (vcpu-worker.ts) agrees with the
 * one read here; performance.now() counts from each thread's own start.
 */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** The PM timer's count at `nowMs` on the monotonic clock: 24 bits wide, or 32 with TMR_VAL_EXT. */
export function pmTimerValue(nowMs: number, timer32: boolean): number {
  // Whole ticks in BigInt: past a few weeks of uptime, ms times 3.58 MHz exceeds a double's exact range.
  const ticks = (BigInt(Math.floor(nowMs * 1e6)) * BigInt(PM_TIMER_HZ)) / 1_000_000_000n;
  return Number(ticks & (timer32 ? 0xffffffffn : 0xffffffn));
}

/** Byte `offset` of the PM1 event and control registers (0-5; the block's other bytes but the timer read 0). */
function pm1Byte(regs: Uint16Array, offset: number): number {
  const reg = (value: number, shift: number): number => (value >>> shift) & 0xff;
  switch (offset) {
    case 0: return reg(regs[REG_STATUS]!, 0);
    case 1: return reg(regs[REG_STATUS]!, 8);
    case 2: return reg(regs[REG_ENABLE]!, 0);
    case 3: return reg(regs[REG_ENABLE]!, 8);
    case 4: return reg(regs[REG_CONTROL]! & ~PM1_CNT_SLP_EN, 0); // SLP_EN is write-only
    case 5: return reg(regs[REG_CONTROL]! & ~PM1_CNT_SLP_EN, 8);
    default: return 0;
  }
}

/** The PM1 registers in `state` (PM_STATE_BYTES, as given to AcpiPmBlock): status, enable, control. */
export function pm1Registers(state: SharedArrayBuffer): Uint16Array {
  return new Uint16Array(state, 0, 3);
}

/**
 * A read of the block at `offset` answered from its shared registers (pm1Registers), as the
 * block itself would answer it; false when it touches the timer, which the caller reads from
 * the clock. Reads have no side effects, so any thread may serve them; writes (which clear
 * status bits, move the SCI or power off) stay with the block.
 */
export function readPm1Registers(regs: Uint16Array, offset: number, data: Uint8Array): boolean {
  if (offset < 0 || offset + data.length > PM_TMR_OFFSET) return false;
  for (let i = 0; i < data.length; i++) data[i] = pm1Byte(regs, offset + i);
  return true;
}

export class AcpiPmBlock {
  /** Status, enable and control, in memory vCPU threads read too (readPm1Registers). */
  private readonly regs: Uint16Array;
  private sciLevel = false;
  private readonly now: () => number;

  constructor(private readonly options: AcpiPmOptions, state = new SharedArrayBuffer(PM_STATE_BYTES)) {
    this.now = options.now ?? monotonicMs;
    this.regs = pm1Registers(state);
    this.control = PM1_CNT_SCI_EN;
  }

  private get status(): number { return this.regs[REG_STATUS]!; }
  private set status(value: number) { this.regs[REG_STATUS] = value; }
  private get enable(): number { return this.regs[REG_ENABLE]!; }
  private set enable(value: number) { this.regs[REG_ENABLE] = value; }
  private get control(): number { return this.regs[REG_CONTROL]!; }
  private set control(value: number) { this.regs[REG_CONTROL] = value; }

  reset(): void {
    this.status = 0;
    this.enable = 0;
    // The machine has no SMI_CMD port, so ACPI mode can never be switched on: it is on from
    // power-up and SCI_EN reads 1 (the ACPI spec's "hardware-reduced enable" for such boards).
    this.control = PM1_CNT_SCI_EN;
    this.updateSci();
  }

  /** Press the power button (QMP system_powerdown). */
  pressPowerButton(): void {
    this.status |= PM1_STS_PWRBTN;
    this.updateSci();
  }

  private updateSci(): void {
    const level = (this.control & PM1_CNT_SCI_EN) !== 0 && (this.status & this.enable) !== 0;
    if (level !== this.sciLevel) {
      this.sciLevel = level;
      this.options.sci(level);
    }
  }

  private timerValue(): number {
    return pmTimerValue(this.now(), this.options.timer32 === true);
  }

  /** The block as 16-bit registers (byte and dword accesses are split or merged here). */
  private readByte(offset: number): number {
    if (offset >= PM_TMR_OFFSET && offset < PM_TMR_OFFSET + 4) return (this.timerValue() >>> ((offset - PM_TMR_OFFSET) * 8)) & 0xff;
    return pm1Byte(this.regs, offset);
  }

  read(offset: bigint | number, data: Uint8Array): void {
    const base = Number(offset);
    if (base === PM_TMR_OFFSET && data.length === 4) {
      // One timer sample for the whole dword, so its bytes are consistent.
      new DataView(data.buffer, data.byteOffset, 4).setUint32(0, this.timerValue(), true);
      return;
    }
    for (let i = 0; i < data.length; i++) data[i] = this.readByte(base + i);
  }

  write(offset: bigint | number, data: Uint8Array): void {
    const base = Number(offset);
    // Gather the written bytes into the 16-bit registers they touch, then apply each once:
    // SLP_TYP and SLP_EN must be seen together when the guest writes PM1_CNT as a word.
    let sts = 0;
    let stsTouched = false;
    let en = this.enable;
    let enTouched = false;
    let cnt = this.control;
    let cntTouched = false;
    for (let i = 0; i < data.length; i++) {
      const off = base + i;
      const byte = data[i]!;
      const shift = (off & 1) * 8;
      if (off < 2) { sts |= byte << shift; stsTouched = true; }
      else if (off < 4) { en = (en & ~(0xff << shift)) | (byte << shift); enTouched = true; }
      else if (off < 6) { cnt = (cnt & ~(0xff << shift)) | (byte << shift); cntTouched = true; }
    }
    if (stsTouched) this.status &= ~sts; // status bits are write-one-to-clear
    if (enTouched) this.enable = en & 0xffff;
    if (cntTouched) {
      this.control = (cnt & 0xffff & ~PM1_CNT_SLP_EN) | PM1_CNT_SCI_EN;
      if (cnt & PM1_CNT_SLP_EN) {
        const type = (cnt & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT;
        if (type === this.options.s5SleepType) this.options.powerOff();
        // Other sleep states (S1-S4) are not offered in the DSDT; a guest asking for one anyway
        // just continues, as real chipsets ignore undefined sleep types.
      }
    }
    this.updateSci();
  }
}

/**
 * The GPE0 block: status bytes then enable bytes. No general-purpose event source is wired
 * yet (PCI hotplug will be one), so status reads 0; enable bits are kept so the guest reads
 * back what it wrote. The bytes may live in shared memory (`state`, `length` bytes): the
 * block has no side effects beyond them, so a vCPU thread serves it with its own AcpiGpeBlock
 * over the same memory, and ACPI's start-up (some 50 accesses) costs the main thread nothing.
 * A source wired later must take its events back to the main thread.
 */
export class AcpiGpeBlock {
  private readonly status: Uint8Array;
  private readonly enable: Uint8Array;

  constructor(readonly length: number, state: ArrayBufferLike = new ArrayBuffer(length)) {
    this.status = new Uint8Array(state, 0, length / 2);
    this.enable = new Uint8Array(state, length / 2, length / 2);
  }

  read(offset: bigint | number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const off = Number(offset) + i;
      const half = this.status.length;
      data[i] = off < half ? this.status[off]! : off < 2 * half ? this.enable[off - half]! : 0;
    }
  }

  write(offset: bigint | number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const off = Number(offset) + i;
      const half = this.status.length;
      if (off < half) this.status[off] = this.status[off]! & ~data[i]!;
      else if (off < 2 * half) this.enable[off - half] = data[i]!;
    }
  }

  reset(): void {
    this.status.fill(0);
    this.enable.fill(0);
  }
}
