// MC146818 real-time clock and CMOS memory (ports 0x70 index, 0x71 data).
//
// The clock is the host's wall clock plus an offset the guest changes by writing the time
// registers, so it keeps running while the guest is paused or the VMM is busy, like the
// battery-backed chip. Firmware-style CMOS bytes (memory sizes, CPU count) are filled by the
// machine through `setMemorySize`/`setCmos`.
//
// Interrupts (IRQ 8): the chip sets a flag in register C at each update (UF, once a second),
// at an alarm match (AF, checked at each update) and at each period of the rate in register A
// (PF), whether or not the interrupt is enabled; register B's UIE/AIE/PIE decide which flags
// raise IRQF and the line. Linux's rtc-cmos driver relies on this: the alarm (rtcwake,
// /sys/class/rtc/rtc0/wakealarm) and the update interrupt a `read` of /dev/rtc0 waits for
// come from AIE. Flags are worked out from the clock when register C is read, so an idle
// chip costs nothing; a host timer runs only while an interrupt is enabled, to raise the
// line on time.

import type { IrqTrigger } from './irq.js';

export const RTC_SECONDS = 0x00;
export const RTC_SECONDS_ALARM = 0x01;
export const RTC_MINUTES = 0x02;
export const RTC_MINUTES_ALARM = 0x03;
export const RTC_HOURS = 0x04;
export const RTC_HOURS_ALARM = 0x05;
export const RTC_DAY_OF_WEEK = 0x06;
export const RTC_DAY_OF_MONTH = 0x07;
export const RTC_MONTH = 0x08;
export const RTC_YEAR = 0x09;
export const RTC_REG_A = 0x0a;
export const RTC_REG_B = 0x0b;
export const RTC_REG_C = 0x0c;
export const RTC_REG_D = 0x0d;
export const RTC_CENTURY = 0x32;

export const REG_A_UIP = 0x80;
/** Register A: divider bits (010 = 32.768 kHz time base running) and the periodic rate select. */
export const REG_A_DIVIDER_MASK = 0x70;
export const REG_A_DIVIDER_NORMAL = 0x20;
export const REG_A_RATE_MASK = 0x0f;
export const REG_B_SET = 0x80;
export const REG_B_PIE = 0x40;
export const REG_B_AIE = 0x20;
export const REG_B_UIE = 0x10;
export const REG_B_DM_BINARY = 0x04;
export const REG_B_24H = 0x02;
export const REG_D_VRT = 0x80;
/** Register C: IRQF (an enabled flag is set) and the periodic, alarm and update-ended flags. */
export const REG_C_IRQF = 0x80;
export const REG_C_PF = 0x40;
export const REG_C_AF = 0x20;
export const REG_C_UF = 0x10;
const HOUR_PM = 0x80;
/** An alarm register with both top bits set matches every value ("don't care"). */
const ALARM_DONT_CARE = 0xc0;

// CMOS memory-size bytes, as PC firmware and Linux's early code read them.
export const CMOS_BASE_MEM_LO = 0x15; // KiB below 1 MiB (640)
export const CMOS_EXT_MEM_LO = 0x17; // KiB from 1 MiB to 64 MiB
export const CMOS_EXT_MEM2_LO = 0x30; // same, second copy
export const CMOS_MEM_ABOVE_16M_LO = 0x34; // 64 KiB units from 16 MiB to 4 GiB
export const CMOS_MEM_ABOVE_4G = 0x5b; // 64 KiB units above 4 GiB, 3 bytes
export const CMOS_CPU_COUNT = 0x5f; // CPUs minus one

/**
 * The update cycle takes 244 us before each second boundary; UIP reads 1 during it so that a
 * guest that waits for UIP=0 then reads the time never sees a half-updated value.
 */
const UPDATE_CYCLE_MS = 0.244;

/** Milliseconds since the Unix epoch, fractional. */
export type WallClock = () => number;
const hostClock: WallClock = () => performance.timeOrigin + performance.now();

