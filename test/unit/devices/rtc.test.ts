import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Mc146818Rtc, RtcRegisters, RTC_STATE_BYTES, RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY, RTC_DAY_OF_WEEK,
  RTC_REG_A, RTC_REG_B, RTC_REG_C, RTC_REG_D, REG_A_UIP, REG_B_SET, REG_B_DM_BINARY, REG_B_24H, REG_D_VRT,
  RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM, REG_A_DIVIDER_NORMAL, REG_B_AIE, REG_B_PIE, REG_B_UIE,
  REG_C_AF, REG_C_IRQF, REG_C_PF, REG_C_UF, periodicIntervalMs,
  CMOS_BASE_MEM_LO, CMOS_EXT_MEM_LO, CMOS_MEM_ABOVE_16M_LO, CMOS_MEM_ABOVE_4G, CMOS_CPU_COUNT,
} from '../../../src/devices/rtc.js';

function at(iso: string): { rtc: Mc146818Rtc; clock: { t: number } } {
  const clock = { t: Date.parse(iso) };
  return { rtc: new Mc146818Rtc(() => clock.t), clock };
}

function port(rtc: Mc146818Rtc, reg: number): number {
  rtc.write(0, Uint8Array.of(reg | 0x80)); // with the NMI mask bit, as Linux writes it
  const d = new Uint8Array(1);
  rtc.read(1, d);
  return d[0]!;
}

test('reports wall time in BCD, 24-hour mode by default, through the index/data ports', () => {
  const { rtc } = at('2026-11-25T21:07:45.100Z');
  assert.equal(port(rtc, RTC_SECONDS), 0x45);
  assert.equal(port(rtc, RTC_MINUTES), 0x07);
  assert.equal(port(rtc, RTC_HOURS), 0x21);
  assert.equal(port(rtc, RTC_DAY_OF_MONTH), 0x25);
  assert.equal(port(rtc, RTC_MONTH), 0x11);
  assert.equal(port(rtc, RTC_YEAR), 0x26);
  assert.equal(port(rtc, RTC_CENTURY), 0x20);
  assert.equal(port(rtc, RTC_DAY_OF_WEEK), 4, 'Wednesday is day 4 (Sunday = 1)');
  assert.equal(port(rtc, RTC_REG_D), REG_D_VRT);
});

test('binary mode and 12-hour mode with the PM bit', () => {
  const { rtc } = at('2026-11-25T21:07:45Z');
  rtc.writeRegister(RTC_REG_B, REG_B_DM_BINARY | REG_B_24H);
  assert.equal(rtc.readRegister(RTC_HOURS), 21);
  assert.equal(rtc.readRegister(RTC_SECONDS), 45);
  rtc.writeRegister(RTC_REG_B, REG_B_DM_BINARY);
  assert.equal(rtc.readRegister(RTC_HOURS), 0x80 | 9);
  rtc.writeRegister(RTC_REG_B, 0);
  assert.equal(rtc.readRegister(RTC_HOURS), 0x89, 'BCD 9 PM');
  const midnight = at('2026-11-25T00:30:00Z').rtc;
  midnight.writeRegister(RTC_REG_B, 0);
  assert.equal(midnight.readRegister(RTC_HOURS), 0x12, '00:30 is 12 AM');
});

test('the clock runs with the host clock', () => {
  const { rtc, clock } = at('2026-11-25T21:07:45Z');
  clock.t += 3000;
  assert.equal(rtc.readRegister(RTC_SECONDS), 0x48);
});

test('update-in-progress is set only in the last 244 us of a second', () => {
  const { rtc, clock } = at('2026-11-25T21:07:45.500Z');
  assert.equal(rtc.readRegister(RTC_REG_A) & REG_A_UIP, 0);
  clock.t = Date.parse('2026-11-25T21:07:45.000Z') + 999.9;
  assert.equal(rtc.readRegister(RTC_REG_A) & REG_A_UIP, REG_A_UIP);
  rtc.writeRegister(RTC_REG_A, 0xa6);
  assert.equal(rtc.readRegister(RTC_REG_A), 0x26 | REG_A_UIP, 'UIP is read-only');
});

