import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  I8042, I8042_COMMAND, I8042_DATA, I8042_STATE_BYTES, CMD_PULSE_RESET, CMD_SELF_TEST, CMD_WRITE_OUTPUT_PORT, CMD_READ_CTR, STATUS_OUTPUT_FULL, i8042StatusFrom,
} from '../../../src/devices/i8042.js';
import {
  AcpiGpeBlock, AcpiPmBlock, PM_STATE_BYTES, pm1Registers, readPm1Registers, PM1_CNT_OFFSET, PM1_EN_OFFSET, PM1_STS_OFFSET, PM1_STS_PWRBTN, PM1_CNT_SCI_EN, PM1_CNT_SLP_EN, PM_TMR_OFFSET, PM_TIMER_HZ, monotonicMs, pmTimerValue,
} from '../../../src/devices/acpi-pm.js';
import { ResetControl } from '../../../src/devices/reset-control.js';

const u8 = (v: number): Uint8Array => Uint8Array.of(v);
const u16 = (v: number): Uint8Array => Uint8Array.of(v & 0xff, v >> 8);

test('i8042: command 0xFE pulses the reset line', () => {
  let resets = 0;
  const kbc = new I8042({ reset: () => resets++ });
  kbc.write(I8042_COMMAND, u8(CMD_PULSE_RESET));
  assert.equal(resets, 1);
  kbc.write(I8042_COMMAND, u8(0xff)); // pulses no line
  assert.equal(resets, 1);
});