/** Where the chip's interrupt timers come from (tests pass a fake clock's). */
export interface RtcTimers {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const hostTimers: RtcTimers = {
  setTimeout: (callback, ms) => {
    // The RTC must not keep the process alive on its own.
    const t = setTimeout(callback, ms);
    t.unref();
    return t;
  },
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface RtcOptions {
  /** The IRQ 8 line. */
  trigger?: IrqTrigger;
  timers?: RtcTimers;
  /** Registers in memory vCPU threads read too (RTC_STATE_BYTES; see RtcRegisters). */
  state?: SharedArrayBuffer;
}

// The registers' layout in the state buffer: CMOS RAM, the index register, and the clock's
// offset and freeze instant as doubles.
const INDEX_BYTE = 128;
const OFFSET_DOUBLE = 17;
const FROZEN_DOUBLE = 18;
export const RTC_STATE_BYTES = 8 * (FROZEN_DOUBLE + 1);

/** Milliseconds between periodic interrupts for rate select `rs` (0: none), 32.768 kHz time base. */
export function periodicIntervalMs(rs: number): number {
  if (rs === 0) return 0;
  // Rates 1 and 2 repeat 8 and 9 (256 and 128 Hz); 3..15 are 8192 Hz down to 2 Hz.
  const hz = rs <= 2 ? 32768 >> (rs + 6) : 32768 >> (rs - 1);
  return 1000 / hz;
}

const toBcd = (v: number): number => ((Math.floor(v / 10) % 10) << 4) | (v % 10);
const fromBcd = (v: number): number => (v >> 4) * 10 + (v & 0x0f);

/**
 * The chip's registers as any thread may read them. A Linux guest reads the clock through the
 * index and data ports a hundred times and more while it boots; the vCPU thread serves those
 * reads itself from registers shared with the main thread's chip (vcpu-worker.ts), and hands
 * over only what has side effects: data writes, and reads of register C, which clear its flags.
 * Accesses do not interleave: the guest serialises its index and data accesses (Linux's
 * rtc_lock), and a vCPU waits while the main thread serves its exit.
 */
export class RtcRegisters {
  protected readonly cmos: Uint8Array;
  private readonly bytes: Uint8Array;
  private readonly doubles: Float64Array;

  constructor(state: SharedArrayBuffer | ArrayBuffer, protected readonly now: WallClock = hostClock) {
    if (state.byteLength < RTC_STATE_BYTES) throw new RangeError(`RTC state needs ${RTC_STATE_BYTES} bytes`);
    this.bytes = new Uint8Array(state, 0, RTC_STATE_BYTES);
    this.cmos = this.bytes.subarray(0, 128);
    this.doubles = new Float64Array(state, 0, FROZEN_DOUBLE + 1);
  }

  /** The selected register (the index port, without the NMI mask bit). */
  get index(): number {
    return this.bytes[INDEX_BYTE]!;
  }

  set index(value: number) {
    this.bytes[INDEX_BYTE] = value & 0x7f;
  }

  /** Guest time minus host time, in ms. */
  protected get offsetMs(): number {
    return this.doubles[OFFSET_DOUBLE]!;
  }

  protected set offsetMs(value: number) {
    this.doubles[OFFSET_DOUBLE] = value;
  }

  /** While SET is held the time registers are frozen at this instant (ms since epoch). */
  protected get frozenAt(): number | null {
    const v = this.doubles[FROZEN_DOUBLE]!;
    return Number.isNaN(v) ? null : v;
  }

  protected set frozenAt(value: number | null) {
    this.doubles[FROZEN_DOUBLE] = value ?? NaN;
  }

  /**
   * Register `reg` as a read of the data port returns it, when that read has no side effect;
   * undefined for register C (reading it clears the flags and lowers the line).
   */
  peekRegister(reg: number): number | undefined {
    reg &= 0x7f;
    if (this.isClockRegister(reg)) return this.clockRegister(reg);
    if (reg === RTC_REG_A) {
      const t = this.guestNow();
      const intoSecond = ((t % 1000) + 1000) % 1000;
      const updating = this.frozenAt === null && intoSecond >= 1000 - UPDATE_CYCLE_MS;
      return (this.cmos[RTC_REG_A]! & 0x7f) | (updating ? REG_A_UIP : 0);
    }
    if (reg === RTC_REG_C) return undefined;
    return this.cmos[reg]!;
  }

  protected guestNow(): number {
    return this.frozenAt ?? this.now() + this.offsetMs;
  }

  private binary(): boolean {
    return (this.cmos[RTC_REG_B]! & REG_B_DM_BINARY) !== 0;
  }