test('the guest sets the time with SET held and the clock runs on from it', () => {
  const { rtc, clock } = at('2026-11-25T21:07:45Z');
  rtc.writeRegister(RTC_REG_B, REG_B_24H | REG_B_SET);
  rtc.writeRegister(RTC_HOURS, 0x08);
  rtc.writeRegister(RTC_MINUTES, 0x30);
  rtc.writeRegister(RTC_SECONDS, 0x00);
  rtc.writeRegister(RTC_YEAR, 0x30);
  clock.t += 5000;
  assert.equal(rtc.readRegister(RTC_SECONDS), 0x00, 'frozen while SET is held');
  rtc.writeRegister(RTC_REG_B, REG_B_24H);
  clock.t += 2000;
  assert.equal(rtc.readRegister(RTC_HOURS), 0x08);
  assert.equal(rtc.readRegister(RTC_MINUTES), 0x30);
  assert.equal(rtc.readRegister(RTC_SECONDS), 0x02);
  assert.equal(rtc.readRegister(RTC_YEAR), 0x30);
});

test('CMOS memory size bytes and CPU count', () => {
  const { rtc } = at('2026-01-01T00:00:00Z');
  rtc.setMemorySize(3 * 1024 ** 3, 2 * 1024 ** 3);
  const word = (i: number): number => rtc.getCmos(i) | (rtc.getCmos(i + 1) << 8);
  assert.equal(word(CMOS_BASE_MEM_LO), 640);
  assert.equal(word(CMOS_EXT_MEM_LO), 0xffff, 'clamped at 64 MiB');
  assert.equal(word(CMOS_MEM_ABOVE_16M_LO), (3 * 1024 - 16) * 16);
  const above4g = rtc.getCmos(CMOS_MEM_ABOVE_4G) | (rtc.getCmos(CMOS_MEM_ABOVE_4G + 1) << 8) | (rtc.getCmos(CMOS_MEM_ABOVE_4G + 2) << 16);
  assert.equal(above4g, 2 * 1024 * 16);
  const small = at('2026-01-01T00:00:00Z').rtc;
  small.setMemorySize(32 * 1024 * 1024, 0);
  assert.equal(small.getCmos(CMOS_EXT_MEM_LO) | (small.getCmos(CMOS_EXT_MEM_LO + 1) << 8), 31 * 1024);
  rtc.setCpuCount(8);
  assert.equal(port(rtc, CMOS_CPU_COUNT), 7);
});

// ---- interrupts -------------------------------------------------------------------------

/** A clock and timers the test moves by hand; `advance` fires every timer that comes due. */
function withInterrupts(iso: string): {
  rtc: Mc146818Rtc; levels: boolean[]; advance(ms: number): void; armed(): number;
} {
  let t = Date.parse(iso);
  let timers: { due: number; callback: () => void; id: number }[] = [];
  let nextId = 1;
  const levels: boolean[] = [];
  const rtc = new Mc146818Rtc(() => t, {
    trigger: (level) => levels.push(level),
    timers: {
      setTimeout: (callback, ms) => {
        const id = nextId++;
        timers.push({ due: t + ms, callback, id });
        return id;
      },
      clearTimeout: (id) => { timers = timers.filter((x) => x.id !== id); },
    },
  });
  // No periodic rate, so that PF (set at the rate whether or not PIE is) stays out of the way.
  rtc.writeRegister(RTC_REG_A, REG_A_DIVIDER_NORMAL);
  const advance = (ms: number): void => {
    const end = t + ms;
    for (;;) {
      const next = timers.filter((x) => x.due <= end).sort((a, b) => a.due - b.due)[0];
      if (!next) break;
      timers = timers.filter((x) => x !== next);
      t = Math.max(t, next.due);
      next.callback();
    }
    t = end;
  };
  return { rtc, levels, advance, armed: () => timers.length };
}