test('i8042: output-port write with bit 0 clear resets; self test answers 0x55', () => {
  let resets = 0;
  const kbc = new I8042({ reset: () => resets++ });
  kbc.write(I8042_COMMAND, u8(CMD_WRITE_OUTPUT_PORT));
  kbc.write(I8042_DATA, u8(0x03));
  assert.equal(resets, 0);
  kbc.write(I8042_COMMAND, u8(CMD_WRITE_OUTPUT_PORT));
  kbc.write(I8042_DATA, u8(0x02));
  assert.equal(resets, 1);
  const d = new Uint8Array(1);
  kbc.read(I8042_COMMAND, d);
  assert.equal(d[0]! & STATUS_OUTPUT_FULL, 0);
  kbc.write(I8042_COMMAND, u8(CMD_SELF_TEST));
  kbc.read(I8042_COMMAND, d);
  assert.equal(d[0]! & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
  kbc.read(I8042_DATA, d);
  assert.equal(d[0], 0x55);
  kbc.write(I8042_COMMAND, u8(CMD_READ_CTR));
  kbc.read(I8042_DATA, d);
  assert.equal(d[0]! & 0x04, 0x04, 'system flag set in the control byte');
});

function pm(s5 = 5): { block: AcpiPmBlock; offs: number[]; sci: boolean[]; clock: { t: number } } {
  const offs: number[] = [];
  const sci: boolean[] = [];
  const clock = { t: 0 };
  const block = new AcpiPmBlock({ s5SleepType: s5, powerOff: () => offs.push(1), sci: (l) => sci.push(l), now: () => clock.t });
  return { block, offs, sci, clock };
}

test('PM block: SLP_EN with the \\_S5 sleep type powers off, other types do not', () => {
  const { block, offs } = pm(5);
  block.write(PM1_CNT_OFFSET, u16((3 << 10) | PM1_CNT_SLP_EN));
  assert.equal(offs.length, 0, 'S3 type is not soft-off');
  block.write(PM1_CNT_OFFSET, u16(5 << 10));
  assert.equal(offs.length, 0, 'no SLP_EN, no transition');
  block.write(PM1_CNT_OFFSET, u16((5 << 10) | PM1_CNT_SLP_EN | PM1_CNT_SCI_EN));
  assert.equal(offs.length, 1);
  const d = new Uint8Array(2);
  block.read(PM1_CNT_OFFSET, d);
  assert.equal((d[0]! | (d[1]! << 8)) & PM1_CNT_SLP_EN, 0, 'SLP_EN reads as zero');
});

test('PM block: the S5 write is seen when the high byte arrives separately', () => {
  const { block, offs } = pm(7);
  block.write(PM1_CNT_OFFSET + 1, u8(((7 << 10) | PM1_CNT_SLP_EN) >> 8));
  assert.equal(offs.length, 1);
});

test('PM block: power button sets PWRBTN_STS, raises SCI when enabled, write-one clears', () => {
  const { block, sci } = pm();
  block.write(PM1_CNT_OFFSET, u16(PM1_CNT_SCI_EN));
  block.write(PM1_EN_OFFSET, u16(PM1_STS_PWRBTN));
  block.pressPowerButton();
  assert.deepEqual(sci, [true]);
  const d = new Uint8Array(2);
  block.read(PM1_STS_OFFSET, d);
  assert.equal((d[0]! | (d[1]! << 8)) & PM1_STS_PWRBTN, PM1_STS_PWRBTN);
  block.write(PM1_STS_OFFSET, u16(PM1_STS_PWRBTN));
  assert.deepEqual(sci, [true, false]);
  block.read(PM1_STS_OFFSET, d);
  assert.equal(d[1]! & 0x01, 0);
});

test('PM timer counts at 3.579545 MHz and wraps at 24 bits', () => {
  const { block, clock } = pm();
  const read = (): number => { const d = new Uint8Array(4); block.read(PM_TMR_OFFSET, d); return new DataView(d.buffer).getUint32(0, true); };
  clock.t = 1000;
  assert.equal(read(), PM_TIMER_HZ % 0x1000000);
  clock.t = 1001;
  assert.equal(read(), Math.floor(1.001 * PM_TIMER_HZ) % 0x1000000);
});

test('PM timer value: whole ticks of the monotonic clock, exact after weeks of uptime, 24 or 32 bits wide', () => {
  const fortyDays = 40 * 86_400_000;
  const ticks = (BigInt(fortyDays) * BigInt(PM_TIMER_HZ)) / 1000n;
  assert.equal(pmTimerValue(fortyDays, false), Number(ticks & 0xffffffn));
  assert.equal(pmTimerValue(fortyDays, true), Number(ticks & 0xffffffffn));
  const a = monotonicMs();
  const b = monotonicMs();
  assert.ok(b >= a && a > 0, 'the clock does not go back');
});

test('reset control register 0xCF9: RST_CPU resets, SYS_RST alone does not', () => {
  let resets = 0;
  const rc = new ResetControl(() => resets++);
  rc.write(0, u8(0x02));
  assert.equal(resets, 0);
  const d = new Uint8Array(1);
  rc.read(0, d);
  assert.equal(d[0], 0x02);
  rc.write(0, u8(0x06));
  assert.equal(resets, 1);
});

test('PM block: reads served from its shared registers (another thread\'s view) match its own, the timer excepted', () => {
  const state = new SharedArrayBuffer(PM_STATE_BYTES);
  const block = new AcpiPmBlock({ s5SleepType: 5, powerOff: () => undefined, sci: () => undefined }, state);
  const regs = pm1Registers(state);
  block.write(PM1_EN_OFFSET, u16(PM1_STS_PWRBTN | 0x20));
  block.pressPowerButton();
  for (let offset = 0; offset < PM_TMR_OFFSET; offset++) {
    for (const size of [1, 2, 4]) {
      const own = new Uint8Array(size);
      const shared = new Uint8Array(size).fill(0xee);
      if (offset + size > PM_TMR_OFFSET) {
        assert.equal(readPm1Registers(regs, offset, shared), false, `offset ${offset} size ${size} reaches the timer`);
        continue;
      }
      block.read(offset, own);
      assert.equal(readPm1Registers(regs, offset, shared), true);
      assert.deepEqual(shared, own, `offset ${offset} size ${size}`);
    }
  }
  assert.equal(readPm1Registers(regs, PM_TMR_OFFSET, new Uint8Array(4)), false);
});

test('i8042: the published status follows the output buffer, as port 0x64 reads it', () => {
  const state = new SharedArrayBuffer(I8042_STATE_BYTES);
  const kbc = new I8042({ reset: () => undefined, statusState: state });
  const published = new Uint8Array(state);
  const status = (): number => {
    const d = new Uint8Array(1);
    kbc.read(I8042_COMMAND, d);
    return d[0]!;
  };
  assert.equal(i8042StatusFrom(published), status());
  assert.equal(i8042StatusFrom(published) & STATUS_OUTPUT_FULL, 0);
  kbc.write(I8042_COMMAND, u8(CMD_SELF_TEST));
  assert.equal(i8042StatusFrom(published), status());
  assert.equal(i8042StatusFrom(published) & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL, 'a reply waits');
  kbc.read(I8042_DATA, new Uint8Array(1));
  assert.equal(i8042StatusFrom(published), status());
  assert.equal(i8042StatusFrom(published) & STATUS_OUTPUT_FULL, 0, 'taken');
  kbc.write(I8042_COMMAND, u8(CMD_READ_CTR));
  kbc.reset();
  assert.equal(i8042StatusFrom(published), status());
  assert.equal(i8042StatusFrom(published) & STATUS_OUTPUT_FULL, 0, 'reset empties it');
});

test('GPE0 block: two blocks over the same memory (main and vCPU thread) see each other\'s writes', () => {
  const state = new SharedArrayBuffer(16);
  const main = new AcpiGpeBlock(16, state);
  const vcpu = new AcpiGpeBlock(16, state);
  vcpu.write(8, Uint8Array.of(0x5a, 0x01));
  const d = new Uint8Array(2);
  main.read(8, d);
  assert.deepEqual([...d], [0x5a, 0x01]);
  main.reset();
  vcpu.read(8, d);
  assert.deepEqual([...d], [0, 0]);
  vcpu.read(0, d);
  assert.deepEqual([...d], [0, 0], 'status reads 0: no source is wired');
});