  protected encode(v: number): number {
    return this.binary() ? v : toBcd(v);
  }

  protected decode(v: number): number {
    return this.binary() ? v : fromBcd(v);
  }

  private encodeHour(hour: number): number {
    if (this.cmos[RTC_REG_B]! & REG_B_24H) return this.encode(hour);
    const h12 = hour % 12 === 0 ? 12 : hour % 12;
    return this.encode(h12) | (hour >= 12 ? HOUR_PM : 0);
  }

  protected decodeHour(v: number): number {
    if (this.cmos[RTC_REG_B]! & REG_B_24H) return this.decode(v);
    const h12 = this.decode(v & 0x7f) % 12;
    return v & HOUR_PM ? h12 + 12 : h12;
  }

  private clockRegister(reg: number): number {
    const d = new Date(this.guestNow());
    switch (reg) {
      case RTC_SECONDS: return this.encode(d.getUTCSeconds());
      case RTC_MINUTES: return this.encode(d.getUTCMinutes());
      case RTC_HOURS: return this.encodeHour(d.getUTCHours());
      case RTC_DAY_OF_WEEK: return this.encode(d.getUTCDay() + 1);
      case RTC_DAY_OF_MONTH: return this.encode(d.getUTCDate());
      case RTC_MONTH: return this.encode(d.getUTCMonth() + 1);
      case RTC_YEAR: return this.encode(d.getUTCFullYear() % 100);
      case RTC_CENTURY: return this.encode(Math.floor(d.getUTCFullYear() / 100));
      default: return 0;
    }
  }

  protected isClockRegister(reg: number): boolean {
    return reg <= RTC_YEAR && reg !== RTC_SECONDS_ALARM && reg !== RTC_MINUTES_ALARM && reg !== RTC_HOURS_ALARM
      || reg === RTC_CENTURY;
  }
}

export class Mc146818Rtc extends RtcRegisters {
  private readonly trigger: IrqTrigger;
  private readonly timers: RtcTimers;
  /** Host and guest time up to which the flags in register C are worked out. */
  private syncedHost = 0;
  private syncedGuest = 0;
  private lineHigh = false;
  private timer: unknown = null;

  constructor(now: WallClock = hostClock, options: RtcOptions = {}) {
    super(options.state ?? new ArrayBuffer(RTC_STATE_BYTES), now);
    this.trigger = options.trigger ?? (() => undefined);
    this.timers = options.timers ?? hostTimers;
    this.reset();
  }

  /** Power-on defaults: 24-hour BCD mode, 32.768 kHz divider, valid RAM, no interrupts. */
  reset(): void {
    this.cmos[RTC_REG_A] = 0x26;
    this.cmos[RTC_REG_B] = REG_B_24H;
    this.cmos[RTC_REG_C] = 0;
    this.cmos[RTC_REG_D] = REG_D_VRT;
    this.frozenAt = null;
    this.syncedHost = this.now();
    this.syncedGuest = this.guestNow();
    this.stop();
    this.setLine(false);
  }

  /** Cancel the interrupt timer (the machine is going away). */
  stop(): void {
    if (this.timer !== null) this.timers.clearTimeout(this.timer);
    this.timer = null;
  }

  /** Write the memory-size bytes for `bytes` of guest RAM (low and high RAM summed). */
  setMemorySize(belowFourGiB: number, aboveFourGiB: number): void {
    const KiB = 1024;
    const MiB = 1024 * KiB;
    this.setWord(CMOS_BASE_MEM_LO, 640);
    const ext = Math.min(Math.max(belowFourGiB - MiB, 0) / KiB, 0xffff);
    this.setWord(CMOS_EXT_MEM_LO, ext);
    this.setWord(CMOS_EXT_MEM2_LO, ext);
    const above16 = Math.min(Math.max(belowFourGiB - 16 * MiB, 0) / (64 * KiB), 0xffff);
    this.setWord(CMOS_MEM_ABOVE_16M_LO, above16);
    const above4g = Math.floor(aboveFourGiB / (64 * KiB));
    this.cmos[CMOS_MEM_ABOVE_4G] = above4g & 0xff;
    this.cmos[CMOS_MEM_ABOVE_4G + 1] = (above4g >> 8) & 0xff;
    this.cmos[CMOS_MEM_ABOVE_4G + 2] = (above4g >> 16) & 0xff;
  }