test('update-ended interrupt: UF once a second, IRQ 8 raised while UIE is set, cleared by reading C', () => {
  const { rtc, levels, advance, armed } = withInterrupts('2026-11-25T21:07:45.200Z');
  assert.equal(rtc.readRegister(RTC_REG_C), 0);
  advance(1000);
  assert.equal(rtc.readRegister(RTC_REG_C), REG_C_UF, 'the flag is set even with the interrupt disabled');
  assert.deepEqual(levels, [], 'no interrupt without UIE');
  assert.equal(armed(), 0, 'no host timer while no interrupt is enabled');
  rtc.writeRegister(RTC_REG_B, REG_B_24H | REG_B_UIE);
  advance(700);
  assert.deepEqual(levels, []);
  advance(100); // 21:07:47.000
  assert.deepEqual(levels, [true]);
  assert.equal(rtc.readRegister(RTC_REG_C), REG_C_IRQF | REG_C_UF);
  assert.deepEqual(levels, [true, false]);
  assert.equal(rtc.readRegister(RTC_REG_C), 0, 'read clears');
  advance(1000);
  assert.deepEqual(levels, [true, false, true]);
  rtc.writeRegister(RTC_REG_B, REG_B_24H | REG_B_UIE | REG_B_SET);
  assert.equal(rtc.readRegister(RTC_REG_B) & REG_B_UIE, 0, 'SET clears UIE');
});

test('alarm interrupt at the matching second, with don\'t-care fields', () => {
  const { rtc, levels, advance } = withInterrupts('2026-11-25T21:07:45.500Z');
  rtc.writeRegister(RTC_SECONDS_ALARM, 0x50);
  rtc.writeRegister(RTC_MINUTES_ALARM, 0x07);
  rtc.writeRegister(RTC_HOURS_ALARM, 0x21);
  rtc.writeRegister(RTC_REG_B, REG_B_24H | REG_B_AIE);
  advance(4000); // 21:07:49.5
  assert.deepEqual(levels, []);
  assert.equal(rtc.readRegister(RTC_REG_C) & REG_C_AF, 0);
  advance(500); // 21:07:50.0
  assert.deepEqual(levels, [true]);
  assert.equal(rtc.readRegister(RTC_REG_C), REG_C_IRQF | REG_C_AF | REG_C_UF);
  advance(60_000);
  assert.deepEqual(levels, [true, false], 'the next match is a day away');
  // Hours and minutes "don't care": every minute at second 10.
  rtc.writeRegister(RTC_MINUTES_ALARM, 0xc0);
  rtc.writeRegister(RTC_HOURS_ALARM, 0xff);
  rtc.writeRegister(RTC_SECONDS_ALARM, 0x10);
  advance(20_000); // 21:09:10.0
  assert.deepEqual(levels, [true, false, true]);
  rtc.readRegister(RTC_REG_C);
  advance(60_000);
  assert.deepEqual(levels, [true, false, true, false, true]);
});

test('an alarm that passed while its interrupt was off is still flagged, and raises IRQ when AIE is set', () => {
  const { rtc, levels, advance } = withInterrupts('2026-11-25T21:07:45.500Z');
  rtc.writeRegister(RTC_SECONDS_ALARM, 0x46);
  rtc.writeRegister(RTC_MINUTES_ALARM, 0xc0);
  rtc.writeRegister(RTC_HOURS_ALARM, 0xc0);
  advance(1000);
  rtc.writeRegister(RTC_REG_B, REG_B_24H | REG_B_AIE);
  assert.deepEqual(levels, [true]);
  assert.equal(rtc.readRegister(RTC_REG_C), REG_C_IRQF | REG_C_AF | REG_C_UF);
});

