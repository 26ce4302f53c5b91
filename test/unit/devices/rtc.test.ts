import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Mc146818Rtc, RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY, RTC_DAY_OF_WEEK,
  RTC_REG_A, RTC_REG_B, RTC_REG_D, REG_A_UIP, REG_B_SET, REG_B_DM_BINARY, REG_B_24H, REG_D_VRT,
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