  setCpuCount(cpus: number): void {
    this.cmos[CMOS_CPU_COUNT] = (cpus - 1) & 0xff;
  }

  /** Raw CMOS byte (no clock semantics), for firmware-style values. */
  getCmos(index: number): number {
    return this.cmos[index & 0x7f]!;
  }

  setCmos(index: number, value: number): void {
    this.cmos[index & 0x7f] = value & 0xff;
  }

  private setWord(index: number, value: number): void {
    const v = Math.floor(value);
    this.cmos[index] = v & 0xff;
    this.cmos[index + 1] = (v >> 8) & 0xff;
  }

  private setClockRegister(reg: number, value: number): void {
    const d = new Date(this.guestNow());
    switch (reg) {
      case RTC_SECONDS: d.setUTCSeconds(this.decode(value)); break;
      case RTC_MINUTES: d.setUTCMinutes(this.decode(value)); break;
      case RTC_HOURS: d.setUTCHours(this.decodeHour(value)); break;
      case RTC_DAY_OF_WEEK: return; // derived from the date
      case RTC_DAY_OF_MONTH: d.setUTCDate(this.decode(value)); break;
      case RTC_MONTH: d.setUTCMonth(this.decode(value) - 1); break;
      case RTC_YEAR: {
        const century = Math.floor(d.getUTCFullYear() / 100);
        d.setUTCFullYear(century * 100 + this.decode(value));
        break;
      }
      case RTC_CENTURY: d.setUTCFullYear(this.decode(value) * 100 + (d.getUTCFullYear() % 100)); break;
      default: return;
    }
    const t = d.getTime();
    if (this.frozenAt !== null) this.frozenAt = t;
    else this.offsetMs = t - this.now();
  }

  // ---- interrupts ---------------------------------------------------------------------

  private running(): boolean {
    return (this.cmos[RTC_REG_A]! & REG_A_DIVIDER_MASK) === REG_A_DIVIDER_NORMAL;
  }

  /** The update cycle runs while the time base runs and SET is not held. */
  private updating(): boolean {
    return this.running() && this.frozenAt === null;
  }

  private periodMs(): number {
    return this.running() ? periodicIntervalMs(this.cmos[RTC_REG_A]! & REG_A_RATE_MASK) : 0;
  }

  private alarmField(reg: number, decode: (v: number) => number): number | null {
    const v = this.cmos[reg]!;
    return (v & ALARM_DONT_CARE) === ALARM_DONT_CARE ? null : decode(v);
  }

  /** The first second boundary after guest time `after` at which the alarm matches (within two days). */
  private nextAlarm(after: number): number | null {
    const second = this.alarmField(RTC_SECONDS_ALARM, (v) => this.decode(v));
    const minute = this.alarmField(RTC_MINUTES_ALARM, (v) => this.decode(v));
    const hour = this.alarmField(RTC_HOURS_ALARM, (v) => this.decodeHour(v));
    let t = Math.floor(after / 1000) * 1000 + 1000;
    const end = t + 2 * 86_400_000;
    while (t < end) {
      const d = new Date(t);
      if (hour !== null && d.getUTCHours() !== hour) {
        t = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate(), d.getUTCHours() + 1);
      } else if (minute !== null && d.getUTCMinutes() !== minute) {
        t = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes() + 1);
      } else if (second !== null && d.getUTCSeconds() !== second) {
        t += 1000;
      } else {
        return t;
      }
    }
    return null;
  }

  /** Set the flags for everything that happened since the last sync, and IRQF and the line. */
  private sync(): void {
    const host = this.now();
    const guest = this.guestNow();
    let flags = this.cmos[RTC_REG_C]! & ~REG_C_IRQF;
    if (this.updating() && guest > this.syncedGuest) {
      if (Math.floor(guest / 1000) > Math.floor(this.syncedGuest / 1000)) flags |= REG_C_UF;
      const alarm = this.nextAlarm(this.syncedGuest);
      if (alarm !== null && alarm <= guest) flags |= REG_C_AF;
    }
    const period = this.periodMs();
    if (period > 0 && Math.floor(host / period) > Math.floor(this.syncedHost / period)) flags |= REG_C_PF;
    this.syncedHost = host;
    this.syncedGuest = guest;
    // PIE/AIE/UIE sit at the same bits as PF/AF/UF.
    const irq = (flags & this.cmos[RTC_REG_B]! & (REG_C_PF | REG_C_AF | REG_C_UF)) !== 0;
    this.cmos[RTC_REG_C] = flags | (irq || this.lineHigh ? REG_C_IRQF : 0);
    if (irq) this.setLine(true);
  }