test('periodic interrupt at the rate in register A', () => {
  assert.equal(periodicIntervalMs(0), 0);
  assert.equal(periodicIntervalMs(1), 1000 / 256);
  assert.equal(periodicIntervalMs(3), 1000 / 8192);
  assert.equal(periodicIntervalMs(6), 1000 / 1024);
  assert.equal(periodicIntervalMs(15), 500);
  const { rtc, levels, advance } = withInterrupts('2026-11-25T21:07:45.000Z');
  rtc.writeRegister(RTC_REG_A, REG_A_DIVIDER_NORMAL | 6); // the power-on 1024 Hz
  advance(1);
  assert.equal(rtc.readRegister(RTC_REG_C), REG_C_PF, 'PF is set at the rate without PIE too');
  assert.deepEqual(levels, []);
  rtc.writeRegister(RTC_REG_A, REG_A_DIVIDER_NORMAL | 15); // 2 Hz
  advance(299); // 45.300
  rtc.readRegister(RTC_REG_C);
  rtc.writeRegister(RTC_REG_B, REG_B_24H | REG_B_PIE);
  advance(199);
  assert.deepEqual(levels, []);
  advance(1); // 45.500
  assert.deepEqual(levels, [true]);
  assert.equal(rtc.readRegister(RTC_REG_C), REG_C_IRQF | REG_C_PF);
  advance(500); // 46.000: the period and the update coincide
  assert.equal(rtc.readRegister(RTC_REG_C), REG_C_IRQF | REG_C_PF | REG_C_UF);
  assert.deepEqual(levels, [true, false, true, false]);
  // A stopped divider stops the periodic and update flags.
  rtc.writeRegister(RTC_REG_A, 0x70 | 15);
  advance(2000);
  assert.equal(rtc.readRegister(RTC_REG_C), 0);
});

test('reset disables the interrupts, drops the line and cancels the timer', () => {
  const { rtc, levels, advance, armed } = withInterrupts('2026-11-25T21:07:45.500Z');
  rtc.writeRegister(RTC_REG_B, REG_B_24H | REG_B_UIE);
  advance(600);
  assert.deepEqual(levels, [true]);
  rtc.reset();
  assert.deepEqual(levels, [true, false]);
  assert.equal(armed(), 0);
  advance(5000);
  assert.deepEqual(levels, [true, false]);
});

test('registers shared with another thread: it sees the index, the set clock and the mode, and leaves register C alone', () => {
  const state = new SharedArrayBuffer(RTC_STATE_BYTES);
  let t = Date.parse('2026-11-25T21:07:45Z');
  const chip = new Mc146818Rtc(() => t, { state });
  const reader = new RtcRegisters(state, () => t);
  chip.write(0, Uint8Array.of(0x80 | RTC_HOURS));
  assert.equal(reader.index, RTC_HOURS, 'the index, without the NMI mask bit');
  assert.equal(reader.peekRegister(RTC_HOURS), 0x21);
  // The guest sets the clock an hour ahead in binary mode, through the chip.
  chip.writeRegister(RTC_REG_B, REG_B_SET | REG_B_24H | REG_B_DM_BINARY);
  chip.writeRegister(RTC_HOURS, 22);
  assert.equal(reader.peekRegister(RTC_HOURS), 22, 'frozen while SET is held');
  chip.writeRegister(RTC_REG_B, REG_B_24H | REG_B_DM_BINARY);
  t += 60_000;
  assert.equal(reader.peekRegister(RTC_HOURS), 22);
  assert.equal(reader.peekRegister(RTC_MINUTES), 8, 'the offset the chip keeps runs on');
  reader.index = 0x80 | RTC_REG_C;
  const d = new Uint8Array(1);
  chip.read(0, d);
  assert.equal(d[0], RTC_REG_C, 'an index set by the reader is the chip\'s');
  assert.equal(reader.peekRegister(RTC_REG_C), undefined, 'register C is read by the chip alone (reading clears it)');
  assert.throws(() => new RtcRegisters(new SharedArrayBuffer(8)), /RTC state needs/);
});
