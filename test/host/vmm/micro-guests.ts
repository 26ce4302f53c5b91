// Tiny real-mode guests for the machine tests: a few instructions that exercise the console
// path (served on the vCPU thread) and the main-thread device path, then halt with
// interrupts off so the vCPU sleeps in the kernel and costs no CPU.
import { GuestCode } from '../../../src/kvm/index.js';

export const GUEST_ADDRESS = 0x8000;

const CLI = 0xfa;
const HLT = 0xf4;
const JMP_SELF_MINUS_3 = [0xeb, 0xfc]; // jmp back to the cli

/** Prints `text` on COM1, then reads the RTC's status register A and echoes it, then halts. */
export function helloGuest(text: string): Uint8Array {
  const code = new GuestCode('real').movDxImm16(0x3f8);
  for (const ch of new TextEncoder().encode(text)) code.movAlImm8(ch).outDxAl();
  // RTC: select register 0x0a (status A, fixed 0x26 after reset) and print its value.
  code.movAlImm8(0x0a).outImm8Al(0x70).movDxImm16(0x71).inAlDx().movDxImm16(0x3f8).outDxAl();
  return Uint8Array.from([...code.bytes(), CLI, HLT, ...JMP_SELF_MINUS_3]);
}

/** Writes 0xFE to the i8042 command port (a reset request) after printing `text`. */
export function resetGuest(text: string): Uint8Array {
  const code = new GuestCode('real').movDxImm16(0x3f8);
  for (const ch of new TextEncoder().encode(text)) code.movAlImm8(ch).outDxAl();
  code.movAlImm8(0xfe).outImm8Al(0x64);
  return Uint8Array.from([...code.bytes(), CLI, HLT, ...JMP_SELF_MINUS_3]);
}

/** Writes SLP_TYP=S5|SLP_EN to the ACPI PM1a control port after printing `text`. */
export function powerOffGuest(text: string): Uint8Array {
  const code = new GuestCode('real').movDxImm16(0x3f8);
  for (const ch of new TextEncoder().encode(text)) code.movAlImm8(ch).outDxAl();
  code.movDxImm16(0x604).movEaxImm32((5 << 10) | (1 << 13)).outDxAx();
  return Uint8Array.from([...code.bytes(), CLI, HLT, ...JMP_SELF_MINUS_3]);
}

/**
 * Reads a port no device claims (PCI configuration data on a machine without PCI) and echoes
 * it, writes the PCI address port, echoes the RTC's registers A and C, then reads the ACPI PM
 * timer twice and prints the 32-bit difference, low byte first. All but the read of register
 * C (which clears its flags) are exits a vCPU thread answers without the main thread.
 */
export function localPortsGuest(): Uint8Array {
  const MOV_EBX_EAX = [0x66, 0x89, 0xc3];
  const SUB_EAX_EBX = [0x66, 0x29, 0xd8];
  const SHR_EAX_8 = [0x66, 0xc1, 0xe8, 0x08];
  const echoAl = (): number[] => [...new GuestCode('real').movDxImm16(0x3f8).outDxAl().bytes()];
  const pmTimer = (): number[] => [...new GuestCode('real').movDxImm16(0x608).inEaxDx().bytes()];
  return Uint8Array.from([
    ...new GuestCode('real').movDxImm16(0xcfc).inAlDx().bytes(), ...echoAl(),
    ...new GuestCode('real').movDxImm16(0xcf8).movEaxImm32(0x80000000).outDxEax().bytes(),
    ...new GuestCode('real').movAlImm8(0x0a).outImm8Al(0x70).movDxImm16(0x71).inAlDx().bytes(), ...echoAl(),
    ...new GuestCode('real').movAlImm8(0x0c).outImm8Al(0x70).movDxImm16(0x71).inAlDx().bytes(), ...echoAl(),
    ...pmTimer(), ...MOV_EBX_EAX, ...pmTimer(), ...SUB_EAX_EBX,
    ...echoAl(), ...SHR_EAX_8, ...echoAl(), ...SHR_EAX_8, ...echoAl(), ...SHR_EAX_8, ...echoAl(),
    CLI, HLT, ...JMP_SELF_MINUS_3,
  ]);
}

/**
 * The ports ACPI's and the i8042 driver's start-up touch most, all answered on the vCPU
 * thread: reads the PM1 enable register (low byte), writes 0x5a to GPE0's first enable byte
 * and reads it back, reads the i8042 status and the PM1 control register (low byte), echoing
 * each byte read.
 */
export function acpiPortsGuest(): Uint8Array {
  const echoAl = (): number[] => [...new GuestCode('real').movDxImm16(0x3f8).outDxAl().bytes()];
  return Uint8Array.from([
    ...new GuestCode('real').movDxImm16(0x602).inAxDx().bytes(), ...echoAl(),
    ...new GuestCode('real').movDxImm16(0x628).movAlImm8(0x5a).outDxAl().inAlDx().bytes(), ...echoAl(),
    ...new GuestCode('real').movDxImm16(0x64).inAlDx().bytes(), ...echoAl(),
    ...new GuestCode('real').movDxImm16(0x604).inAxDx().bytes(), ...echoAl(),
    CLI, HLT, ...JMP_SELF_MINUS_3,
  ]);
}

/**
 * PCI configuration reads through the legacy ports, as Linux makes them: latches the
 * vendor/device dword of slot 0 (the host bridge) and of slot 1, reading each as a dword
 * and echoing its four bytes; then reads the class byte of slot 1 (register 0x0b) through
 * the fourth data port, and the latch itself back (its top byte).
 */
export function pciConfigGuest(): Uint8Array {
  const SHR_EAX_8 = [0x66, 0xc1, 0xe8, 0x08];
  const echoAl = (): number[] => [...new GuestCode('real').movDxImm16(0x3f8).outDxAl().bytes()];
  const echoEax = (): number[] => [...echoAl(), ...SHR_EAX_8, ...echoAl(), ...SHR_EAX_8, ...echoAl(), ...SHR_EAX_8, ...echoAl()];
  const latch = (address: number): number[] => [...new GuestCode('real').movDxImm16(0xcf8).movEaxImm32(address).outDxEax().bytes()];
  const readDword = (): number[] => [...new GuestCode('real').movDxImm16(0xcfc).inEaxDx().bytes()];
  return Uint8Array.from([
    ...latch(0x80000000), ...readDword(), ...echoEax(),
    ...latch(0x80000800), ...readDword(), ...echoEax(),
    ...latch(0x80000808), ...new GuestCode('real').movDxImm16(0xcff).inAlDx().bytes(), ...echoAl(),
    ...new GuestCode('real').movDxImm16(0xcf8).inEaxDx().bytes(), ...SHR_EAX_8, ...SHR_EAX_8, ...SHR_EAX_8, ...echoAl(),
    CLI, HLT, ...JMP_SELF_MINUS_3,
  ]);
}

/**
 * Writes the UART's scratch register for ever, counting in AL: an exit per instruction,
 * served where vCPU 0 runs (the main thread, or its vCPU thread).
 */
export function scratchLoopGuest(): Uint8Array {
  const INC_AL = [0xfe, 0xc0];
  const JMP_BACK_5 = [0xeb, 0xfb]; // to the out, over inc al
  return Uint8Array.from([...new GuestCode('real').movDxImm16(0x3ff).bytes(), ...new GuestCode('real').outDxAl().bytes(), ...INC_AL, ...JMP_BACK_5]);
}

/** Spins without a single exit: only a signal brings its vCPU out of KVM_RUN. */
export function spinGuest(): Uint8Array {
  return Uint8Array.from([0xeb, 0xfe]); // jmp self
}