  private setLine(high: boolean): void {
    if (high === this.lineHigh) return;
    this.lineHigh = high;
    this.trigger(high);
  }

  /** Arm the host timer for the next enabled event, or disarm it when none is enabled. */
  private schedule(): void {
    this.stop();
    const enabled = this.cmos[RTC_REG_B]! & (REG_B_PIE | REG_B_AIE | REG_B_UIE);
    if (!enabled) return;
    const host = this.now();
    const guest = this.guestNow();
    let wait = Infinity;
    const period = this.periodMs();
    if (enabled & REG_B_PIE && period > 0) wait = Math.min(wait, (Math.floor(host / period) + 1) * period - host);
    if (this.updating()) {
      if (enabled & REG_B_UIE) wait = Math.min(wait, (Math.floor(guest / 1000) + 1) * 1000 - guest);
      if (enabled & REG_B_AIE) {
        const alarm = this.nextAlarm(guest);
        // Beyond two days: look again in a day (the guest may have moved the clock by then).
        wait = Math.min(wait, alarm === null ? 86_400_000 : alarm - guest);
      }
    }
    if (wait === Infinity) return;
    // A host timer cannot fire more often than every millisecond; a faster periodic rate
    // sets PF once per firing, as a guest that reads register C late would see anyway.
    this.timer = this.timers.setTimeout(() => {
      this.timer = null;
      this.sync();
      this.schedule();
    }, Math.max(1, Math.ceil(wait)));
  }

  /** Read CMOS register `reg` (what a guest gets from port 0x71 after selecting it). */
  readRegister(reg: number): number {
    const value = this.peekRegister(reg);
    if (value !== undefined) return value;
    // Register C: the flags (and IRQF with the line) clear on read.
    this.sync();
    const v = this.cmos[RTC_REG_C]!;
    this.cmos[RTC_REG_C] = 0;
    this.setLine(false);
    return v;
  }

  writeRegister(reg: number, value: number): void {
    reg &= 0x7f;
    value &= 0xff;
    if (reg === RTC_REG_C || reg === RTC_REG_D) return; // read-only
    // Flags up to now belong to the old settings; the timer is re-armed for the new ones.
    this.sync();
    this.writeRegisterNow(reg, value);
    this.syncedGuest = this.guestNow();
    this.sync();
    this.schedule();
  }

  private writeRegisterNow(reg: number, value: number): void {
    if (this.isClockRegister(reg)) {
      this.setClockRegister(reg, value);
      return;
    }
    switch (reg) {
      case RTC_REG_A:
        this.cmos[RTC_REG_A] = value & 0x7f; // UIP is read-only
        return;
      case RTC_REG_B: {
        const wasSet = (this.cmos[RTC_REG_B]! & REG_B_SET) !== 0;
        const set = (value & REG_B_SET) !== 0;
        if (!wasSet && set) this.frozenAt = this.guestNow();
        if (wasSet && !set && this.frozenAt !== null) {
          // Leaving SET starts the clock from what the guest wrote.
          this.offsetMs = this.frozenAt - this.now();
          this.frozenAt = null;
        }
        // Setting SET also clears UIE, as on the chip.
        this.cmos[RTC_REG_B] = set ? value & ~REG_B_UIE : value;
        return;
      }
      default:
        this.cmos[reg] = value;
    }
  }

  /** Port access: offset 0 is the index port (bit 7 is the NMI mask), offset 1 the data port. */
  read(offset: bigint | number, data: Uint8Array): void {
    data.fill(0);
    data[0] = Number(offset) === 0 ? this.index : this.readRegister(this.index);
  }

  write(offset: bigint | number, data: Uint8Array): void {
    const value = data[0] ?? 0;
    if (Number(offset) === 0) this.index = value;
    else this.writeRegister(this.index, value);
  }
}
